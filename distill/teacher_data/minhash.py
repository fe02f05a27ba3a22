"""Near-duplicate text detection: MinHash signatures with LSH banding, candidates verified by
exact Jaccard similarity.

Generic (word shingles of any text, no record format), so it lives apart from the filters that use
it for the ``near_duplicate`` reason. Reproducible across processes: shingles are hashed with
blake2b and the permutations drawn from a seeded generator.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import numpy as np

_MERSENNE = (1 << 31) - 1


def shingles(text: str, k: int = 5) -> set[int]:
    """The hashed ``k``-word shingles of ``text`` (lower-cased words; one empty shingle if none)."""
    words = re.findall(r"\w+", (text or "").lower())
    grams = [" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))] if words else [""]
    # blake2b, not hash(): Python salts str hashes per process, and the filter must be reproducible.
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") & _MERSENNE
            for g in grams}


class MinHashLSH:
    """An index of shingle sets: ``num_perm`` hash permutations in ``bands`` bands; two sets that share
    a band are compared exactly, and a Jaccard similarity of at least ``threshold`` is a duplicate."""

    def __init__(self, threshold: float = 0.9, num_perm: int = 64, bands: int = 16, seed: int = 1):
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be divisible by bands ({bands})")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _MERSENNE, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _MERSENNE, size=num_perm, dtype=np.uint64)
        self.threshold, self.bands, self.rows = threshold, bands, num_perm // bands
        self.buckets: dict[tuple, list[int]] = defaultdict(list)
        self.sets: list[set[int]] = []

    def signature(self, sh: set[int]) -> np.ndarray:
        x = np.fromiter(sh, dtype=np.uint64, count=len(sh))
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % _MERSENNE).min(axis=1)

    def add_if_new(self, sh: set[int]) -> int | None:
        """Index ``sh`` unless a near-duplicate is indexed already; returns that one's index."""
        sig = self.signature(sh)
        keys = [(i, sig[i * self.rows:(i + 1) * self.rows].tobytes()) for i in range(self.bands)]
        seen = set()
        for key in keys:
            for j in self.buckets.get(key, ()):
                if j in seen:
                    continue
                seen.add(j)
                other = self.sets[j]
                if len(sh & other) / max(1, len(sh | other)) >= self.threshold:
                    return j
        idx = len(self.sets)
        self.sets.append(sh)
        for key in keys:
            self.buckets[key].append(idx)
        return None
