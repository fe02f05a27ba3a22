"""Held-out shards for several ranks: every example counted exactly once, every rank running alike.

Lightning's ``DistributedSampler`` gives each rank ``ceil(N / W)`` examples and pads the last
shards by repeating examples, so with ``N`` not divisible by ``W`` the repeats count twice in the
summed held-out metrics. Dropping the padding instead would leave ranks with different numbers
of validation batches, and a sharded (FSDP) forward is a collective that every rank must join.
So the padding stays, but it is served as :class:`Uncounted` indices, whose labels the dataset
masks: they run through the models and contribute no token to any metric.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler


class Uncounted(int):
    """An example index served to keep the ranks in step only: its labels are masked, so no metric counts it."""


class HeldoutShards(DistributedSampler):
    """Rank ``r`` gets examples ``r, r + W, r + 2W, ...`` (the order of Lightning's sampler without
    shuffling), then :class:`Uncounted` repeats up to ``ceil(N / W)``.

    A ``DistributedSampler`` subclass, so Lightning keeps it instead of injecting its own.
    """

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        mine = list(range(self.rank, len(self.dataset), self.num_replicas))
        fill = Uncounted(mine[0] if mine else 0)
        return iter(mine + [fill] * (self.num_samples - len(mine)))
