"""Offline teacher cache: run the frozen teacher once, store a sparse distribution per token.

Layout of one cache folder (``distill-cache-logits`` writes it, ``teacher=cached`` reads it)::

    <cache>/manifest.json                 what was cached, from what, and which shards are finished
    <cache>/<split>-00000.safetensors     one shard: examples [start, stop) of that split

A shard holds, for the ``T`` tokens of its examples (concatenated, example by example)::

    topk_ids       (T, K) int32            the support: top-k ids, or the distinct sampled ids
    topk_logprobs  (T, K) float16/bf16     teacher log-probs at T=1 (top-k), or log importance weights
    tail           (T,)   float32          teacher mass outside the support (top-k: the tail bucket)
    indices        (n,)   int64            the split's example indices the shard holds (sorted)
    offsets        (n+1,) int64            example indices[j] owns rows offsets[j]:offsets[j+1]

Rows are keyed by **example index** of the DataModule's (deterministic) split, one row per input
position, aligned with ``input_ids`` exactly as an online teacher's logits are. Shard ``s`` covers
indices ``[s * shard_size, (s + 1) * shard_size)``: all of them, or only those a run will visit
(``select_visited``: the first ``max_steps`` batches of the DataModule's own training loader),
which makes one cache pass cost what one online run spends on the teacher. The two modes
(see :mod:`distill.losses.sparse` for the losses):

* ``topk``: the ``K`` most likely ids and their log-probs; the tail mass is summed in float32
  over the ids outside the support, so the reader can make the stored (rounded) head and the
  tail sum to 1.
  Biased: the tail is kept as one bucket only.
* ``sampled``: "random-sampling KD" (Anshumann et al., ACL 2025): ``K`` ids drawn i.i.d. from
  the teacher, stored as distinct ids with log importance weights; unbiased for the forward-KL
  gradient at the same storage.

Resumable: each shard is written to a temporary file and renamed, then the manifest (also
replaced atomically) lists it; a rerun verifies the fingerprints and skips finished shards. The
manifest records fingerprints of the teacher (path, config hash, weights hash), the tokenizer
(vocabulary hash) and the data per split (source, ``seq_len``, example count, token-id hash); a
reader compares them with its run and raises :class:`CacheMismatchError` naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

FORMAT = "distill-teacher-cache"
VERSION = 1
MANIFEST = "manifest.json"
MODES = ("topk", "sampled")
VALUE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
ID_DTYPE = torch.int32
# Fields of a shard, in the order they are documented above.
FIELDS = ("topk_ids", "topk_logprobs", "tail", "indices", "offsets")
# Hash every byte of local weight files up to this size; beyond it (multi-GB checkpoints) hash
# names, sizes and the first/last chunk of each file, so checking a cache never takes minutes.
FULL_HASH_LIMIT = 2 << 30
SAMPLE_CHUNK = 16 << 20


class CacheMismatchError(ValueError):
    """The cache was written for another teacher, tokenizer or data than the run uses."""


# ----------------------------------------------------------------------------- fingerprints
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_sha(obj: Any) -> str:
    return _sha256(json.dumps(obj, sort_keys=True, default=str).encode())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> dict:
    """``{name_or_path, size, vocab_sha256}``; the hash of the id <-> token map decides equality."""
    vocab = tokenizer.get_vocab()
    return {"name_or_path": str(getattr(tokenizer, "name_or_path", "")), "size": len(tokenizer),
            "vocab_sha256": _json_sha(sorted(vocab.items()))}


def tokens_sha256(examples) -> tuple[str, int]:
    """Hash of every example's ``input_ids`` (lengths included, so the split points count too)."""
    lengths = np.fromiter((len(e["input_ids"]) for e in examples), dtype=np.int64, count=len(examples))
    flat = np.fromiter((t for e in examples for t in e["input_ids"]), dtype=np.int64, count=int(lengths.sum()))
    h = hashlib.sha256(lengths.tobytes())
    h.update(flat.astype(np.int32).tobytes())
    return h.hexdigest(), int(lengths.sum())


