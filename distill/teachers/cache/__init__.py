"""Offline teacher cache: run the frozen teacher once, store a sparse distribution per token.

One concept per module, in the order data flows through them:

* :mod:`.encoding`: full logits -> sparse rows (top-k, or importance-sampled ids with counts);
* :mod:`.codec`: rows <-> bytes (:class:`Encoding`: narrow ids, q8 values, counts, zstd);
* :mod:`.format`: the folder's names, format version and the manifest's encoding;
* :mod:`.fingerprint`: what the cache was written from (teacher, tokenizer, data);
* :mod:`.writer`: :class:`CacheWriter` (resumable shards) and :func:`select_visited`;
* :mod:`.teacher_pass`: :func:`cache_split`, one teacher forward feeding several writers;
* :mod:`.reader`: :class:`CacheReader` / :class:`SplitReader`, random access by example index;
* :mod:`.key`: the folder's name, keyed by what decides the rows (teacher identity, tokenizer, data,
  mode, k, max_steps), and finding the cache that serves a run;
* :mod:`.write`: :func:`~.write.write_cache`, the one write path of the CLI and of a cached
  teacher that writes on first use (``teacher=cached_auto``).

``distill-cache-logits`` (:mod:`distill.teachers.cache.cli`) writes a cache and ``teacher=cached``
(:mod:`distill.teachers.cached`) trains from it.
"""

from distill.teachers.cache.codec import CacheFormatError, Encoding
from distill.teachers.cache.encoding import (MODES, Rows, encode, log_weights_from_counts, sample_counts_from_logits,
                                             sample_from_logits, topk_from_logits)
from distill.teachers.cache.fingerprint import (DATA_KEYS, CacheMismatchError, data_fingerprint, diff_fields,
                                                file_sha256, state_dict_sha256, teacher_fingerprint,
                                                tokenizer_fingerprint, tokens_sha256, weights_fingerprint)
from distill.teachers.cache.format import FORMAT, MANIFEST, VERSION, manifest_encoding, shard_name
from distill.teachers.cache.reader import CacheReader, SplitReader
from distill.teachers.cache.teacher_pass import PassStats, cache_split
from distill.teachers.cache.writer import CacheWriter, select_visited

__all__ = [
    "CacheFormatError", "CacheMismatchError", "CacheReader", "CacheWriter", "DATA_KEYS", "Encoding", "FORMAT",
    "MANIFEST", "MODES", "PassStats", "Rows", "SplitReader", "VERSION", "cache_split", "data_fingerprint",
    "diff_fields", "encode", "file_sha256", "log_weights_from_counts", "manifest_encoding", "sample_counts_from_logits",
    "sample_from_logits", "select_visited", "shard_name", "state_dict_sha256", "teacher_fingerprint",
    "tokenizer_fingerprint", "tokens_sha256", "topk_from_logits", "weights_fingerprint",
]
