"""Writing a cache folder shard by shard (resumable), and choosing which examples it holds.

Rows are keyed by **example index** of the DataModule's (deterministic) split, one row per input
position, aligned with ``input_ids`` exactly as an online teacher's logits are. Shard ``s`` covers
indices ``[s * shard_size, (s + 1) * shard_size)``: all of them, or only those a run will visit
(:func:`select_visited`: the first ``max_steps`` batches of the DataModule's own training order),
which makes one cache pass cost what one online run spends on the teacher.

Resumable: each shard is written to a temporary file and renamed, then the manifest (also
replaced atomically) lists it; a rerun verifies the settings and fingerprints and skips finished
shards. The manifest records fingerprints of the teacher, the tokenizer and the data per split
(:mod:`~distill.teachers.cache.fingerprint`) and the :class:`~distill.teachers.cache.codec.Encoding`.

Besides the sparse rows, every shard of a cache created by this version holds ``next_logprob``
(float32, one per token): the teacher's exact log-prob of the *next input token*, whether or not it
is in the stored support (manifest ``"next_logprob": true``). Validation then reports the teacher's
held-out cross-entropy exactly from the cache (a top-k support alone cannot give it for a label
outside the top k), at 4 B/token. It is stored raw beside the codec's fields, never compressed.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from distill.teachers.cache import codec
from distill.teachers.cache.codec import Encoding
from distill.teachers.cache.encoding import MODES, Rows, encode
from distill.teachers.cache.fingerprint import (DATA_KEYS, CacheMismatchError, diff_fields, file_sha256,
                                                sha256_hex, teacher_key, weights_sha)
from distill.teachers.cache.format import FORMAT, MANIFEST, VERSION, shard_name

log = logging.getLogger(__name__)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CacheWriter:
    """Writes one cache folder shard by shard; safe to interrupt and rerun.

    Args:
        path: the cache folder.
        mode: ``"topk"`` or ``"sampled"``.
        k: entries per token (top-k), or draws per token (sampled).
        vocab_size: ids compared (the tokenizer's size; larger teacher heads are cut to it).
        teacher / tokenizer: fingerprints (:func:`~distill.teachers.cache.fingerprint.teacher_fingerprint`,
            :func:`~distill.teachers.cache.fingerprint.tokenizer_fingerprint`).
        encoding: an :class:`Encoding`, or a dict of its fields where ``"auto"`` (or a missing key)
            picks the smallest choice (:meth:`Encoding.resolve`). None: all ``auto``.
        shard_size: examples per shard file.
        seed: RNG seed of the sampled mode (each example draws from its own seeded generator, so a
            resumed cache equals an uninterrupted one).
        proposal_temperature: proposal of the sampled mode (1 = the teacher itself).
        overwrite: replace an existing cache that does not match instead of raising.
        extra: more JSON-serialisable facts to record (e.g. the command line).
    """

    def __init__(self, path: str | Path, *, mode: str, k: int, vocab_size: int, teacher: dict, tokenizer: dict,
                 encoding: Encoding | dict | None = None, shard_size: int = 1024, seed: int = 0,
                 proposal_temperature: float = 1.0, overwrite: bool = False, extra: dict | None = None):
        if mode not in MODES:
            raise ValueError(f"cache.mode must be one of {MODES}, got {mode!r}")
        if not 1 <= k <= vocab_size:
            raise ValueError(f"cache.k must be in [1, {vocab_size}] (the vocabulary size), got {k}")
        if shard_size < 1:
            raise ValueError(f"cache.shard_size must be >= 1, got {shard_size}")
        if mode == "topk" and proposal_temperature != 1.0:
            raise ValueError("cache.proposal_temperature applies to cache.mode=sampled only; leave it at 1.0")
        if not isinstance(encoding, Encoding):
            encoding = Encoding.resolve(mode, k, vocab_size, proposal_temperature, **dict(encoding or {}))
        else:
            encoding.check(mode, k, vocab_size, proposal_temperature)
        self.path, self.encoding = Path(path), encoding
        self.mode, self.k, self.vocab_size = mode, int(k), int(vocab_size)
        self.shard_size, self.seed, self.proposal_temperature = int(shard_size), int(seed), float(proposal_temperature)
        settings = {"mode": mode, "k": self.k, "vocab_size": self.vocab_size, "encoding": encoding.to_dict(),
                    "shard_size": self.shard_size, "seed": self.seed, "proposal_temperature": self.proposal_temperature,
                    "version": VERSION}
        manifest_path = self.path / MANIFEST
        old = None
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            problems = diff_fields(old, settings, tuple(settings))
            if old.get("tokenizer", {}).get("vocab_sha256") != tokenizer["vocab_sha256"]:
                problems.append(f"tokenizer: cache {old.get('tokenizer', {}).get('name_or_path')!r} vs this run "
                                f"{tokenizer['name_or_path']!r} (different vocabularies)")
            if teacher_key(old.get("teacher", {})) != teacher_key(teacher):
                problems.append(f"teacher: cache {old.get('teacher', {}).get('name_or_path')!r} (weights "
                                f"{weights_sha(old.get('teacher', {}))}) vs this run {teacher.get('name_or_path')!r} "
                                f"(weights {weights_sha(teacher)})")
            if problems and not overwrite:
                raise CacheMismatchError(
                    f"cache.dir={self.path} already holds a cache written with other settings:\n  - "
                    + "\n  - ".join(problems) + "\nPick another cache.dir (or cache.name), or set "
                    "cache.overwrite=true to replace it.")
            if problems:
                log.warning("cache.overwrite=true: replacing %s (%s)", self.path, "; ".join(problems))
                self._clear()
                old = None
        self.manifest: dict = old or {"format": FORMAT, **settings, "teacher": teacher, "tokenizer": tokenizer,
                                      "bytes_per_token": encoding.bytes_per_token(self.k), "next_logprob": True,
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "splits": {}}
        if extra:
            self.manifest.setdefault("extra", {}).update(extra)
        # A cache begun before next_logprob existed keeps its layout when resumed: all shards alike.
        self.stores_next_logprob = bool(self.manifest.get("next_logprob"))
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
            data: :func:`~distill.teachers.cache.fingerprint.data_fingerprint` of the split's examples.
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
        g.manual_seed(int(sha256_hex(f"{self.seed}/{split}/{example}".encode())[:15], 16))
        return g

    def encode(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> Rows:
        return encode(logits, self.mode, self.k, generator, self.proposal_temperature)

    def shard_tensors(self, rows: Rows, lengths: list[int], held: list[int]) -> dict[str, torch.Tensor]:
        """The tensors of one shard file: packed fields (or zstd frames), ``indices``, ``offsets``."""
        enc = self.encoding
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        offsets[1:] = torch.as_tensor(lengths, dtype=torch.int64).cumsum(0)
        fields, n = codec.pack(rows, enc, self.k)
        entry_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(n, 0)])[offsets]
        out = {"indices": torch.as_tensor(held, dtype=torch.int64), "offsets": offsets}
        if enc.compression == "none":
            out.update(fields)
            if enc.layout == "ragged":
                out["entry_offsets"] = entry_offsets
            return out
        cctx = codec.zstd().ZstdCompressor(level=enc.zstd_level)
        frames, sizes = [], [0]
        for j in range(len(lengths)):
            parts = []
            for name, width, per_entry in codec.frame_fields(enc):
                lo, hi = (entry_offsets if per_entry else offsets)[j:j + 2].tolist()
                parts.append(codec.planes(fields[name][lo * width:hi * width], width))
            frame = cctx.compress(torch.cat(parts).numpy().tobytes())
            frames.append(frame)
            sizes.append(len(frame))
        out["frames"] = torch.frombuffer(bytearray(b"".join(frames)), dtype=torch.uint8) if sum(sizes) else \
            torch.zeros(0, dtype=torch.uint8)
        out["frame_offsets"] = torch.as_tensor(np.cumsum(sizes), dtype=torch.int64)
        return out

    def write_shard(self, split: str, index: int, rows: Rows | None, lengths: list[int],
                    next_logprob: torch.Tensor | None = None) -> dict:
        """Write shard ``index`` of ``split`` (rows of :meth:`shard_examples`, in order) and list it.

        ``next_logprob``: ``(tokens,)`` the teacher's log-prob of each position's next input token
        (NaN at an example's last position); required when the manifest stores it.
        """
        entry = self.manifest["splits"][split]
        held = self.shard_examples(split, index)
        if len(lengths) != len(held):
            raise ValueError(f"shard {index} of {split} holds {len(held)} examples, got {len(lengths)} lengths")
        info: dict = {"file": None, "examples": len(held), "tokens": 0, "bytes": 0, "sha256": None}
        if held:
            total = int(sum(lengths))
            if rows is None or rows.ids.shape != (total, self.k) or rows.values.shape != rows.ids.shape \
                    or rows.tail.shape != (total,):
                got = None if rows is None else (tuple(rows.ids.shape), tuple(rows.values.shape), tuple(rows.tail.shape))
                raise ValueError(f"shard {index} of {split}: rows of shapes {got} do not match {total} tokens x "
                                 f"k={self.k}")
            tensors = {k: v.contiguous() for k, v in self.shard_tensors(rows.compact(), lengths, held).items()}
            if self.stores_next_logprob:
                if next_logprob is None or tuple(next_logprob.shape) != (total,):
                    raise ValueError(f"shard {index} of {split}: next_logprob of shape "
                                     f"{None if next_logprob is None else tuple(next_logprob.shape)}, expected ({total},)")
                tensors["next_logprob"] = next_logprob.detach().float().cpu().contiguous()
            name = shard_name(split, index)
            tmp = self.path / (name + ".tmp")
            # One metadata key: safetensors writes a metadata map in arbitrary order, and identical
            # shards should be identical files (a resumed cache byte-equals an uninterrupted one).
            meta = json.dumps({"split": split, "shard": index, "mode": self.mode, "k": self.k}, sort_keys=True)
            save_file(tensors, str(tmp), metadata={"distill_teacher_cache": meta})
            os.replace(tmp, self.path / name)  # the file exists complete or not at all ...
            info.update(file=name, tokens=total, bytes=(self.path / name).stat().st_size,
                        sha256=file_sha256(self.path / name))
            if self.encoding.layout == "ragged":
                info["entries"] = int(codec.entry_counts(rows, self.encoding, self.k).sum())
        entry["shards"][str(index)] = info  # ... and is listed only once it does
        entry["complete"] = len(entry["shards"]) == entry["num_shards"]
        self._save_manifest()
        return info


def select_visited(datamodule, max_steps: int) -> dict:
    """The training examples the first ``max_steps`` optimizer steps of a run will read.

    Takes the DataModule's own :meth:`~distill.data.datamodule.DistillDataModule.train_order`
    (same seeded generator, shuffling and ``drop_last`` as the run, epoch after epoch), so a cache
    of just these examples serves a single-device run of up to ``max_steps`` steps. A run that
    reads an example outside it (more steps, another seed or batch size, several devices) gets a
    clear error.
    """
    if max_steps < 1:
        raise ValueError(f"cache.max_steps must be >= 1 or null (the whole split), got {max_steps}")
    order = datamodule.train_order(max_steps)
    if not order:
        raise ValueError("select_visited: the training loader yields no batches")
    indices = sorted({i for batch in order for i in batch})
    return {"kind": "visited", "max_steps": int(max_steps), "batch_size": int(datamodule.batch_size),
            "seed": int(getattr(datamodule, "seed", 0)), "indices": indices,
            "indices_sha256": sha256_hex(np.asarray(indices, dtype=np.int64).tobytes())}
