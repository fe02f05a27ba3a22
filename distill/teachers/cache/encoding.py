"""From full teacher logits to the sparse rows a cache stores: top-k, or importance-sampled.

Two modes (the losses that read them are in :mod:`distill.losses.sparse`):

* ``topk``: the ``K`` most likely ids and their log-probs at ``T = 1``; the tail mass (the
  teacher's probability outside the support) is summed over the ids outside it, so a reader can
  make the stored (rounded) head and the tail sum to 1. Biased: the tail is one bucket.
* ``sampled``: "random-sampling KD" (Anshumann et al., ACL 2025): ``K`` ids drawn i.i.d. from a
  proposal, stored as distinct ids with importance weights; unbiased for the forward-KL gradient.
  With the teacher itself as the proposal the weights are ``count / K``, so the draws' **counts**
  are all a cache has to keep (:mod:`distill.teachers.cache.codec` stores them as uint8).

Everything here is a pure function of the logits (and a seeded generator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODES = ("topk", "sampled")


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def topk_from_logits(logits: torch.Tensor, k: int, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cache entries from full teacher logits.

    Args:
        logits: ``(..., V)`` teacher logits (any float dtype).
        k: entries per token, ``1 <= k <= V``.
        chunk_size: rows processed at once (bounds the fp32 ``log_softmax`` copy).

    Returns:
        ``(topk_ids, topk_logprobs)``, both ``(..., k)``: int64 ids of the ``k`` most likely
        tokens (unique, most likely first) and their float32 log-probabilities at ``T = 1``,
        ``log softmax(z)_v``. The tail mass ``1 - sum exp(topk_logprobs)`` is implied.
    """
    v = logits.shape[-1]
    if not 1 <= k <= v:
        raise ValueError(f"topk_from_logits: k must be in [1, {v}], got {k}")
    flat = _rows(logits)
    ids = torch.empty(flat.shape[0], k, dtype=torch.long, device=logits.device)
    lps = torch.empty(flat.shape[0], k, dtype=torch.float32, device=logits.device)
    for a in range(0, flat.shape[0], chunk_size):
        lp = F.log_softmax(flat[a:a + chunk_size].float(), dim=-1)
        top = lp.topk(k, dim=-1)
        ids[a:a + chunk_size], lps[a:a + chunk_size] = top.indices, top.values
    return ids.reshape(*logits.shape[:-1], k), lps.reshape(*logits.shape[:-1], k)