def data_fingerprint(examples, seq_len: int, source=None, split: str = "train") -> dict:
    """What a split's cache rows are aligned to: the examples' token ids, and where they came from.

    ``tokens_sha256``, ``num_examples`` and ``seq_len`` decide equality; ``source`` and
    ``source_fingerprint`` are recorded to make a mismatch message readable.
    """
    sha, n_tokens = tokens_sha256(examples)
    src_fp = ""
    if source is not None and hasattr(source, "fingerprint"):
        try:
            src_fp = str(source.fingerprint(split))
        except Exception:  # a source without a fingerprint for this split: informational only
            src_fp = ""
    return {"source": type(source).__name__ if source is not None else None, "source_fingerprint": src_fp,
            "seq_len": int(seq_len), "num_examples": len(examples), "num_tokens": n_tokens, "tokens_sha256": sha}


def _config_sha(config) -> str:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    for k in ("transformers_version", "_name_or_path", "_commit_hash", "name_or_path", "torch_dtype", "dtype",
              "_attn_implementation_autoset", "_attn_implementation"):
        d.pop(k, None)
    return _json_sha(d)


def weights_fingerprint(folder: str | Path) -> dict | None:
    """Hash of the weight files of a local model folder (None when it is not a local folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    if not files:
        return None
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    kind = "files" if total <= FULL_HASH_LIMIT else "files-sampled"
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        if kind == "files":
            h.update(file_sha256(p).encode())
        else:
            with p.open("rb") as fh:
                h.update(fh.read(SAMPLE_CHUNK))
                fh.seek(max(0, size - SAMPLE_CHUNK))
                h.update(fh.read(SAMPLE_CHUNK))
    return {"kind": kind, "sha256": h.hexdigest()}


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Hash of a model's parameters and buffers (for teachers built from config, with no files)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def teacher_fingerprint(spec, model: torch.nn.Module | None = None, choice: str | None = None) -> dict:
    """What the teacher was: config choice, ``name_or_path``, config hash and a weights hash.

    Weights: the hash of a local folder's weight files; for a hub id the commit recorded in its
    config; for a model built from config (random weights) the hash of ``model``'s state dict.
    """
    config = spec.hf_config()
    weights = None
    if spec.name_or_path and not spec.from_scratch:
        weights = weights_fingerprint(spec.name_or_path)
        if weights is None and getattr(config, "_commit_hash", None):
            weights = {"kind": "hub-commit", "sha256": config._commit_hash}
    if weights is None and model is not None:
        weights = {"kind": "state_dict", "sha256": state_dict_sha256(model)}
    info = spec.info()
    return {"choice": choice, "name_or_path": spec.name_or_path, "from_scratch": bool(spec.from_scratch),
            "config_sha256": _config_sha(config), "weights": weights, "dtype": spec.dtype,
            "info": {"hidden_size": info.hidden_size, "num_layers": info.num_layers, "num_heads": info.num_heads,
                     "vocab_size": info.vocab_size}}


def diff_fields(recorded: dict, current: dict, keys: tuple[str, ...]) -> list[str]:
    """``"key: cache X vs run Y"`` for each key that differs."""
    return [f"{k}: cache {recorded.get(k)!r} vs this run {current.get(k)!r}" for k in keys
            if recorded.get(k) != current.get(k)]


DATA_KEYS = ("seq_len", "num_examples", "num_tokens", "tokens_sha256")


# ----------------------------------------------------------------------------- encoding
def bytes_per_token(k: int, value_dtype: str = "float16") -> int:
    """Stored bytes per token: ``K`` ids (int32) + ``K`` values + the float32 tail (offsets aside)."""
    return k * (torch.empty((), dtype=ID_DTYPE).element_size() + torch.empty((), dtype=VALUE_DTYPES[value_dtype]).element_size()) + 4


@torch.no_grad()
def encode(logits: torch.Tensor, mode: str, k: int, generator: torch.Generator | None = None,
           proposal_temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full teacher logits ``(n, V)`` -> ``(ids (n, K) int32, values (n, K) float32, tail (n,) float32)``.

    ``topk``: :func:`distill.losses.sparse.topk_from_logits`; the tail ``1 - sum_k p_k`` is summed
    over the ids outside the support (accurate also when it is tiny). ``sampled``:
    :func:`distill.losses.sparse.sample_from_logits`; ``tail`` is the teacher mass outside the drawn
    ids (a diagnostic; the estimator does not use it).
    """
    from distill.losses import sparse as SP

    if mode == "topk":
        ids, values = SP.topk_from_logits(logits, k)
    elif mode == "sampled":
        ids, values = SP.sample_from_logits(logits, k, generator=generator,
                                            proposal_temperature=proposal_temperature)
    else:
        raise ValueError(f"cache.mode must be one of {MODES}, got {mode!r}")
    # Sum the tail's own probabilities (no cancellation, unlike 1 - sum of the head): accurate in
    # relative terms even for a tail of 1e-9. Padding slots of a sampled row repeat a drawn id,
    # and zeroing an id twice is harmless.
    tail = torch.softmax(logits.float(), dim=-1).scatter_(-1, ids, 0.0).sum(-1)
    return ids.to(ID_DTYPE), values.float(), tail.float()


