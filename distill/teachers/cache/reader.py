"""Reading a cache folder: random access to one example's rows, and checks against a run.

``CacheReader(path).split("train")[i] -> (ids (L, W) int32, values (L, W), tail (L,) or None)``
for any readable format version (:mod:`~distill.teachers.cache.format`) and encoding
(:mod:`~distill.teachers.cache.codec`). Shard files are memory-mapped lazily and per process
(safe with DataLoader workers); a zstd-compressed example is one frame, decompressed on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open

from distill.teachers.cache import codec
from distill.teachers.cache.codec import Encoding
from distill.teachers.cache.fingerprint import DATA_KEYS, CacheMismatchError, diff_fields, file_sha256
from distill.teachers.cache.format import MANIFEST, V1_FIELDS, manifest_encoding, read_manifest

Row = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


class SplitReader:
    """Random access to the cached rows of one split: ``reader[i] -> (ids, values, tail)``.

    Version-1 shards and dense float encodings come back bit for bit as stored (values in their
    stored dtype); q8 and count encodings as float32 (see :func:`~distill.teachers.cache.codec.unpack`).
    """

    def __init__(self, path: Path, split: str, entry: dict, shard_size: int, encoding: Encoding, k: int,
                 version: int, has_next_logprob: bool = False):
        self.path, self.split, self.entry, self.shard_size = path, split, entry, shard_size
        #: whether shards hold ``next_logprob`` (see :meth:`next_logprob`)
        self.has_next_logprob = has_next_logprob
        self.encoding, self.k, self.version = encoding, k, version
        self.num_examples = entry["data"]["num_examples"]
        self.selection = entry.get("selection", {"kind": "all"})
        self._handles: dict[int, Any] = {}
        self._index: dict[int, dict[str, torch.Tensor]] = {}
        self._slices: dict[int, dict[str, Any]] = {}
        self._dctx = None

    def __len__(self) -> int:
        return self.num_examples

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_index"], state["_slices"], state["_dctx"] = {}, {}, {}, None  # reopened on use
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
            names = ["indices", "offsets"]
            if self.version >= 2 and self.encoding.compression == "zstd":
                names.append("frame_offsets")
            elif self.version >= 2 and self.encoding.layout == "ragged":
                names.append("entry_offsets")
            self._index[s] = {n: h.get_tensor(n) for n in names}
            if self.version >= 2 and self.encoding.compression == "none":
                # Slice handles are cheap to keep and cost a lookup to make: one per field.
                self._slices[s] = {name: h.get_slice(name) for name, _, _ in codec.frame_fields(self.encoding)}
        return self._handles[s], self._index[s]

    def __contains__(self, i: int) -> bool:
        try:
            self._locate(i)
            return True
        except KeyError:
            return False

    def _locate(self, i: int) -> tuple[Any, dict, int]:
        if not 0 <= i < self.num_examples:
            raise IndexError(f"teacher cache {self.path}: example {i} out of range for split {self.split!r} "
                             f"({self.num_examples} examples)")
        shard = self._shard(i // self.shard_size)
        if shard is None:
            raise self._missing(i)
        h, index = shard
        indices = index["indices"]
        j = int(torch.searchsorted(indices, i))
        if j >= len(indices) or int(indices[j]) != i:
            raise self._missing(i)
        return h, index, j

    def __getitem__(self, i: int) -> Row:
        h, index, j = self._locate(i)
        a, b = int(index["offsets"][j]), int(index["offsets"][j + 1])
        if self.version == 1:
            return h.get_slice("topk_ids")[a:b], h.get_slice("topk_logprobs")[a:b], h.get_slice("tail")[a:b]
        enc, length = self.encoding, b - a
        if enc.compression == "zstd":
            lo, hi = int(index["frame_offsets"][j]), int(index["frame_offsets"][j + 1])
            if self._dctx is None:
                self._dctx = codec.zstd().ZstdDecompressor()
            buf = torch.frombuffer(bytearray(self._dctx.decompress(h.get_slice("frames")[lo:hi].numpy().tobytes())),
                                   dtype=torch.uint8)
            widths = {name: w for name, w, _ in codec.frame_fields(enc)}
            cursor = [0]

            def get(name: str, nbytes: int) -> torch.Tensor:
                out = codec.unplanes(buf[cursor[0]:cursor[0] + nbytes], widths[name])
                cursor[0] += nbytes
                return out
        else:
            if enc.layout == "ragged":
                ea = int(index["entry_offsets"][j])
            else:
                ea = a * self.k
            starts = {name: (ea if per_entry else a) * w for name, w, per_entry in codec.frame_fields(enc)}
            slices = self._slices[i // self.shard_size]

            def get(name: str, nbytes: int) -> torch.Tensor:
                return slices[name][starts[name]:starts[name] + nbytes]
        return codec.unpack(get, enc, self.k, length)

    def next_logprob(self, i: int) -> torch.Tensor | None:
        """``(L,)`` float32: the teacher's log-prob of each position's next input token (NaN at the
        last position); None for a cache written before it was stored."""
        if not self.has_next_logprob:
            return None
        h, index, j = self._locate(i)
        a, b = int(index["offsets"][j]), int(index["offsets"][j + 1])
        return h.get_slice("next_logprob")[a:b]

    def examples(self) -> Iterator[tuple[int, Row]]:
        """``(index, row)`` of every cached example, in index order."""
        for s in range(self.entry["num_shards"]):
            shard = self._shard(s)
            if shard is not None:
                for i in shard[1]["indices"].tolist():
                    yield i, self[i]

    def shard_tensors(self, s: int) -> dict[str, torch.Tensor] | None:
        """Shard ``s`` decoded, in the version-1 field names (None for a shard that holds no example).

        ``topk_ids (T, W)``, ``topk_logprobs (T, W)`` (ragged rows padded to the shard's widest, as
        the collate pads), ``tail (T,)`` (NaN when the encoding stores no tail), ``indices``,
        ``offsets``.
        """
        shard = self._shard(s)
        if shard is None:
            return None
        h, index = shard
        if self.version == 1:
            return {k: h.get_tensor(k) for k in V1_FIELDS}
        rows = [self[i] for i in index["indices"].tolist()]
        width = max(r[0].shape[1] for r in rows)
        ids = torch.cat([torch.cat([r[0], r[0][:, :1].expand(-1, width - r[0].shape[1])], 1) for r in rows])
        values = torch.cat([torch.nn.functional.pad(r[1], (0, width - r[1].shape[1]), value=float("-inf")) for r in rows])
        tail = torch.cat([r[2] if r[2] is not None else torch.full((r[0].shape[0],), float("nan")) for r in rows])
        return {"topk_ids": ids, "topk_logprobs": values, "tail": tail, "indices": index["indices"],
                "offsets": index["offsets"]}


class CacheReader:
    """Reads a cache folder written by :class:`~distill.teachers.cache.writer.CacheWriter`.

    Args:
        path: the cache folder (holding ``manifest.json``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.exists():
            # A ConfigError: the apps print it as one clean line (rc 2), not a traceback.
            raise CacheMismatchError(
                f"no teacher cache at {self.path} ({MANIFEST} is missing). Write it first with "
                "`distill-cache-logits` using the same data/student overrides as the training run (and "
                "cache.dir=<this folder> if it is not the default), or point teacher.path at an existing cache.")
        self.manifest = read_manifest(manifest)
        self.encoding = manifest_encoding(self.manifest, manifest)
        self.version = int(self.manifest["version"])

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
        return SplitReader(self.path, split, entry, int(self.manifest["shard_size"]), self.encoding, self.k,
                           self.version, bool(self.manifest.get("next_logprob")))

    def stored_bytes(self, split: str | None = None) -> tuple[int, int]:
        """``(bytes of shard files, tokens)`` over one split or all."""
        n_bytes = n_tok = 0
        for name, entry in self.manifest["splits"].items():
            if split is None or name == split:
                for info in entry["shards"].values():
                    n_bytes += info["bytes"]
                    n_tok += info["tokens"]
        return n_bytes, n_tok

    def mean_entries(self, split: str | None = None) -> float:
        """Stored entries per token: ``k`` (dense), the mean number of distinct draws (ragged)."""
        if self.encoding.layout == "dense":
            return float(self.k)
        n_ent = n_tok = 0
        for name, entry in self.manifest["splits"].items():
            if split is None or name == split:
                for info in entry["shards"].values():
                    n_ent += info.get("entries", 0)
                    n_tok += info["tokens"]
        return n_ent / max(n_tok, 1)

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
