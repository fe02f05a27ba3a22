"""Fingerprints: what a teacher cache was written from (teacher, tokenizer, data), to check a run.

The manifest records these; a writer resuming a cache and a reader serving a run compare them
with the run's own and raise :class:`CacheMismatchError` naming what differs, so cached rows
are never silently aligned to other tokens, other examples or another teacher.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from distill.config import ConfigError
from distill.data.vocab import tokenizer_fingerprint  # noqa: F401 (re-exported: the one definition)

# Hash every byte of local weight files up to this size; beyond it (multi-GB checkpoints) hash
# names, sizes and the first/last chunk of each file, so checking a cache never takes minutes.
FULL_HASH_LIMIT = 2 << 30
SAMPLE_CHUNK = 16 << 20


class CacheMismatchError(ConfigError):
    """The cache was written for another teacher, tokenizer or data than the run uses."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_sha(obj: Any) -> str:
    return sha256_hex(json.dumps(obj, sort_keys=True, default=str).encode())


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


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


def weights_sha(teacher: dict) -> str | None:
    """The first 12 hex digits of a teacher fingerprint's weights hash (for messages)."""
    w = teacher.get("weights") or {}
    return (w.get("sha256") or "")[:12] or None


def teacher_key(teacher: dict) -> tuple:
    """What decides that two teacher fingerprints are the same teacher: config and weights."""
    w = teacher.get("weights") or {}
    return teacher.get("config_sha256"), w.get("sha256")
