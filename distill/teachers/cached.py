"""``teacher=cached``: train from an offline teacher cache instead of running the teacher.

The cache (:mod:`distill.teachers.cache`, written by ``distill-cache-logits``) holds per-token
sparse teacher distributions keyed by example index. :meth:`CachedTeacher.prepare` checks that
the cache matches the run (tokenizer, teacher, data: a mismatch is a
:class:`~distill.teachers.cache.CacheMismatchError`, never a silent misalignment), then wraps the
DataModule's datasets so that every example carries its cached rows and every batch carries::

    teacher_topk_ids       (B, L, K) int32
    teacher_topk_logprobs  (B, L, K) float16/bf16 (as stored)
    teacher_tail           (B, L)    float32

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
from torch.utils.data import Dataset

from distill.types import ModelInfo
from distill.teachers.base import Teacher
from distill.teachers.cache import (CacheMismatchError, CacheReader, SplitReader, data_fingerprint,
                                    tokenizer_fingerprint, weights_fingerprint)
from distill.types import TeacherOutput
from distill.types import TeacherKind

log = logging.getLogger(__name__)

BATCH_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail")


def _examples(dataset) -> list[dict]:
    """The example list behind a DataModule dataset (``ExampleDataset.examples``), or the dataset."""
    return getattr(dataset, "examples", None) or [dataset[i] for i in range(len(dataset))]


class CachedExamples(Dataset):
    """A split's examples, each with its cached teacher rows attached (same index, same order)."""

    def __init__(self, base: Dataset, rows: SplitReader):
        if len(base) != len(rows):
            raise CacheMismatchError(f"teacher cache {rows.path}: split {rows.split!r} has {len(rows)} cached examples "
                                     f"but the data has {len(base)}")
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        example = dict(self.base[i])
        ids, values, tail = self.rows[i]
        if ids.shape[0] != len(example["input_ids"]):
            raise CacheMismatchError(f"teacher cache {self.rows.path}: example {i} of split {self.rows.split!r} has "
                                     f"{ids.shape[0]} cached positions but {len(example['input_ids'])} tokens")
        example["teacher_topk_ids"], example["teacher_topk_logprobs"], example["teacher_tail"] = ids, values, tail
        return example


class CachedCollate:
    """Wraps the DataModule's collate: pads the cached rows to the batch length alongside it.

    Padded positions (label -100, so never in a loss) get a valid dummy distribution (ids
    ``0..K-1``, each of probability ``1 / (K + 1)``) so that no ``-inf``/NaN is ever computed there.
    """

    def __init__(self, base, k: int):
        self.base, self.k = base, k

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.base(examples)
        if not examples or "teacher_topk_ids" not in examples[0]:
            return batch
        length = batch["input_ids"].shape[1]
        k = self.k
        first = examples[0]
        ids = torch.arange(k, dtype=first["teacher_topk_ids"].dtype).expand(len(examples), length, k).clone()
        values = torch.full((len(examples), length, k), -math.log(k + 1), dtype=first["teacher_topk_logprobs"].dtype)
        tail = torch.full((len(examples), length), 1.0 / (k + 1), dtype=torch.float32)
        for i, e in enumerate(examples):
            n = e["teacher_topk_ids"].shape[0]
            ids[i, :n], values[i, :n], tail[i, :n] = e["teacher_topk_ids"], e["teacher_topk_logprobs"], e["teacher_tail"]
        batch.update(teacher_topk_ids=ids, teacher_topk_logprobs=values, teacher_tail=tail)
        return batch


def renormalize(topk_logprobs: torch.Tensor, tail: torch.Tensor, sampled: bool,
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

    def info(self) -> ModelInfo:
        return ModelInfo(**self.reader.manifest["teacher"]["info"])

    @property
    def tokenizer(self) -> str | None:
        # The vocabulary is checked by hash in prepare(); returning None keeps validate.check_vocab
        # from loading a tokenizer folder that may only exist on the machine that wrote the cache.
        return None

    def prepare(self, datamodule) -> None:
        """Check the cache against the run, then attach cached rows to the DataModule's examples."""
        if getattr(datamodule, "_cached_teacher", None) is self:
            return
        reader = self.reader
        # Another CachedTeacher prepared this DataModule before: start again from the plain data.
        for name in ("train_set", "val_set"):
            if isinstance(getattr(datamodule, name, None), CachedExamples):
                setattr(datamodule, name, getattr(datamodule, name).base)
        if isinstance(datamodule.__dict__.get("_collate"), CachedCollate):
            del datamodule._collate
        reader.check_tokenizer(tokenizer_fingerprint(datamodule.tokenizer))
        teacher = reader.manifest["teacher"]
        if teacher.get("name_or_path") and not teacher.get("from_scratch"):
            reader.check_teacher(weights_fingerprint(teacher["name_or_path"]))
        datamodule.setup("fit")
        seq_len, source = datamodule.seq_len, getattr(datamodule, "source", None)
        if "train" not in reader.manifest["splits"]:
            raise CacheMismatchError(f"teacher=cached: the cache at {self.path} has no train split; write it with "
                                     "distill-cache-logits cache.splits=[train,val]")
        problems = reader.check_data("train", data_fingerprint(_examples(datamodule.train_set), seq_len, source, "train"))
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
        datamodule.train_set = CachedExamples(datamodule.train_set, reader.split("train"))
        if "val" in reader.manifest["splits"]:
            val_problems = reader.check_data("val", data_fingerprint(_examples(datamodule.val_set), seq_len, source,
                                                                    "val"))
            if val_problems:
                # Validation scores the student on its own; it only loses the teacher metrics.
                log.warning("teacher=cached: the cached val split does not match this run's (%s); validation "
                            "runs without teacher metrics", "; ".join(val_problems))
            else:
                datamodule.val_set = CachedExamples(datamodule.val_set, reader.split("val"))
        # Instance attribute shadowing the method: the DataModule's loaders pick it up unchanged.
        datamodule._collate = CachedCollate(datamodule._collate, reader.k)
        datamodule._cached_teacher = self
        self.prepared = True
        log.info("teacher=cached: %s cache (k=%d, %d B/token) at %s", reader.mode, reader.k,
                 reader.manifest["bytes_per_token"], self.path)

    def __call__(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        if "teacher_topk_ids" not in batch:
            raise KeyError("teacher=cached: the batch has no teacher_topk_ids. CachedTeacher.prepare(datamodule) "
                           "must run before training (distill.train.build_components does it); a batch built "
                           "outside the DataModule has no cached rows.")
        lp = batch["teacher_topk_logprobs"]
        if self.renormalize:
            lp = renormalize(lp, batch["teacher_tail"], self.sampled,
                             float(self.reader.manifest.get("proposal_temperature", 1.0)))
        else:
            lp = lp.float()
        return TeacherOutput(topk_ids=batch["teacher_topk_ids"].long(), topk_logprobs=lp, sampled=self.sampled)