# ----------------------------------------------------------------------------- writer
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


class CacheWriter:
    """Writes one cache folder shard by shard; safe to interrupt and rerun.

    Args:
        path: the cache folder.
        mode: ``"topk"`` or ``"sampled"``.
        k: entries per token.
        vocab_size: ids compared (the tokenizer's size; larger teacher heads are cut to it).
        teacher / tokenizer: fingerprints (:func:`teacher_fingerprint`, :func:`tokenizer_fingerprint`).
        value_dtype: storage of ``topk_logprobs`` ("float16", "bfloat16" or "float32").
        shard_size: examples per shard file.
        seed: RNG seed of the sampled mode (each example draws from its own seeded generator, so a
            resumed cache equals an uninterrupted one).
        proposal_temperature: proposal of the sampled mode (1 = the teacher itself).
        overwrite: replace an existing cache that does not match instead of raising.
        extra: more JSON-serialisable facts to record (e.g. the command line).
    """

    def __init__(self, path: str | Path, *, mode: str, k: int, vocab_size: int, teacher: dict, tokenizer: dict,
                 value_dtype: str = "float16", shard_size: int = 1024, seed: int = 0,
                 proposal_temperature: float = 1.0, overwrite: bool = False, extra: dict | None = None):
        if mode not in MODES:
            raise ValueError(f"cache.mode must be one of {MODES}, got {mode!r}")
        if not 1 <= k <= vocab_size:
            raise ValueError(f"cache.k must be in [1, {vocab_size}] (the vocabulary size), got {k}")
        if value_dtype not in VALUE_DTYPES:
            raise ValueError(f"cache.value_dtype must be one of {sorted(VALUE_DTYPES)}, got {value_dtype!r}")
        if shard_size < 1:
            raise ValueError(f"cache.shard_size must be >= 1, got {shard_size}")
        if mode == "topk" and proposal_temperature != 1.0:
            raise ValueError("cache.proposal_temperature applies to cache.mode=sampled only; leave it at 1.0")
        self.path = Path(path)
        self.mode, self.k, self.vocab_size, self.value_dtype = mode, int(k), int(vocab_size), value_dtype
        self.shard_size, self.seed, self.proposal_temperature = int(shard_size), int(seed), float(proposal_temperature)
        settings = {"mode": mode, "k": self.k, "vocab_size": self.vocab_size, "value_dtype": value_dtype,
                    "id_dtype": "int32", "shard_size": self.shard_size, "seed": self.seed,
                    "proposal_temperature": self.proposal_temperature}
        manifest_path = self.path / MANIFEST
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            problems = diff_fields(old, settings, tuple(settings))
            if old.get("tokenizer", {}).get("vocab_sha256") != tokenizer["vocab_sha256"]:
                problems.append(f"tokenizer: cache {old.get('tokenizer', {}).get('name_or_path')!r} vs this run "
                                f"{tokenizer['name_or_path']!r} (different vocabularies)")
            if _teacher_key(old.get("teacher", {})) != _teacher_key(teacher):
                problems.append(f"teacher: cache {old.get('teacher', {}).get('name_or_path')!r} (weights "
                                f"{_weights_sha(old.get('teacher', {}))}) vs this run {teacher.get('name_or_path')!r} "
                                f"(weights {_weights_sha(teacher)})")
            if problems and not overwrite:
                raise CacheMismatchError(
                    f"cache.dir={self.path} already holds a cache written with other settings:\n  - "
                    + "\n  - ".join(problems) + "\nPick another cache.dir (or cache.name), or set "
                    "cache.overwrite=true to replace it.")
            if problems:
                log.warning("cache.overwrite=true: replacing %s (%s)", self.path, "; ".join(problems))
                self._clear()
                old = None
        else:
            old = None
        self.manifest: dict = old or {"format": FORMAT, "version": VERSION, **settings, "teacher": teacher,
                                      "tokenizer": tokenizer, "bytes_per_token": bytes_per_token(k, value_dtype),
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "splits": {}}
        if extra:
            self.manifest.setdefault("extra", {}).update(extra)
        self._selected: dict[str, list[int] | None] = {}
        self.path.mkdir(parents=True, exist_ok=True)
        self._save_manifest()

    def _clear(self) -> None:
        for p in self.path.glob("*.safetensors*"):
            p.unlink()
        (self.path / MANIFEST).unlink(missing_ok=True)

    def _save_manifest(self) -> None:
        _atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True))

    # -- splits
    def begin_split(self, split: str, data: dict, selection: dict | None = None, overwrite: bool = False) -> None:
        """Record (or check, on a rerun) the data fingerprint and example selection of ``split``.

        Args:
            data: :func:`data_fingerprint` of the split's examples.
            selection: ``{"kind": "all"}`` (default) or :func:`select_visited`'s record (with the
                ``indices`` to cache).
        """
        selection = dict(selection or {"kind": "all"})
        splits = self.manifest["splits"]
        entry = splits.get(split)
        if entry is not None:
            problems = diff_fields(entry["data"], data, DATA_KEYS)
            old_sel = {k: v for k, v in entry["selection"].items() if k != "count"}
            new_sel = {k: v for k, v in selection.items() if k not in ("indices", "count")}
            if old_sel != new_sel:
                problems.append(f"selection: cache {old_sel} vs this run {new_sel}")
            if problems and not overwrite:
                raise CacheMismatchError(
                    f"cache.dir={self.path}: split {split!r} was cached from other data:\n  - " + "\n  - ".join(problems)
                    + f"\n(cache: {entry['data'].get('source')} {entry['data'].get('source_fingerprint')}). Use the "
                    "same data overrides (and cache.max_steps) as the first run, another cache.dir, or "
                    "cache.overwrite=true.")
            if problems:
                for info in entry["shards"].values():
                    if info.get("file"):
                        (self.path / info["file"]).unlink(missing_ok=True)
                entry = None
        n = data["num_examples"]
        indices = selection.pop("indices", None)
        self._selected[split] = None if indices is None else sorted(set(int(i) for i in indices))
        if entry is None:
            selection["count"] = n if indices is None else len(self._selected[split])
            splits[split] = {"data": data, "selection": selection, "num_shards": math.ceil(n / self.shard_size),
                             "shards": {}, "complete": n == 0}
            self._save_manifest()

    def shard_examples(self, split: str, index: int) -> list[int]:
        """The example indices shard ``index`` of ``split`` holds."""
        n = self.manifest["splits"][split]["data"]["num_examples"]
        a, b = index * self.shard_size, min(n, (index + 1) * self.shard_size)
        chosen = self._selected.get(split)
        if chosen is None:
            return list(range(a, b))
        import bisect
        return chosen[bisect.bisect_left(chosen, a):bisect.bisect_left(chosen, b)]

    def num_shards(self, split: str) -> int:
        return self.manifest["splits"][split]["num_shards"]

    def has_shard(self, split: str, index: int) -> bool:
        info = self.manifest["splits"][split]["shards"].get(str(index))
        return info is not None and (info["file"] is None or (self.path / info["file"]).exists())

    def generator(self, split: str, example: int, device: torch.device | str = "cpu") -> torch.Generator:
        # One generator per (seed, split, example): an example's draws are the same whatever was
        # batched or written before it.
        g = torch.Generator(device=device)
        g.manual_seed(int(_sha256(f"{self.seed}/{split}/{example}".encode())[:15], 16))
        return g

    def encode(self, logits: torch.Tensor, generator: torch.Generator | None = None):
        return encode(logits, self.mode, self.k, generator, self.proposal_temperature)

    def write_shard(self, split: str, index: int, ids: torch.Tensor, values: torch.Tensor, tail: torch.Tensor,
                    lengths: list[int]) -> dict:
        """Write shard ``index`` of ``split`` (rows of :meth:`shard_examples`, in order) and list it."""
        entry = self.manifest["splits"][split]
        held = self.shard_examples(split, index)
        if len(lengths) != len(held):
            raise ValueError(f"shard {index} of {split} holds {len(held)} examples, got {len(lengths)} lengths")
        info: dict = {"file": None, "examples": len(held), "tokens": 0, "bytes": 0, "sha256": None}
        if held:
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
            offsets[1:] = torch.as_tensor(lengths, dtype=torch.int64).cumsum(0)
            if ids.shape != values.shape or ids.shape != (int(offsets[-1]), self.k) or tail.shape != (ids.shape[0],):
                raise ValueError(f"shard {index} of {split}: shapes ids {tuple(ids.shape)}, values "
                                 f"{tuple(values.shape)}, tail {tuple(tail.shape)} do not match {int(offsets[-1])} "
                                 f"tokens x k={self.k}")
            tensors = {"topk_ids": ids.to(ID_DTYPE).contiguous().cpu(),
                       "topk_logprobs": values.to(VALUE_DTYPES[self.value_dtype]).contiguous().cpu(),
                       "tail": tail.float().contiguous().cpu(),
                       "indices": torch.as_tensor(held, dtype=torch.int64), "offsets": offsets}
            name = shard_name(split, index)
            tmp = self.path / (name + ".tmp")
            # One metadata key: safetensors writes a metadata map in arbitrary order, and identical
            # shards should be identical files (a resumed cache byte-equals an uninterrupted one).
            meta = json.dumps({"split": split, "shard": index, "mode": self.mode, "k": self.k}, sort_keys=True)
            save_file(tensors, str(tmp), metadata={"distill_teacher_cache": meta})
            os.replace(tmp, self.path / name)  # the file exists complete or not at all ...
            info.update(file=name, tokens=int(offsets[-1]), bytes=(self.path / name).stat().st_size,
                        sha256=file_sha256(self.path / name))
        entry["shards"][str(index)] = info  # ... and is listed only once it does
        entry["complete"] = len(entry["shards"]) == entry["num_shards"]
        self._save_manifest()
        return info


