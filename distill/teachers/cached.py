"""``teacher=cached``: train from an offline teacher cache instead of running the teacher.

The cache (:mod:`distill.teachers.cache`, written by ``distill-cache-logits``) holds per-token
sparse teacher distributions keyed by example index. :meth:`CachedTeacher.prepare` checks that
the cache matches the run (tokenizer, teacher, data: a mismatch is a
:class:`~distill.teachers.cache.CacheMismatchError`, never a silent misalignment), then adds a
:class:`CachedRows` hook to the DataModule (its public seam,
:meth:`~distill.data.datamodule.DistillDataModule.add_hook`), so that every example carries its
cached rows and every batch carries::

    teacher_topk_ids       (B, L, W) int32     W = k (top-k), or the batch's most distinct draws (sampled)
    teacher_topk_logprobs  (B, L, W) float16/bf16 as stored, or float32 (q8 / count encodings)
    teacher_tail           (B, L)    float32   (absent when the cache stores no tail: sampled caches)

and :meth:`CachedTeacher.__call__` turns them into a sparse
:class:`~distill.types.TeacherOutput`. Being in the batch, the rows move to the device
and are split into micro-batches along with ``input_ids``.

Losses must accept a sparse teacher (``loss=kd_chunked``, ``loss=kd_fused``, or the ``Sparse*``
components of :mod:`distill.losses.sparse`); hidden-state and attention matching need an online
teacher.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from distill.teachers.base import Teacher
from distill.teachers.cache import (CacheMismatchError, CacheReader, SplitReader, data_fingerprint,
                                    tokenizer_fingerprint, weights_fingerprint)
from distill.types import ModelInfo, TeacherKind, TeacherOutput

log = logging.getLogger(__name__)

BATCH_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail")


class CachedRows:
    """The :class:`~distill.data.datamodule.BatchHook` of a cache: attaches each example's rows, pads them per batch.

    ``example`` adds ``teacher_topk_ids (L, W)``, ``teacher_topk_logprobs (L, W)`` and (when the
    cache stores one) ``teacher_tail (L,)`` to the examples of the splits it has a reader for
    (``W = k``, or a sampled example's most distinct draws). ``batch`` pads them to the batch:
    positions beyond an example's length (label -100, so never in a loss) get a valid dummy
    distribution (ids ``0..W-1``, each of probability ``1 / (W + 1)``) so that no ``-inf``/NaN is
    ever computed there; slots beyond a token's own width repeat its first id with value ``-inf``
    (weight 0), as the cache pads.
    """

    def __init__(self, splits: dict[str, SplitReader]):
        self.splits = splits

    def example(self, split: str, index: int, example: dict) -> dict:
        rows = self.splits.get(split)
        if rows is None:
            return example
        ids, values, tail = rows[index]
        if ids.shape[0] != len(example["input_ids"]):
            raise CacheMismatchError(f"teacher cache {rows.path}: example {index} of split {split!r} has "
                                     f"{ids.shape[0]} cached positions but {len(example['input_ids'])} tokens")
        out = dict(example)  # the DataModule's own example stays as it is
        out["teacher_topk_ids"], out["teacher_topk_logprobs"] = ids, values
        if tail is not None:
            out["teacher_tail"] = tail
        return out

    def batch(self, examples: list[dict], batch: dict) -> dict:
        if not examples or "teacher_topk_ids" not in examples[0]:
            return batch
        length = batch["input_ids"].shape[1]
        first = examples[0]
        width = max(e["teacher_topk_ids"].shape[1] for e in examples)
        n = len(examples)
        ids = torch.arange(width, dtype=first["teacher_topk_ids"].dtype).expand(n, length, width).clone()
        values = torch.full((n, length, width), -math.log(width + 1), dtype=first["teacher_topk_logprobs"].dtype)
        with_tail = "teacher_tail" in first
        tail = torch.full((n, length), 1.0 / (width + 1), dtype=torch.float32) if with_tail else None
        for i, e in enumerate(examples):
            e_ids, e_values = e["teacher_topk_ids"], e["teacher_topk_logprobs"]
            rows, w = e_ids.shape
            ids[i, :rows, :w], values[i, :rows, :w] = e_ids, e_values
            if w < width:
                ids[i, :rows, w:] = e_ids[:, :1]
                values[i, :rows, w:] = -math.inf
            if with_tail:
                tail[i, :rows] = e["teacher_tail"]
        batch.update(teacher_topk_ids=ids, teacher_topk_logprobs=values)
        if with_tail:
            batch["teacher_tail"] = tail
        return batch


def renormalize(topk_logprobs: torch.Tensor, tail: torch.Tensor | None, sampled: bool,
                proposal_temperature: float = 1.0) -> torch.Tensor:
    """Float32 log-probs whose head and tail sum to 1 despite the rounding of the stored values.

    Top-k: the head is rescaled to ``1 - tail``, the tail being summed over the ids outside the support
    when the cache was written (the head's fp16 rounding would otherwise leave a tail of the wrong size, or a
    negative one). Sampled with the teacher as proposal: the weights ``count / K`` sum to exactly 1,
    so they are rescaled to 1. Other proposals are unbiased only in expectation: left as stored.
    """
    lp = topk_logprobs.float()
    if sampled and proposal_temperature != 1.0:
        return lp
    lse = torch.logsumexp(lp, dim=-1, keepdim=True)
    if sampled:
        return lp - lse
    head = torch.log1p(-tail.float().clamp(0.0, 1.0 - 1e-7)).unsqueeze(-1)
    return lp - lse + head


class CachedTeacher(Teacher):
    """A teacher read from an offline cache (kind ``"sparse"``).

    Args:
        path: the cache folder (``manifest.json`` and shards).
        source: expected teacher config name that wrote the cache (e.g. ``tiny_stdlib``); checked
            against the manifest when set.
        mode: expected cache mode (``topk`` | ``sampled``); checked when set.
        k: expected entries per token; checked when set.
        renormalize: make the stored head and tail sum to 1 (see :func:`renormalize`).
        verify: re-hash every shard file before training (slow for large caches).
        max_steps: the run's length (``${trainer.max_steps}``); checked against a cache that holds
            only the examples of the first N steps (``cache.max_steps``).
    """

    kind = TeacherKind.SPARSE

    def __init__(self, path: str, source: str | None = None, mode: str | None = None, k: int | None = None,
                 renormalize: bool = True, verify: bool = False, max_steps: int | None = None):
        self.reader = CacheReader(path)
        m = self.reader.manifest
        expected = {"source": (source, (m.get("teacher") or {}).get("choice")), "mode": (mode, m["mode"]),
                    "k": (k, int(m["k"]))}
        wrong = [f"teacher.{key}={want!r} but the cache holds {got!r}" for key, (want, got) in expected.items()
                 if want is not None and want != got]
        if wrong:
            raise CacheMismatchError(f"teacher=cached: the cache at {path} is not the one configured: "
                                     + "; ".join(wrong) + ". Fix teacher.path or those settings.")
        sel = (m["splits"].get("train") or {}).get("selection") or {}
        if sel.get("kind") == "visited" and max_steps is not None and max_steps > sel["max_steps"]:
            raise CacheMismatchError(
                f"teacher=cached: the cache at {path} holds the examples of the first {sel['max_steps']} steps only "
                f"(cache.max_steps), but trainer.max_steps={max_steps}. Rerun distill-cache-logits with "
                f"cache.max_steps={max_steps} (it adds nothing to finished shards: use another cache.dir or "
                "cache.overwrite=true), or cache.max_steps=null for the whole split.")
        self.path, self.renormalize = Path(path), renormalize
        if verify:
            self.reader.verify()
        self.prepared = False

    @property
    def sampled(self) -> bool:
        return self.reader.sampled

    def scoring_limit(self) -> str | None:
        return ("a cached teacher (teacher=cached) holds log-probs for the dataset's own tokens only and cannot score "
                "sequences generated during training. Use an online teacher: the model that wrote the cache "
                "(teacher=hf teacher.model.name_or_path=<its folder>, or the default teacher=tiny_stdlib), or "
                "teacher=remote; or switch generation off (sequences=data).")

    def covers(self, batch: dict) -> bool:
        # rows ride in the batch; a held-out split the cache does not match has none (see prepare)
        return "teacher_topk_ids" in batch

    def info(self) -> ModelInfo:
        return ModelInfo(**self.reader.manifest["teacher"]["info"])

    @property
    def tokenizer(self) -> str | None:
        # The vocabulary is checked by hash in prepare(); returning None keeps validate.check_vocab
        # from loading a tokenizer folder that may only exist on the machine that wrote the cache.
        return None

    def prepare(self, datamodule) -> None:
        """Check the cache against the run, then hook the cached rows into the DataModule's batches."""
        if getattr(self, "_prepared_for", None) is datamodule:
            return
        reader = self.reader
        reader.check_tokenizer(tokenizer_fingerprint(datamodule.tokenizer))
        teacher = reader.manifest["teacher"]
        if teacher.get("name_or_path") and not teacher.get("from_scratch"):
            reader.check_teacher(weights_fingerprint(teacher["name_or_path"]))
        seq_len, source = datamodule.seq_len, getattr(datamodule, "source", None)
        if "train" not in reader.manifest["splits"]:
            raise CacheMismatchError(f"teacher=cached: the cache at {self.path} has no train split; write it with "
                                     "distill-cache-logits cache.splits=[train,val]")
        train = datamodule.examples("train")
        problems = reader.check_data("train", data_fingerprint(train, seq_len, source, "train"))
        if problems:
            raise reader.data_error("train", problems)
        sel = reader.manifest["splits"]["train"].get("selection") or {}
        if sel.get("kind") == "visited":
            run = {"batch_size": int(datamodule.batch_size), "seed": int(getattr(datamodule, "seed", 0))}
            wrong = [f"data.{k}: cache {sel[k]} vs this run {v}" for k, v in run.items() if sel.get(k) != v]
            if wrong:
                raise CacheMismatchError(
                    f"teacher=cached: the cache at {self.path} holds the examples that runs with another batch order "
                    f"read ({'; '.join(wrong)}). Use those settings, or rewrite the cache with this run's data "
                    "settings (or with cache.max_steps=null: the whole split serves any order).")
        splits = {"train": reader.split("train")}
        if len(splits["train"]) != len(train):
            raise CacheMismatchError(f"teacher cache {self.path}: split 'train' has {len(splits['train'])} cached "
                                     f"examples but the data has {len(train)}")
        if "val" in reader.manifest["splits"]:
            val_problems = reader.check_data("val", data_fingerprint(datamodule.examples("val"), seq_len, source,
                                                                    "val"))
            if val_problems:
                # Validation scores the student on its own; it only loses the teacher metrics.
                log.warning("teacher=cached: the cached val split does not match this run's (%s); validation "
                            "runs without teacher metrics", "; ".join(val_problems))
            else:
                splits["val"] = reader.split("val")
        # A DataModule serves one teacher's rows: a hook left by another cached teacher (prepared
        # on the same DataModule before) goes, or batches would carry two caches' fields.
        for hook in [h for h in datamodule.hooks if isinstance(h, CachedRows)]:
            datamodule.hooks.remove(hook)
        datamodule.add_hook(CachedRows(splits))
        self._prepared_for = datamodule
        self.prepared = True
        log.info("teacher=cached: %s cache (k=%d, %s, %.1f B/token on disk) at %s", reader.mode, reader.k,
                 reader.encoding, reader.stored_bytes()[0] / max(reader.stored_bytes()[1], 1), self.path)

    def __call__(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        if "teacher_topk_ids" not in batch:
            raise KeyError("teacher=cached: the batch has no teacher_topk_ids. CachedTeacher.prepare(datamodule) "
                           "must run before training (distill.train.build_components does it); a batch built "
                           "outside the DataModule has no cached rows.")
        lp = batch["teacher_topk_logprobs"]
        if self.renormalize:
            lp = renormalize(lp, batch.get("teacher_tail"), self.sampled,
                             float(self.reader.manifest.get("proposal_temperature", 1.0)))
        else:
            lp = lp.float()
        return TeacherOutput(topk_ids=batch["teacher_topk_ids"].long(), topk_logprobs=lp, sampled=self.sampled)
