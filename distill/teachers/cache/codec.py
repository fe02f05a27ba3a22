"""The bytes of a teacher cache: which fields a token's sparse row is stored as, and how.

An :class:`Encoding` (recorded in the manifest) names, independently:

* ``layout``: ``dense``, ``K`` entries per token; or ``ragged``, only each token's distinct entries
  (a sampled row of ``K = 64`` draws holds about 29 distinct ids on the default teacher), with a
  uint8 entry count ``n`` per token.
* ``ids``: the narrowest width the vocabulary needs: ``uint16`` up to 65,536 ids, ``uint24``
  (3 bytes, packed little-endian) up to 16.7M, ``int32`` (the version-1 width).
* ``values``:
  - ``float16`` / ``bfloat16`` / ``float32``: the log-probs (top-k) or log-weights (sampled) as is;
  - ``q8`` (top-k): 8-bit codes of each entry's log-prob relative to the token's top-1,
    ``lp_k = lp_1 - code_k * step`` with a per-token float16 ``step = (lp_1 - lp_K) / 255``
    (rounded up); the reader makes the head sum to ``1 - tail``, so ``lp_1`` itself is not
    stored. Error: ``|lp_hat - lp| <= step + |log(1 - tail_hat) - log(1 - tail)|``, i.e. at most
    ``(lp_1 - lp_K) / 255`` plus the float16 rounding of the tail (see :func:`q8_error_bound`);
  - ``counts`` (sampled with the teacher as proposal): the uint8 draw counts; the weights are
    ``count / K`` (:func:`~distill.teachers.cache.encoding.log_weights_from_counts`), exact.
* ``tail``: ``float32``, ``float16`` or ``none`` (a sampled cache's tail is only a diagnostic).
* ``compression``: ``none``, or ``zstd``: each example's fields become one zstd frame (so an
  example is still read on its own), multi-byte fields split into byte planes first (high bytes
  of ids are mostly equal, which zstd then finds).

Fields of one token, in stored order (per-token fields first, then the entries)::

    n      uint8          ragged only: entries of this token (1..K)
    step   float16        q8 only
    tail   float16/32     unless tail=none
    ids    2/3/4 B each   K (dense) or n (ragged) entries
    values 1/2/4 B each   ditto (q8 codes, counts, or floats)

Pure functions of tensors; no files here (see :mod:`~distill.teachers.cache.writer` and
:mod:`~distill.teachers.cache.reader`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from distill.teachers.cache.encoding import Rows, log_weights_from_counts
from distill.config import ConfigError

LAYOUTS = ("dense", "ragged")
ID_WIDTHS = {"uint16": 2, "uint24": 3, "int32": 4}
ID_LIMITS = {"uint16": 1 << 16, "uint24": 1 << 24, "int32": 1 << 31}
FLOATS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
VALUES = (*FLOATS, "q8", "counts")
TAILS = ("float32", "float16", "none")
COMPRESSIONS = ("none", "zstd")
MAX_COUNT = 255  # uint8 counts and entry numbers: k <= 255 for counts and the ragged layout
Q8_LEVELS = 255


class CacheFormatError(ConfigError):
    """A manifest names an encoding (or version) this distill cannot read."""


def _value_width(values: str) -> int:
    return 1 if values in ("q8", "counts") else FLOATS[values].itemsize


@dataclass(frozen=True)
class Encoding:
    """How a cache's rows are stored (see the module docstring); recorded in the manifest."""

    layout: str = "dense"
    ids: str = "int32"
    values: str = "float16"
    tail: str = "float32"
    compression: str = "none"
    zstd_level: int = 3

    # -- construction and checks
    @classmethod
    def legacy(cls, value_dtype: str = "float16") -> "Encoding":
        """The version-1 layout: dense int32 ids, float values, float32 tail (388 B/token at k=64)."""
        return cls("dense", "int32", value_dtype, "float32", "none")

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "Encoding":
        """The encoding a manifest records; an unknown one is a :class:`CacheFormatError`."""
        known = {"layout": LAYOUTS, "ids": tuple(ID_WIDTHS), "values": VALUES, "tail": TAILS,
                 "compression": COMPRESSIONS}
        extra = sorted(set(d) - set(known) - {"zstd_level"})
        wrong = [f"{key}={d.get(key)!r} (known: {', '.join(choices)})" for key, choices in known.items()
                 if d.get(key) not in choices]
        if extra:
            wrong.append(f"unknown fields {extra}")
        if wrong:
            raise CacheFormatError(
                f"{where}: the cache's encoding is not one this distill can read: " + "; ".join(wrong)
                + ". It was written by another version of distill: read it with that version, or rewrite it with "
                "this one (distill-cache-logits with the cache's overrides and cache.overwrite=true).")
        return cls(**{k: d[k] for k in known}, zstd_level=int(d.get("zstd_level", 3)))

    @classmethod
    def resolve(cls, mode: str, k: int, vocab_size: int, proposal_temperature: float = 1.0, *,
                layout: str = "auto", ids: str = "auto", values: str = "auto", tail: str = "auto",
                compression: str = "none", zstd_level: int = 3) -> "Encoding":
        """Fill ``auto`` fields with the smallest lossless-or-bounded choice for this cache.

        Defaults: ids in the narrowest width; sampled with the teacher as proposal: ragged counts,
        no tail; other sampled: ragged float16 log-weights; top-k: dense q8 values, float16 tail.
        """
        counts_ok = mode == "sampled" and proposal_temperature == 1.0 and k <= MAX_COUNT
        if layout == "auto":
            layout = "ragged" if mode == "sampled" and k <= MAX_COUNT else "dense"
        if ids == "auto":
            ids = next(name for name in ID_WIDTHS if vocab_size <= ID_LIMITS[name])
        if values == "auto":
            values = "counts" if counts_ok else ("q8" if mode == "topk" else "float16")
        if tail == "auto":
            tail = "none" if mode == "sampled" else "float16"
        enc = cls.from_dict({"layout": layout, "ids": ids, "values": values, "tail": tail, "compression": compression,
                             "zstd_level": zstd_level}, where="cache.encoding")
        enc.check(mode, k, vocab_size, proposal_temperature)
        return enc

    def check(self, mode: str, k: int, vocab_size: int, proposal_temperature: float = 1.0) -> None:
        """Raise ``ValueError`` naming the ``cache.encoding`` key when this encoding cannot hold the cache."""
        if vocab_size > ID_LIMITS[self.ids]:
            raise ValueError(f"cache.encoding.ids={self.ids} holds ids below {ID_LIMITS[self.ids]}, but the vocabulary "
                             f"has {vocab_size}: use ids=auto")
        if self.values == "counts" and not (mode == "sampled" and proposal_temperature == 1.0):
            raise ValueError("cache.encoding.values=counts stores draw counts, which are the weights only for "
                             "cache.mode=sampled with cache.proposal_temperature=1; use values=float16 otherwise")
        if self.values == "q8" and mode != "topk":
            raise ValueError("cache.encoding.values=q8 quantises top-k log-probs relative to the top-1; a sampled "
                             "cache uses values=counts (teacher proposal) or float16")
        if self.tail == "none" and mode == "topk":
            raise ValueError("cache.encoding.tail=none: a top-k cache needs its tail mass (the reader makes the head "
                             "sum to 1 - tail); use tail=float16 or float32")
        if self.layout == "ragged" and mode != "sampled":
            raise ValueError("cache.encoding.layout=ragged stores each token's distinct sampled ids; top-k rows always "
                             "hold k ids: use layout=dense")
        if (self.layout == "ragged" or self.values == "counts") and k > MAX_COUNT:
            raise ValueError(f"cache.encoding: layout=ragged and values=counts store uint8 numbers, so cache.k must "
                             f"be <= {MAX_COUNT}, got {k}; use layout=dense values=float16")
        if self.compression == "zstd":
            zstd()  # fail now, not after the teacher pass

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        s = f"{self.layout} {self.ids} ids, {self.values} values, {self.tail} tail"
        return s + (f", zstd-{self.zstd_level}" if self.compression == "zstd" else "")

    # -- layout
    def token_fields(self) -> list[tuple[str, int]]:
        """``(name, bytes)`` of the fields stored once per token, in order."""
        out = [("n", 1)] if self.layout == "ragged" else []
        if self.values == "q8":
            out.append(("step", 2))
        if self.tail != "none":
            out.append(("tail", FLOATS[self.tail].itemsize))
        return out

    def entry_fields(self) -> list[tuple[str, int]]:
        """``(name, bytes)`` of the fields stored once per entry, in order."""
        return [("ids", ID_WIDTHS[self.ids]), ("values", _value_width(self.values))]

    def bytes_per_token(self, k: int, entries: float | None = None) -> float:
        """Exact stored bytes per token, before compression and without the per-example offsets.

        ``entries``: mean stored entries per token; ``k`` for the dense layout, the mean number of
        distinct draws for the ragged one (``k``, the upper bound, when not given).
        """
        n = k if self.layout == "dense" or entries is None else entries
        return sum(w for _, w in self.token_fields()) + n * sum(w for _, w in self.entry_fields())


