"""Weighted mixes for prompt sets: normalised weights, seeded draws and exact quotas."""

from __future__ import annotations

import random
from typing import Any, Iterable, Mapping


def weights(spec: Any, universe: Iterable[str], what: str) -> dict[str, float]:
    """Normalise a proportions spec: a mapping name->weight, or a list (equal weights)."""
    universe = tuple(universe)
    if spec is None:
        spec = {k: 1.0 for k in universe}
    elif isinstance(spec, (list, tuple)):
        spec = {k: 1.0 for k in spec}
    spec = {str(k): float(v) for k, v in dict(spec).items()}
    unknown = sorted(set(spec) - set(universe))
    if unknown:
        raise ValueError(f"prompts.{what}: unknown {unknown}; choose from {list(universe)}")
    if any(v < 0 for v in spec.values()) or sum(spec.values()) <= 0:
        raise ValueError(f"prompts.{what}: weights must be >= 0 and not all zero, got {spec}")
    return {k: v for k, v in spec.items() if v > 0}


def pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    keys = sorted(weights)  # sorted: the draw must not depend on dict order from the config
    return rng.choices(keys, weights=[weights[k] for k in keys], k=1)[0]


def quota(n: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split n into integer counts proportional to weights (largest remainder), so small sets
    still get the configured mix instead of whatever a random draw happens to give."""
    total = sum(weights.values())
    raw = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts

