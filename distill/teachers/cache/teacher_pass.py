"""The teacher pass: run the frozen teacher once over a split and feed every cache writer."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from distill.teachers.cache.encoding import Rows
from distill.teachers.cache.writer import CacheWriter

log = logging.getLogger(__name__)


@dataclass
class PassStats:
    split: str
    examples: int
    tokens: int
    shards_written: int
    shards_skipped: int
    seconds: float


@torch.no_grad()
def next_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(T,)`` float32: at each real position, the teacher's log-prob of the next input token.

    ``logits`` are the ``(T, V)`` rows of the real positions of a right-padded batch (as
    ``cache_split`` selects them), ``input_ids`` and ``mask`` the ``(B, L)`` batch. An example's
    last position has no next token: NaN (no loss ever reads it: its target is -100).
    """
    nxt = torch.nn.functional.pad(input_ids[:, 1:], (0, 1), value=0)
    has_next = torch.nn.functional.pad(mask[:, 1:], (0, 1), value=False) & mask
    nxt, has_next = nxt[mask].to(logits.device), has_next[mask].to(logits.device)
    z = logits.float()
    lp = z.gather(-1, nxt.clamp(max=z.shape[-1] - 1).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
    return lp.masked_fill(~has_next, float("nan"))


@torch.no_grad()
def cache_split(model: torch.nn.Module, examples, writers: list[CacheWriter], split: str, *, pad_id: int,
                batch_size: int = 32, device: torch.device | str = "cpu", progress: bool = True,
                max_shards: int | None = None) -> PassStats:
    """Run ``model`` over ``examples`` once and feed every writer (e.g. a top-k and a sampled cache).

    Only shards some writer lacks are computed, and only the examples the writers select (see
    :meth:`CacheWriter.begin_split`, which must have been called; the writers must share
    ``shard_size``, ``vocab_size`` and the selection). The teacher runs on full batches across
    shard boundaries (a selection of a few examples per shard still batches well); each shard is
    written as soon as its last example is encoded. ``max_shards`` stops after that many shards
    (tests use it to simulate an interrupted run).

    Each position's log-prob of the next input token (:func:`next_token_logprobs`) is passed along
    to the writers that store it (the teacher's exact held-out CE, whatever its rank).
    """
    from tqdm.auto import tqdm

    from distill.data.datamodule import collate

    if len({(w.shard_size, w.vocab_size) for w in writers}) != 1:
        raise ValueError("cache_split: writers sharing one teacher pass need the same shard_size and vocab_size")
    first = writers[0]
    num_shards = math.ceil(len(examples) / first.shard_size)
    todo = [s for s in range(num_shards) if any(not w.has_shard(split, s) for w in writers)]
    skipped = num_shards - len(todo)
    if max_shards is not None:
        todo = todo[:max_shards]
    held = {s: first.shard_examples(split, s) for s in todo}
    if any(w.shard_examples(split, s) != held[s] for w in writers[1:] for s in todo):
        raise ValueError("cache_split: writers sharing one teacher pass need the same example selection")
    active = {s: [j for j, w in enumerate(writers) if not w.has_shard(split, s)] for s in todo}
    queue = [(s, i) for s in todo for i in held[s]]
    total = sum(len(examples[i]["input_ids"]) for _, i in queue)
    if skipped:
        log.info("teacher cache %s: %d of %d shards already written, resuming", split, skipped, num_shards)
    parts: dict[tuple[int, int], list[Rows]] = {(j, s): [] for s in todo for j in active[s]}
    nexts: dict[int, list[torch.Tensor]] = {s: [] for s in todo}
    lengths: dict[int, list[int]] = {s: [] for s in todo}
    left = {s: len(held[s]) for s in todo}

    def flush(s: int) -> None:
        nxt = nexts.pop(s)
        nxt = torch.cat(nxt) if nxt else None
        for j in active[s]:
            rows = parts.pop((j, s))
            writers[j].write_shard(split, s, Rows.cat(rows) if rows else None, lengths[s], next_logprob=nxt)

    for s in todo:
        if not left[s]:
            flush(s)  # no selected example: listed as done, no file
    t0, tokens = time.time(), 0
    bar = tqdm(total=total, desc=f"caching teacher ({split})", unit="tok", unit_scale=True, dynamic_ncols=True,
               disable=not progress)
    vocab = first.vocab_size
    for a in range(0, len(queue), batch_size):
        chunk = queue[a:a + batch_size]
        batch = collate([examples[i] for _, i in chunk], pad_id)
        mask = batch["attention_mask"].bool()
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    use_cache=False)
        # Right padding: each example's real positions are a prefix, so boolean indexing lists
        # them example by example, in order.
        logits = out.logits[..., :vocab][mask.to(out.logits.device)]
        lens = mask.sum(1).tolist()
        starts = [0, *torch.tensor(lens).cumsum(0).tolist()]
        nxt = next_token_logprobs(logits, batch["input_ids"], mask).cpu()
        for j, w in enumerate(writers):
            if not any(j in active[s] for s, _ in chunk):
                continue
            if w.mode == "sampled":
                # One generator per example: the draws do not depend on batching or on which shards
                # a rerun still has to write (a resumed cache equals an uninterrupted one).
                encoded = [w.encode(logits[starts[e]:starts[e + 1]], w.generator(split, i, logits.device))
                           for e, (_, i) in enumerate(chunk)]
            else:
                rows = w.encode(logits)
                encoded = [rows.slice(starts[e], starts[e + 1]) for e in range(len(chunk))]
            for (s, _), rows in zip(chunk, encoded):
                if j in active[s]:
                    parts[(j, s)].append(rows.compact())
        for e, ((s, _), n) in enumerate(zip(chunk, lens)):
            nexts[s].append(nxt[starts[e]:starts[e + 1]])
            lengths[s].append(n)
            left[s] -= 1
            if not left[s]:
                flush(s)
        bar.update(int(mask.sum()))
        tokens += int(mask.sum())
    bar.close()
    return PassStats(split, len(queue), tokens, len(todo), skipped, time.time() - t0)
