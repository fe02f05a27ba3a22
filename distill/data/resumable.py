"""A training ``DataLoader`` whose position in the epoch is part of the checkpoint.

Lightning saves ``state_dict()`` of every training loader that has one and hands it back through
``load_state_dict()`` on resume (``CombinedLoader._state_dicts``; a sized loader is not
prefetched, so the batches a loader has yielded are the batches training consumed). Without this,
a run resumed mid-epoch replays the epoch from its first batch: it sees those batches twice and
never sees the ones after the kill point.

Why not ``torchdata``'s ``StatefulDataLoader``: it draws its shuffle differently from
``torch.utils.data.DataLoader`` (a fresh run would change order, and every recorded result with
it), and in our check the epoch after a resumed one came out in another order than in the
uninterrupted run. This loader keeps ``DataLoader``'s draws exactly:

* the state is the shuffle generator's state when the epoch's iterator was created, the number
  of batches served in that epoch, and the generator's state now;
* on resume the generator is put back to the epoch's start, the same permutation is drawn, and the
  batch sampler skips the served batches *by index*, so skipped examples are never loaded,
  collated or sent through a teacher's batch hook;
* a checkpoint written after the epoch's last batch resumes into the next epoch from the
  generator's state at save time, as the uninterrupted run does.

Under DDP Lightning swaps in a ``DistributedSampler`` and re-creates this loader with it; its
permutation is set by the epoch (``set_epoch``), which Lightning restores, and the skip works the
same way on top of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler


class SkippingBatchSampler(BatchSampler):
    """``BatchSampler`` that leaves out its first ``skip`` batches once (the resumed epoch's).

    Same constructor as ``BatchSampler``, so Lightning can inject a distributed sampler into it.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool):
        super().__init__(sampler, batch_size, drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


class ResumableLoader(DataLoader):
    """``DataLoader(dataset, batch_size, shuffle=True, drop_last, generator, ...)`` with
    ``state_dict`` / ``load_state_dict`` for Lightning's mid-epoch resume (see the module doc).

    Serves exactly the batches, in exactly the order, that the plain ``DataLoader`` with the same
    arguments serves: the same generator draws the same base seed, then the same permutation.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = True, drop_last: bool = False,
                 generator: torch.Generator | None = None, sampler=None, batch_sampler=None, **kwargs):
        if batch_sampler is None:
            if sampler is None:
                sampler = RandomSampler(dataset, generator=generator) if shuffle else range(len(dataset))
            batch_sampler = SkippingBatchSampler(sampler, batch_size, drop_last)
        super().__init__(dataset, batch_sampler=batch_sampler, generator=generator, **kwargs)
        self._epoch_start: torch.Tensor | None = None
        self._served = 0

    def __iter__(self):
        self._epoch_start = self.generator.get_state() if self.generator is not None else None
        skip = getattr(self.batch_sampler, "skip", 0)
        self._served = skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"served": self._served, "epoch_start": self._epoch_start, "length": len(self),
                "generator": self.generator.get_state() if self.generator is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if state["length"] != len(self):
            raise ValueError(f"resume: the checkpoint's training epoch had {state['length']} batches but this run's "
                             f"has {len(self)}; data.batch_size, the data or the device count changed since the "
                             "checkpoint was written. Resume with the same data settings.")
        finished = state["served"] >= len(self)
        # Mid-epoch: back to the epoch's start, the same permutation, the served batches skipped.
        # After the epoch's last batch: the generator as it was then, so the next epoch draws what
        # the uninterrupted run's next epoch draws (Lightning stops after len(loader) batches and
        # never asks the exhausted sampler for more, which would draw again).
        saved = state["generator"] if finished else state["epoch_start"]
        if self.generator is not None and saved is not None:
            self.generator.set_state(saved)
        if not finished and isinstance(self.batch_sampler, SkippingBatchSampler):
            self.batch_sampler.skip = state["served"]
