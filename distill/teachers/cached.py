"""``teacher=cached``: train from an offline teacher cache instead of running the teacher.

The cache (:mod:`distill.teachers.cache`, written by ``distill-cache-logits``) holds per-token
sparse teacher distributions keyed by example index. Which cache: ``teacher.path`` when set; else
the one under ``teacher.root`` whose manifest matches the run's tokenizer, training data, mode,
``k`` and (when set) ``teacher.source`` (:func:`~distill.teachers.cache.key.find_cache`); or, with
``write_with`` (``teacher=cached_auto``), the keyed folder of that teacher on this run's data,
written on first use. :meth:`CachedTeacher.prepare` checks that
the cache matches the run (tokenizer, teacher, data: a mismatch is a
:class:`~distill.teachers.cache.CacheMismatchError`, never a silent misalignment), then adds a
:class:`CachedRows` hook to the DataModule (its public seam,
:meth:`~distill.data.datamodule.DistillDataModule.add_hook`), so that every example carries its
cached rows and every batch carries::

    teacher_topk_ids       (B, L, W) int32     W = k (top-k), or the batch's most distinct draws (sampled)
    teacher_topk_logprobs  (B, L, W) float16/bf16 as stored, or float32 (q8 / count encodings)
    teacher_tail           (B, L)    float32   (absent when the cache stores no tail: sampled caches)
    teacher_next_logprob   (B, L)    float32   log p_T(next input token); NaN where unknown (absent
                                               in caches written before it was stored)

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

from distill.config import ConfigError
from distill.losses.functional import next_token_targets
from distill.teachers.base import Teacher
from distill.teachers.cache import CacheMismatchError, CacheReader, SplitReader, tokenizer_fingerprint, weights_fingerprint
from distill.teachers.cache.format import MANIFEST
from distill.teachers.cache.key import find_cache, read_candidates, write_command
from distill.teachers.cache.write import WriteSettings, is_complete, keyed_path, split_fingerprints, write_cache
from distill.types import ModelInfo, Need, TeacherKind, TeacherOutput

log = logging.getLogger(__name__)

BATCH_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail", "teacher_next_logprob")


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
        nxt = rows.next_logprob(index)
        if nxt is not None:
            out["teacher_next_logprob"] = nxt
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
        with_tail, with_next = "teacher_tail" in first, "teacher_next_logprob" in first
        tail = torch.full((n, length), 1.0 / (width + 1), dtype=torch.float32) if with_tail else None
        nxt = torch.full((n, length), math.nan, dtype=torch.float32) if with_next else None
        for i, e in enumerate(examples):
            e_ids, e_values = e["teacher_topk_ids"], e["teacher_topk_logprobs"]
            rows, w = e_ids.shape
            ids[i, :rows, :w], values[i, :rows, :w] = e_ids, e_values
            if w < width:
                ids[i, :rows, w:] = e_ids[:, :1]
                values[i, :rows, w:] = -math.inf
            if with_tail:
                tail[i, :rows] = e["teacher_tail"]
            if with_next:
                nxt[i, :rows] = e["teacher_next_logprob"]
        batch.update(teacher_topk_ids=ids, teacher_topk_logprobs=values)
        if with_tail:
            batch["teacher_tail"] = tail
        if with_next:
            batch["teacher_next_logprob"] = nxt
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
        path: the cache folder (``manifest.json`` and shards); None: found under ``root`` (see the
            module docstring), or, with ``write_with``, that teacher's keyed folder there.
        source: the teacher preset that wrote the cache (``distill-cache-logits teacher=<source>``):
            picks among several caches of the run's data, and is checked against a ``path``'s
            manifest; with ``write_with``, the name the cache is written under (None: the preset's).
        mode: expected cache mode (``topk`` | ``sampled``); checked when set.
        k: expected entries per token; checked when set.
        renormalize: make the stored head and tail sum to 1 (see :func:`renormalize`).
        verify: re-hash every shard file before training (slow for large caches).
        max_steps: the run's length (``${trainer.max_steps}``); checked against a cache that holds
            only the examples of the first N steps (``cache.max_steps``).
        root: the folder caches are written to and looked for in (``paths.cache_dir/data/teacher_logits``).
        write_with: a teacher with a model (``teacher=cached_auto``: a nested teacher preset): when
            the cache is missing or unfinished, :meth:`prepare` runs it once over the run's splits
            and writes it (progress bar, resumable), then releases it; later runs reuse the cache.
        write: how it is written: :class:`~distill.teachers.cache.write.WriteSettings` fields
            (``max_steps``: the examples the first N steps read, or null for the whole split;
            ``batch_size``, ``shard_size``, ``device``, ``progress``, ``encoding``, ``seed``, ``splits``).
    """

    kind = TeacherKind.SPARSE
    # Class defaults: the declared capabilities answer on an instance that has no cache yet.
    write_with: Teacher | None = None
    reader: CacheReader | None = None

    def __init__(self, path: str | None = None, source: str | None = None, mode: str | None = None,
                 k: int | None = None, renormalize: bool = True, verify: bool = False, max_steps: int | None = None,
                 root: str | None = None, write_with: Teacher | None = None, write: dict | None = None):
        self.source, self.mode, self.k, self.max_steps = source, mode, k, max_steps
        self.path = Path(path) if path else None
        self.root = Path(root) if root else None
        self.renormalize, self.verify = renormalize, verify
        self.write_with = write_with
        self.write_settings = None
        if write_with is not None:
            if not isinstance(write_with, Teacher) or not write_with.can_generate:
                raise ConfigError(f"teacher.write_with must be a teacher with a model to run (a teacher preset such "
                                  f"as tiny_stdlib, hf, smollm2-135m-instruct), got {type(write_with).__name__}")
            self.write_settings = WriteSettings(mode=mode or "topk", k=int(k or 64), **dict(write or {}))
        if self.path is None and self.root is None:
            raise ConfigError("teacher=cached: set teacher.path (the cache folder) or teacher.root (where to look)")
        self.reader: CacheReader | None = None
        self._candidates: list = []
        if self.path is not None and (self.path / MANIFEST).exists():
            self._open(self.path)
        elif write_with is None and self.path is not None:
            raise CacheMismatchError(
                f"teacher.path={self.path}: no teacher cache there ({MANIFEST} is missing). Write it with\n    "
                f"{write_command(source, mode, k)} cache.dir={self.path}\nor leave teacher.path unset: teacher=cached "
                "then finds the cache of this run's data under teacher.root (teacher.source picks among several).")
        elif write_with is None:
            # Before the data is known, the caches of this mode, k and source; none at all is an error
            # now (the data-aware choice among several waits for prepare).
            self._candidates = read_candidates(self.root, mode, k, source)
            if not self._candidates:
                find_cache(self.root, {}, {}, mode=mode, k=k, source=source, max_steps=max_steps, batch_size=0,
                           seed=0)
        self.prepared = False

    # ------------------------------------------------------------------ which cache
    def _open(self, path: Path) -> None:
        """Read the manifest at ``path`` and check it against the settings this teacher was given."""
        reader = CacheReader(path)
        m = reader.manifest
        expected = {"source": (self.source, (m.get("teacher") or {}).get("choice")), "mode": (self.mode, m["mode"]),
                    "k": (self.k, int(m["k"]))}
        wrong = [f"teacher.{key}={want!r} but the cache holds {got!r}" for key, (want, got) in expected.items()
                 if want is not None and want != got]
        if wrong:
            raise CacheMismatchError(f"teacher=cached: the cache at {path} is not the one configured: "
                                     + "; ".join(wrong) + ". Fix teacher.path or those settings.")
        sel = (m["splits"].get("train") or {}).get("selection") or {}
        if sel.get("kind") == "visited" and self.max_steps is not None and self.max_steps > sel["max_steps"]:
            raise CacheMismatchError(
                f"teacher=cached: the cache at {path} holds the examples of the first {sel['max_steps']} steps only "
                f"(cache.max_steps), but trainer.max_steps={self.max_steps}. Rerun distill-cache-logits with "
                f"cache.max_steps={self.max_steps} (it adds nothing to finished shards: use another cache.dir or "
                "cache.overwrite=true), or cache.max_steps=null for the whole split.")
        self.path, self.reader = Path(path), reader
        if self.verify:
            reader.verify()

    def _label(self) -> str | None:
        """The name a cache written here is filed under: ``source``, else the nested preset's name."""
        if self.source:
            return self.source
        try:
            from hydra.core.hydra_config import HydraConfig

            return HydraConfig.get().runtime.choices.get("teacher@teacher.write_with")
        except ValueError:  # no Hydra context (called from Python)
            return None

    def _locate(self, datamodule, data: dict[str, dict]) -> Path:
        """The cache folder for this run (written first when ``write_with`` says how and it is missing)."""
        if self.write_with is not None:
            s = self.write_settings
            path = self.path or keyed_path(self.root, self._label(), self.write_with, datamodule, s, data)
            if not is_complete(path, s.splits):
                log.info("teacher=cached: writing the teacher cache once (later runs reuse it): %s", path)
                write_cache(self.write_with, datamodule, path, s, label=self._label())
                # Training reads the cache only: drop the weights (an online teacher loads lazily
                # again should anything ask, which nothing on the cached path does).
                if getattr(self.write_with, "model", None) is not None:
                    self.write_with.model = None
            return path
        return find_cache(self.root, tokenizer_fingerprint(datamodule.tokenizer), data["train"], mode=self.mode,
                          k=self.k, source=self.source, max_steps=self.max_steps,
                          batch_size=int(datamodule.batch_size), seed=int(getattr(datamodule, "seed", 0)))

    @property
    def sampled(self) -> bool:
        if self.reader is not None:
            return self.reader.sampled
        return (self.mode or (self.write_settings.mode if self.write_settings else "topk")) == "sampled"

    # ------------------------------------------------------------------ capabilities
    def scoring_limit(self) -> str | None:
        return ("a cached teacher (teacher=cached) holds log-probs for the dataset's own tokens only and cannot score "
                "sequences generated during training. Use an online teacher: the model that wrote the cache "
                "(teacher=hf teacher.model.name_or_path=<its folder>, or the default teacher=tiny_stdlib), or "
                "teacher=remote; or switch generation off (sequences=data).")

    def covers(self, batch: dict) -> bool:
        # rows ride in the batch; a held-out split the cache does not match has none (see prepare)
        return "teacher_topk_ids" in batch

    def info(self) -> ModelInfo:
        if self.reader is not None:
            return ModelInfo(**self.reader.manifest["teacher"]["info"])
        if self.write_with is not None:
            return self.write_with.info()
        # Not chosen yet (prepare picks by data): a sparse teacher's checks read only its vocabulary
        # size, and prepare checks the chosen cache's tokenizer by hash.
        return ModelInfo(**self._candidates[0].manifest["teacher"]["info"])

    @property
    def tokenizer(self) -> str | None:
        # The teacher that will write the cache: its own tokenizer is checked against the student's
        # before anything runs (validate.check_vocab), as an online teacher's is. A cache alone: its
        # vocabulary is checked by hash in prepare(); None keeps validate.check_vocab from loading a
        # tokenizer folder that may only exist on the machine that wrote the cache.
        return self.write_with.tokenizer if self.write_with is not None else None

    def prepare(self, datamodule) -> None:
        """Find (or write) the cache, check it against the run, then hook its rows into the DataModule's batches."""
        if getattr(self, "_prepared_for", None) is datamodule:
            return
        data = split_fingerprints(datamodule)
        keyed = False
        if self.reader is None or (self.write_with is not None and not is_complete(self.path, self.write_settings.splits)):
            self._open(self._locate(datamodule, data))
            keyed = self.write_with is not None
        reader = self.reader
        reader.check_tokenizer(tokenizer_fingerprint(datamodule.tokenizer))
        teacher = reader.manifest["teacher"]
        if teacher.get("name_or_path") and not teacher.get("from_scratch") and not keyed:
            # (a keyed folder's name already hashes the teacher's weights)
            reader.check_teacher(weights_fingerprint(teacher["name_or_path"]))
        if "train" not in reader.manifest["splits"]:
            raise CacheMismatchError(f"teacher=cached: the cache at {self.path} has no train split; write it with "
                                     "distill-cache-logits cache.splits=[train,val]")
        train = datamodule.examples("train")
        problems = reader.check_data("train", data["train"])
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
        try:
            splits = {"train": reader.split("train")}
        except RuntimeError as e:  # unfinished: rerunning the writer resumes it
            raise CacheMismatchError(f"teacher=cached: {e}") from None
        if len(splits["train"]) != len(train):
            raise CacheMismatchError(f"teacher cache {self.path}: split 'train' has {len(splits['train'])} cached "
                                     f"examples but the data has {len(train)}")
        if "val" in reader.manifest["splits"] and reader.manifest["splits"]["val"].get("complete"):
            val_problems = reader.check_data("val", data["val"])
            if val_problems:
                # Validation scores the student on its own; it only loses the teacher metrics.
                log.warning("teacher=cached: the cached val split does not match this run's (%s); validation "
                            "runs without teacher metrics", "; ".join(val_problems))
            else:
                splits["val"] = reader.split("val")
        else:
            log.warning("teacher=cached: the cache at %s holds no (finished) val split: validation reports no teacher "
                        "metrics and the summary no teacher row or CE-only baseline. Write it with "
                        "distill-cache-logits cache.splits=[train,val] (%s)", self.path,
                        write_command(self.source, self.mode, self.k))
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

    def heldout_output(self, batch: dict) -> TeacherOutput:
        """The cached rows, plus the teacher's log-prob of every target (``sampled_logprobs``), so that
        validation reports the teacher's held-out CE (``val/teacher_loss``) with no teacher forward.

        Exact where the cache stores each next token's log-prob (caches written by this version, for
        every target, in the top k or not). An older cache gives it only for targets inside its top-k
        support (the stored, renormalised values); if any target of the batch is outside, the
        batch gives no teacher CE, and the run reports none rather than a partial mean.
        """
        if not self.covers(batch):
            return TeacherOutput.none()
        out = self(batch, frozenset({Need.TEACHER_LOGITS}))
        targets = next_token_targets(batch["labels"])
        mask = targets != -100
        safe = targets.clamp(min=0)
        known = torch.full(targets.shape, math.nan, device=targets.device)
        stored = batch.get("teacher_next_logprob")
        if stored is not None:
            nxt = torch.nn.functional.pad(batch["input_ids"][:, 1:], (0, 1), value=-1)
            known = torch.where(nxt == targets, stored.float(), known)  # the stored value is of the next input token
        if not out.sampled:  # a top-k support holds log-probs; a sampled one holds estimator weights
            hit = out.topk_ids == safe.unsqueeze(-1)
            from_support = torch.where(hit, out.topk_logprobs, torch.zeros_like(out.topk_logprobs)).sum(-1)
            known = torch.where(torch.isnan(known) & hit.any(-1), from_support, known)
        if bool(torch.isfinite(known)[mask].all()):
            out.sampled_logprobs = known.masked_fill(~mask, 0.0)
        return out