# ----------------------------------------------------------------------------- ids
def pack_ids(ids: torch.Tensor, width: int) -> torch.Tensor:
    """Ids (any int dtype, values in ``[0, 2^(8 width))``) -> ``width`` little-endian bytes each, uint8 flat."""
    x = ids.reshape(-1).to(torch.int64)
    if width == 4:
        return x.to(torch.int32).view(torch.uint8)
    return torch.stack([(x >> (8 * b)) & 0xFF for b in range(width)], dim=-1).to(torch.uint8).reshape(-1)


def unpack_ids(data: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_ids`: flat uint8 -> int32 ids."""
    if width == 4:
        return _view(data, torch.int32)
    if width == 2:
        return _view(data, torch.int16).to(torch.int32) & 0xFFFF
    b = data.reshape(-1, width).to(torch.int32)
    out = b[:, 0].clone()
    for i in range(1, width):
        out |= b[:, i] << (8 * i)
    return out


def _view(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    data = data.reshape(-1)
    if data.storage_offset() % dtype.itemsize:
        data = data.clone()  # a view needs aligned storage
    return data.view(dtype)


def _floats(x: torch.Tensor, name: str) -> torch.Tensor:
    return x.to(FLOATS[name]).reshape(-1).contiguous().view(torch.uint8)


# ----------------------------------------------------------------------------- q8
def q8_encode(logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k log-probs ``(n, K)`` (most likely first) -> ``(codes (n, K) uint8, step (n,) float16)``.

    ``lp_k ~ lp_1 - code_k * step``; ``step`` is ``(lp_1 - lp_K) / 255`` rounded *up* to float16,
    so every code fits in 255 and rounding to the nearest code errs by at most ``step / 2``.
    """
    lp = logprobs.float()
    rel = (lp[:, :1] - lp).clamp_min(0.0)  # >= 0; the top-1 is code 0
    step = (rel.amax(-1) / Q8_LEVELS).clamp_min(2.0 ** -14)  # a floor keeps float16 normal
    s16 = step.to(torch.float16)
    low = s16.float() < step
    s16[low] = torch.nextafter(s16[low], torch.full_like(s16[low], math.inf))
    codes = torch.round(rel / s16.float().unsqueeze(-1)).clamp_(0, Q8_LEVELS).to(torch.uint8)
    return codes, s16


def q8_decode(codes: torch.Tensor, step: torch.Tensor, tail: torch.Tensor | None) -> torch.Tensor:
    """Absolute float32 log-probs from q8 codes: the head, renormalised to ``1 - tail``."""
    rel = -(codes.float() * step.float().unsqueeze(-1))
    head = torch.logsumexp(rel, dim=-1, keepdim=True)
    lp = rel - head
    if tail is not None:
        lp = lp + torch.log1p(-tail.float().clamp(0.0, 1.0 - 1e-7)).unsqueeze(-1)
    return lp


def q8_error_bound(logprobs: torch.Tensor, tail: torch.Tensor | None = None,
                   tail_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Per-token bound on ``|lp_hat - lp|`` of a q8 round trip (``(n,)``): ``step`` from the codes' rounding
    (``step / 2`` on each entry and on the log-sum-exp), plus the stored tail's rounding."""
    lp = logprobs.float()
    step = ((lp[:, 0] - lp[:, -1]).clamp_min(0) / Q8_LEVELS).clamp_min(2.0 ** -14) * (1 + 2.0 ** -10)
    if tail is None:
        return step
    t = tail.float().clamp(0.0, 1.0 - 1e-7)
    t_hat = t.to(tail_dtype).float().clamp(0.0, 1.0 - 1e-7)
    return step + (torch.log1p(-t_hat) - torch.log1p(-t)).abs() + 1e-6


# ----------------------------------------------------------------------------- rows <-> fields
def entry_counts(rows: Rows, enc: Encoding, k: int) -> torch.Tensor:
    """Stored entries per token ``(n,)`` int64: ``k`` (dense), or the number of distinct draws (ragged)."""
    if enc.layout == "dense":
        return torch.full((len(rows),), k, dtype=torch.int64)
    if rows.counts is not None:
        return (rows.counts > 0).sum(-1)
    return torch.isfinite(rows.values).sum(-1)  # padding slots have log-weight -inf


def pack(rows: Rows, enc: Encoding, k: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Rows of ``n`` tokens -> ``({field: flat uint8 bytes}, entries per token (n,))``, fields in stored order."""
    n = entry_counts(rows, enc, k)
    if enc.layout == "ragged":
        keep = torch.arange(rows.ids.shape[1]).unsqueeze(0) < n.unsqueeze(1)  # distinct entries come first
        ids, values = rows.ids[keep], rows.values[keep]
        counts = None if rows.counts is None else rows.counts[keep]
    else:
        ids, values, counts = rows.ids, rows.values, rows.counts
    out: dict[str, torch.Tensor] = {}
    if enc.layout == "ragged":
        out["n"] = n.to(torch.uint8)
    if enc.values == "q8":
        codes, step = q8_encode(values)
        out["step"] = _floats(step, "float16")
    if enc.tail != "none":
        out["tail"] = _floats(rows.tail, enc.tail)
    out["ids"] = pack_ids(ids, ID_WIDTHS[enc.ids])
    if enc.values == "q8":
        out["values"] = codes.reshape(-1)
    elif enc.values == "counts":
        if counts is None:
            raise ValueError("values=counts needs the draw counts (Rows.counts) of a sampled cache")
        out["values"] = counts.reshape(-1).to(torch.uint8)
    else:
        out["values"] = _floats(values, enc.values)
    return out, n


def unpack(get: Callable[[str, int], torch.Tensor], enc: Encoding, k: int, length: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One example's fields -> ``(ids (L, W) int32, values (L, W), tail (L,) float32 or None)``.

    ``get(name, nbytes)`` returns the next ``nbytes`` of field ``name`` (the fields are read in
    stored order). ``W = k`` for the dense layout, the example's largest entry count for the ragged
    one (its padding slots repeat the token's first id with value ``-inf``, weight 0, as
    :func:`~distill.teachers.cache.encoding.sample_from_logits` pads). Dense float values come back
    in their stored dtype; q8 and counts as float32 log-probs / log-weights; ``tail`` is None when
    the encoding stores none.
    """
    n = get("n", length).to(torch.int64) if enc.layout == "ragged" else None
    step = _view(get("step", 2 * length), torch.float16) if enc.values == "q8" else None
    tail = None
    if enc.tail != "none":
        tail = _view(get("tail", FLOATS[enc.tail].itemsize * length), FLOATS[enc.tail]).float()
    entries = int(n.sum()) if n is not None else length * k
    ids = unpack_ids(get("ids", ID_WIDTHS[enc.ids] * entries), ID_WIDTHS[enc.ids])
    raw = get("values", _value_width(enc.values) * entries)
    if enc.values == "q8":
        values = q8_decode(raw.reshape(length, k), step, tail)
    elif enc.values == "counts":
        values = log_weights_from_counts(raw.float(), k)
    else:
        values = _view(raw, FLOATS[enc.values])
    if n is None:
        return ids.reshape(length, k), values.reshape(length, k), tail
    # Entries are stored token by token, so a row-major boolean mask over (L, W) lists the slots
    # in stored order: one masked assignment places them all (in numpy: a fraction of torch's
    # per-op cost on these small arrays, which matters at 16 examples per step).
    bf16 = values.dtype == torch.bfloat16  # numpy has no bfloat16: place as float32 (exact), cast back
    n_np, ids_np, values_np = n.numpy(), ids.numpy(), (values.float() if bf16 else values).numpy()
    width = int(n_np.max()) if length else 1
    keep = np.arange(width)[None, :] < n_np[:, None]
    dense_ids = np.repeat(ids_np[np.cumsum(n_np) - n_np][:, None], width, axis=1)  # padding repeats the first id
    dense_ids[keep] = ids_np
    dense_values = np.full((length, width), -np.inf, dtype=values_np.dtype)
    dense_values[keep] = values_np
    dense_ids, dense_values = torch.from_numpy(dense_ids), torch.from_numpy(dense_values)
    if bf16:
        dense_values = dense_values.to(torch.bfloat16)
    return dense_ids, dense_values, tail


# ----------------------------------------------------------------------------- compression
def zstd():
    """The ``zstandard`` module, or an error naming the extra that installs it."""
    try:
        import zstandard
    except ImportError as e:
        raise ImportError("cache.encoding.compression=zstd needs the zstandard package: pip install "
                          "'distill[cache]' (or pip install zstandard), or use compression=none") from e
    return zstandard


def planes(data: torch.Tensor, width: int) -> torch.Tensor:
    """Split ``width``-byte values into byte planes (all first bytes, then all second bytes, ...)."""
    return data if width == 1 else data.reshape(-1, width).t().contiguous().reshape(-1)


def unplanes(data: torch.Tensor, width: int) -> torch.Tensor:
    return data if width == 1 else data.reshape(width, -1).t().contiguous().reshape(-1)


def frame_fields(enc: Encoding) -> list[tuple[str, int, bool]]:
    """``(name, bytes per item, per entry?)`` of every field in stored order."""
    return [(n, w, False) for n, w in enc.token_fields()] + [(n, w, True) for n, w in enc.entry_fields()]