class _IndexExamples(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": [int(i)], "labels": [int(i)]}


def select_visited(datamodule, max_steps: int) -> dict:
    """The training examples the first ``max_steps`` optimizer steps of a run will read.

    Iterates the batch sampler of the DataModule's own ``train_dataloader()`` (same seeded
    generator, shuffling and ``drop_last`` as the run, epoch after epoch), so a cache of just these
    examples serves a single-device run of up to ``max_steps`` steps. A run that reads an example
    outside it (more steps, another seed or batch size, several devices) gets a clear error.
    """
    if max_steps < 1:
        raise ValueError(f"cache.max_steps must be >= 1 or null (the whole split), got {max_steps}")
    # Iterate the real loader (not just its sampler: creating a DataLoader iterator draws a base
    # seed from the same generator first), over a stand-in dataset whose examples are their own
    # indices, so the order is the run's by construction.
    real = datamodule.train_set
    datamodule.train_set = _IndexExamples(len(real))
    try:
        loader = datamodule.train_dataloader()
        chosen: set[int] = set()
        steps = 0
        while steps < max_steps:
            before = steps
            for batch in loader:
                chosen.update(batch["input_ids"][:, 0].tolist())
                steps += 1
                if steps >= max_steps:
                    break
            if steps == before:
                raise ValueError("select_visited: the training loader yields no batches")
    finally:
        datamodule.train_set = real
    indices = sorted(chosen)
    return {"kind": "visited", "max_steps": int(max_steps), "batch_size": int(datamodule.batch_size),
            "seed": int(getattr(datamodule, "seed", 0)), "indices": indices,
            "indices_sha256": _sha256(np.asarray(indices, dtype=np.int64).tobytes())}


def _weights_sha(teacher: dict) -> str | None:
    w = teacher.get("weights") or {}
    return (w.get("sha256") or "")[:12] or None


def _teacher_key(teacher: dict) -> tuple:
    w = teacher.get("weights") or {}
    return teacher.get("config_sha256"), w.get("sha256")


# ----------------------------------------------------------------------------- the teacher pass
@dataclass
class PassStats:
    split: str
    examples: int
    tokens: int
    shards_written: int
    shards_skipped: int
    seconds: float


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
    parts: dict[tuple[int, int], list] = {(j, s): [] for s in todo for j in active[s]}
    lengths: dict[int, list[int]] = {s: [] for s in todo}
    left = {s: len(held[s]) for s in todo}

    def flush(s: int) -> None:
        for j in active[s]:
            rows = parts.pop((j, s))
            ids, values, tail = (torch.cat(x) for x in zip(*rows)) if rows else (None, None, None)
            writers[j].write_shard(split, s, ids, values, tail, lengths[s])

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
        for j, w in enumerate(writers):
            if not any(j in active[s] for s, _ in chunk):
                continue
            if w.mode == "sampled":
                # One generator per example: the draws do not depend on batching or on which shards
                # a rerun still has to write (a resumed cache equals an uninterrupted one).
                encoded = [w.encode(logits[starts[e]:starts[e + 1]], w.generator(split, i, logits.device))
                           for e, (_, i) in enumerate(chunk)]
            else:
                ids, values, tail = w.encode(logits)
                encoded = [(ids[starts[e]:starts[e + 1]], values[starts[e]:starts[e + 1]], tail[starts[e]:starts[e + 1]])
                           for e in range(len(chunk))]
            for (s, _), (ids, values, tail) in zip(chunk, encoded):
                if j in active[s]:
                    parts[(j, s)].append((ids.cpu(), values.to(VALUE_DTYPES[w.value_dtype]).cpu(), tail.cpu()))
        for (s, _), n in zip(chunk, lens):
            lengths[s].append(n)
            left[s] -= 1
            if not left[s]:
                flush(s)
        bar.update(int(mask.sum()))
        tokens += int(mask.sum())
    bar.close()
    return PassStats(split, len(queue), tokens, len(todo), skipped, time.time() - t0)


# ----------------------------------------------------------------------------- reader
class SplitReader:
    """Random access to the cached rows of one split: ``reader[i] -> (ids, values, tail)``.

    Returns the stored tensors bit for bit (``int32``, the value dtype, ``float32``). Shard files
    are memory-mapped lazily and per process (safe with DataLoader workers).
    """

    def __init__(self, path: Path, split: str, entry: dict, shard_size: int):
        self.path, self.split, self.entry, self.shard_size = path, split, entry, shard_size
        self.num_examples = entry["data"]["num_examples"]
        self.selection = entry.get("selection", {"kind": "all"})
        self._handles: dict[int, Any] = {}
        self._index: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.num_examples

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_index"] = {}, {}  # file handles do not pickle; reopened on use
        return state

    def _missing(self, i: int) -> KeyError:
        sel = self.selection
        if sel.get("kind") == "visited":
            why = (f"the cache holds only the {sel.get('count')} examples that the first {sel.get('max_steps')} "
                   f"steps read (cache.max_steps={sel.get('max_steps')}, batch size {sel.get('batch_size')}, data "
                   f"seed {sel.get('seed')}). Rerun distill-cache-logits with cache.max_steps >= trainer.max_steps "
                   "and this run's data.batch_size / data.seed, or cache.max_steps=null (the whole split; "
                   "needed on several devices)")
        else:
            why = "rerun distill-cache-logits with the same overrides to finish the cache"
        return KeyError(f"teacher cache {self.path}: example {i} of split {self.split!r} is not cached: {why}")

    def _shard(self, s: int):
        if s not in self._handles:
            info = self.entry["shards"].get(str(s))
            if info is None or info["file"] is None:
                return None
            h = safe_open(str(self.path / info["file"]), framework="pt")
            self._handles[s] = h
            self._index[s] = (h.get_tensor("indices"), h.get_tensor("offsets"))
        return self._handles[s], self._index[s]

    def __contains__(self, i: int) -> bool:
        try:
            self._locate(i)
            return True
        except KeyError:
            return False

    def _locate(self, i: int) -> tuple[Any, int, int]:
        if not 0 <= i < self.num_examples:
            raise IndexError(f"teacher cache {self.path}: example {i} out of range for split {self.split!r} "
                             f"({self.num_examples} examples)")
        shard = self._shard(i // self.shard_size)
        if shard is None:
            raise self._missing(i)
        h, (indices, offsets) = shard
        j = int(torch.searchsorted(indices, i))
        if j >= len(indices) or int(indices[j]) != i:
            raise self._missing(i)
        return h, int(offsets[j]), int(offsets[j + 1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, a, b = self._locate(i)
        return (h.get_slice("topk_ids")[a:b], h.get_slice("topk_logprobs")[a:b], h.get_slice("tail")[a:b])

    def shard_tensors(self, s: int) -> dict[str, torch.Tensor] | None:
        """Every field of shard ``s`` as stored (None for a shard that holds no example)."""
        shard = self._shard(s)
        return None if shard is None else {k: shard[0].get_tensor(k) for k in FIELDS}


class CacheReader:
    """Reads a cache folder written by :class:`CacheWriter`.

    Args:
        path: the cache folder (holding ``manifest.json``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.exists():
            raise FileNotFoundError(
                f"no teacher cache at {self.path} ({MANIFEST} is missing). Write it first with "
                "`distill-cache-logits` using the same data/student overrides as the training run (and "
                "cache.dir=<this folder> if it is not the default), or point teacher.path at an existing cache.")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise ValueError(f"{manifest}: not a distill teacher cache of version {VERSION} (format "
                             f"{self.manifest.get('format')!r}, version {self.manifest.get('version')!r}); rewrite it "
                             "with this version's distill-cache-logits")

    @property
    def mode(self) -> str:
        return self.manifest["mode"]

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def sampled(self) -> bool:
        return self.mode == "sampled"

    @property
    def splits(self) -> list[str]:
        return sorted(self.manifest["splits"])

    def split(self, split: str, require_complete: bool = True) -> SplitReader:
        entry = self.manifest["splits"].get(split)
        if entry is None:
            raise KeyError(f"teacher cache {self.path} has no split {split!r} (it has {self.splits}); cache it with "
                           f"distill-cache-logits cache.splits=[{split}]")
        if require_complete and not entry["complete"]:
            raise RuntimeError(f"teacher cache {self.path}: split {split!r} is incomplete ({len(entry['shards'])} of "
                               f"{entry['num_shards']} shards); rerun distill-cache-logits with the same overrides: "
                               "it resumes where it stopped")
        return SplitReader(self.path, split, entry, int(self.manifest["shard_size"]))

    def stored_bytes(self, split: str | None = None) -> tuple[int, int]:
        """``(bytes of shard files, tokens)`` over one split or all."""
        n_bytes = n_tok = 0
        for name, entry in self.manifest["splits"].items():
            if split is None or name == split:
                for info in entry["shards"].values():
                    n_bytes += info["bytes"]
                    n_tok += info["tokens"]
        return n_bytes, n_tok

    def verify(self) -> None:
        """Re-hash every shard file against the manifest (bit rot, partial copies)."""
        for name, entry in self.manifest["splits"].items():
            for info in entry["shards"].values():
                if info["file"] is None:
                    continue
                got = file_sha256(self.path / info["file"])
                if got != info["sha256"]:
                    raise CacheMismatchError(f"teacher cache {self.path}: {info['file']} is corrupt (sha256 {got[:12]} "
                                             f"!= manifest {info['sha256'][:12]}); delete it and rerun "
                                             "distill-cache-logits to rewrite that shard")

    # -- checks against a run
    def check_tokenizer(self, current: dict) -> None:
        rec = self.manifest["tokenizer"]
        if rec["vocab_sha256"] != current["vocab_sha256"] or rec["size"] != current["size"]:
            raise CacheMismatchError(
                f"teacher=cached: the cache at {self.path} was written with tokenizer {rec['name_or_path']!r} "
                f"({rec['size']} tokens, vocab {rec['vocab_sha256'][:12]}), but this run's tokenizer is "
                f"{current['name_or_path']!r} ({current['size']} tokens, vocab {current['vocab_sha256'][:12]}): the "
                "cached ids would mean other tokens. Use the student/tokenizer the cache was written for, or write a "
                "cache for this tokenizer (distill-cache-logits with this run's student=... override).")

    def check_data(self, split: str, current: dict) -> list[str]:
        """Differences between the cached and the run's data of ``split`` (empty when they match)."""
        rec = self.manifest["splits"][split]["data"]
        return diff_fields(rec, current, DATA_KEYS)

    def data_error(self, split: str, problems: list[str]) -> CacheMismatchError:
        rec = self.manifest["splits"][split]["data"]
        return CacheMismatchError(
            f"teacher=cached: the cache at {self.path} does not match this run's {split} data:\n  - "
            + "\n  - ".join(problems)
            + f"\nThe cache was written for {rec.get('source')} ({rec.get('source_fingerprint')}). Write a cache for "
            "this data with `distill-cache-logits` and the same data=/data.* overrides as this run, or point "
            "teacher.path at the cache of this data.")

    def check_teacher(self, current_weights: dict | None) -> None:
        rec = self.manifest["teacher"]
        w = rec.get("weights") or {}
        if current_weights is not None and w.get("kind") == current_weights.get("kind") \
                and w.get("sha256") != current_weights.get("sha256"):
            raise CacheMismatchError(
                f"teacher=cached: the teacher at {rec['name_or_path']} changed since the cache at {self.path} was "
                f"written (weights {w.get('sha256', '')[:12]} then, {current_weights.get('sha256', '')[:12]} now). "
                "Rewrite the cache (distill-cache-logits cache.overwrite=true) or restore that teacher.")