@torch.no_grad()
def sample_counts_from_logits(logits: torch.Tensor, k: int, generator: torch.Generator | None = None,
                              proposal_temperature: float = 1.0, chunk_size: int = 1024
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``k`` i.i.d. draws per token from ``r = softmax(z / proposal_temperature)``, grouped.

    Returns:
        ``(ids, counts, log_ratio)``, each ``(..., k)``: the distinct drawn ids first (ascending),
        then padding slots repeating the first id; ``counts`` (float32) how often each was drawn
        (0 on padding slots, summing to ``k``); ``log_ratio = log p(v) - log r(v)`` of each slot
        (all zeros when the proposal is the teacher itself).
    """
    if k < 1:
        raise ValueError(f"sample_from_logits: k must be >= 1, got {k}")
    if proposal_temperature <= 0:
        raise ValueError(f"sample_from_logits: proposal_temperature must be > 0, got {proposal_temperature}")
    flat = _rows(logits)
    n = flat.shape[0]
    ids_out = torch.empty(n, k, dtype=torch.long, device=logits.device)
    counts_out = torch.empty(n, k, dtype=torch.float32, device=logits.device)
    ratio_out = torch.zeros(n, k, dtype=torch.float32, device=logits.device)
    for a in range(0, n, chunk_size):
        z = flat[a:a + chunk_size].float()
        log_p = F.log_softmax(z, dim=-1)
        log_r = log_p if proposal_temperature == 1.0 else F.log_softmax(z / proposal_temperature, dim=-1)
        draws = torch.multinomial(log_r.exp(), k, replacement=True, generator=generator)
        draws, _ = draws.sort(dim=-1)
        # Group equal draws: group index = number of distinct values seen so far - 1.
        new = torch.ones_like(draws, dtype=torch.bool)
        new[:, 1:] = draws[:, 1:] != draws[:, :-1]
        group = new.long().cumsum(-1) - 1
        counts = torch.zeros(draws.shape, dtype=torch.float32, device=draws.device)
        counts.scatter_add_(1, group, torch.ones_like(counts))
        ids = draws[:, :1].expand_as(draws).clone()  # padding slots repeat a valid id
        ids.scatter_(1, group, draws)  # every member of a group writes the same id
        ids_out[a:a + chunk_size], counts_out[a:a + chunk_size] = ids, counts
        if proposal_temperature != 1.0:
            ratio_out[a:a + chunk_size] = log_p.gather(1, ids) - log_r.gather(1, ids)
    shape = (*logits.shape[:-1], k)
    return ids_out.reshape(shape), counts_out.reshape(shape), ratio_out.reshape(shape)


def log_weights_from_counts(counts: torch.Tensor, k: int, log_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Log importance weights ``log(count / k) (+ log p/r)``: ``-inf`` on padding slots (count 0).

    The one formula both the writer and the count-encoded reader use, so a count-encoded cache
    gives back the float32 weights :func:`sample_from_logits` returns bit for bit.
    """
    log_w = torch.log(counts.float() / k)
    return log_w if log_ratio is None else log_w + log_ratio


@torch.no_grad()
def sample_from_logits(logits: torch.Tensor, k: int, generator: torch.Generator | None = None,
                       proposal_temperature: float = 1.0,
                       chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled cache entries ("random-sampling KD", Anshumann et al., 2025).

    Draws ``k`` ids i.i.d. per token from the proposal ``r = softmax(z / proposal_temperature)``
    and aggregates duplicates: for each distinct id ``v`` the weight is
    ``w_v = (count_v / k) * p(v) / r(v)`` with ``p = softmax(z)``, so ``E[w_v] = p(v)`` for every
    ``v`` (unbiased). With the default proposal ``r = p`` the weights are ``count_v / k`` and sum to
    exactly 1; a flatter proposal (``proposal_temperature > 1``) covers more of the tail, and its
    weights sum to 1 only in expectation.

    Args:
        logits: ``(..., V)`` teacher logits.
        k: number of draws per token (also the dense width ``K``).
        generator: torch RNG for reproducible caches.
        proposal_temperature: temperature of the proposal distribution.
        chunk_size: rows processed at once.

    Returns:
        ``(ids, log_weights)``, both ``(..., k)``: distinct ids first (ascending), then padding
        slots repeating the first id with weight 0 (``log_weights = -inf``). Store with
        ``TeacherOutput(topk_ids=ids, topk_logprobs=log_weights, sampled=True)``.
    """
    ids, counts, ratio = sample_counts_from_logits(logits, k, generator, proposal_temperature, chunk_size)
    return ids, log_weights_from_counts(counts, k, ratio if proposal_temperature != 1.0 else None)


@dataclass
class Rows:
    """The sparse teacher rows of ``n`` tokens, before they are packed into bytes.

    ``ids (n, K)`` int64; ``values (n, K)`` float32 (top-k: log-probs; sampled: log-weights,
    ``-inf`` on padding slots); ``tail (n,)`` float32 teacher mass outside the support; ``counts
    (n, K)`` float32 draw counts (sampled only, else None).
    """

    ids: torch.Tensor
    values: torch.Tensor
    tail: torch.Tensor
    counts: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    def slice(self, a: int, b: int) -> "Rows":
        return Rows(self.ids[a:b], self.values[a:b], self.tail[a:b],
                    None if self.counts is None else self.counts[a:b])

    def compact(self) -> "Rows":
        """On the CPU, ids as int32 and counts as uint8 (what a writer buffers until a shard is full)."""
        counts = self.counts
        if counts is not None:
            counts = counts.cpu().to(torch.uint8) if self.ids.shape[-1] <= 255 else counts.cpu()
        return Rows(self.ids.cpu().to(torch.int32), self.values.cpu(), self.tail.cpu(), counts)

    @staticmethod
    def cat(parts: list["Rows"]) -> "Rows":
        counts = None if parts[0].counts is None else torch.cat([p.counts for p in parts])
        return Rows(torch.cat([p.ids for p in parts]), torch.cat([p.values for p in parts]),
                    torch.cat([p.tail for p in parts]), counts)


@torch.no_grad()
def encode(logits: torch.Tensor, mode: str, k: int, generator: torch.Generator | None = None,
           proposal_temperature: float = 1.0) -> Rows:
    """Full teacher logits ``(n, V)`` -> the :class:`Rows` of ``n`` tokens.

    ``topk``: :func:`topk_from_logits`. ``sampled``: :func:`sample_counts_from_logits` (``tail``
    is the teacher mass outside the drawn ids, a diagnostic: the estimator does not use it).
    """
    counts = None
    if mode == "topk":
        ids, values = topk_from_logits(logits, k)
    elif mode == "sampled":
        ids, counts, ratio = sample_counts_from_logits(logits, k, generator, proposal_temperature)
        values = log_weights_from_counts(counts, k, ratio if proposal_temperature != 1.0 else None)
    else:
        raise ValueError(f"cache.mode must be one of {MODES}, got {mode!r}")
    # Sum the tail's own probabilities (no cancellation, unlike 1 - sum of the head): accurate in
    # relative terms even for a tail of 1e-9. Padding slots of a sampled row repeat a drawn id,
    # and zeroing an id twice is harmless.
    tail = torch.softmax(logits.float(), dim=-1).scatter_(-1, ids, 0.0).sum(-1)
    return Rows(ids, values.float(), tail.float(), counts)
