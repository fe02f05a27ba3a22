"""The cache folder's format: names, version, and which encoding a manifest describes.

Layout of one cache folder (``distill-cache-logits`` writes it, ``teacher=cached`` reads it)::

    <cache>/manifest.json                 what was cached, from what, how it is encoded, which shards are done
    <cache>/<split>-00000.safetensors     one shard: examples [start, stop) of that split

Versions:

* **1** (until this release): dense ``topk_ids`` int32, ``topk_logprobs`` float16/bf16/fp32 and a
  float32 ``tail`` per token (388 B/token at ``k = 64``), no ``encoding`` record. Still read as is.
* **2**: the manifest's ``encoding`` (:class:`~distill.teachers.cache.codec.Encoding`) says how
  every field is stored; each field is a flat uint8 tensor (``codec`` packs and unpacks them), or,
  with zstd, one compressed frame per example (``frames``, ``frame_offsets``). Every shard also
  holds ``indices`` (the example indices, sorted) and ``offsets`` (token rows of each example),
  plus ``entry_offsets`` for the ragged layout.

A manifest of another format, a newer version or an unknown encoding is a
:class:`~distill.teachers.cache.codec.CacheFormatError` that names the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.teachers.cache.codec import CacheFormatError, Encoding

FORMAT = "distill-teacher-cache"
VERSION = 2
MANIFEST = "manifest.json"
V1_FIELDS = ("topk_ids", "topk_logprobs", "tail", "indices", "offsets")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


def manifest_encoding(manifest: dict, where: str | Path = MANIFEST) -> Encoding:
    """The :class:`Encoding` of a manifest of any readable version (version 1: the legacy layout)."""
    if manifest.get("format") != FORMAT:
        raise CacheFormatError(f"{where}: not a distill teacher cache (format {manifest.get('format')!r}, expected "
                               f"{FORMAT!r}); point teacher.path at a folder written by distill-cache-logits")
    version = manifest.get("version")
    if version == 1:
        return Encoding.legacy(manifest.get("value_dtype", "float16"))
    if version == VERSION:
        if "encoding" not in manifest:
            raise CacheFormatError(f"{where}: a version-{VERSION} cache without an encoding record (a partial or "
                                   "hand-edited manifest); rewrite it with distill-cache-logits cache.overwrite=true")
        return Encoding.from_dict(manifest["encoding"], where=str(where))
    raise CacheFormatError(
        f"{where}: teacher cache format version {version!r}; this distill reads versions 1 and {VERSION}. "
        + ("It was written by a newer distill: upgrade distill, or rewrite the cache with this one "
           if isinstance(version, int) and version > VERSION else "Rewrite the cache ")
        + "(distill-cache-logits with the cache's overrides and cache.overwrite=true).")


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheFormatError(f"{path}: not valid JSON ({e}); the cache folder is damaged: rewrite it with "
                               "distill-cache-logits cache.overwrite=true") from e
