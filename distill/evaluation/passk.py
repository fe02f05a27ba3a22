"""pass@k: the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models
Trained on Code", section 2.1.

Why an estimator at all: drawing exactly ``k`` samples per task and checking whether any passes
has high variance. Instead we draw ``n >= k`` samples, count the ``c`` that pass, and compute the
probability that a random size-``k`` subset of those ``n`` contains at least one passing sample:

    pass@k = E_tasks[ 1 - C(n - c, k) / C(n, k) ]

``C(n - c, k) / C(n, k)`` is evaluated as the product ``prod_{i=n-c+1}^{n} (1 - k / i)``, which
never forms the huge binomials and is exact enough in float64 for any n a benchmark uses.
For k = 1 the formula reduces to ``c / n``, the plain fraction of passing samples.

Pure Python on purpose: no numpy or torch import, so tests and the report can use it anywhere.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task.

    Args:
        n: samples drawn for the task (n >= 1).
        c: samples among them that passed (0 <= c <= n).
        k: the k of pass@k (1 <= k <= n).

    Raises:
        ValueError: on counts that cannot come from a real evaluation; naming the bad argument
            matters because a silent clamp would publish a wrong number.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"pass_at_k: {name} must be an integer, got {value!r}")
    n, c, k = int(n), int(c), int(k)
    if n < 1:
        raise ValueError(f"pass_at_k: n must be >= 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be in [0, n={n}], got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}], got k={k} (draw more samples)")
    if n - c < k:
        # every size-k subset contains a passing sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_exact(n: int, c: int, k: int) -> float:
    """The closed form with exact integer binomials; slow for big n, used to check the fast one."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over tasks given ``(n, c)`` per task.

    Tasks may have different n (e.g. a resumed run); each must have n >= k.
    """
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("mean_pass_at_k: no tasks")
    return sum(values) / len(values)


def summarize_pass_at_k(counts: Sequence[tuple[int, int]], ks: Iterable[int]) -> dict[str, float]:
    """``{"pass@k": value}`` for every requested k that all tasks support (k <= min n).

    Ks above the smallest n are left out rather than raised on, so one config with
    ``ks: [1, 10, 100]`` works for greedy (n=1) and sampled runs alike; the caller logs what it
    dropped.
    """
    if not counts:
        return {}
    min_n = min(n for n, _ in counts)
    return {f"pass@{k}": mean_pass_at_k(counts, k) for k in sorted(set(ks)) if k <= min_n}


def per_task_pass_at_k(n: int, c: int, ks: Iterable[int]) -> Mapping[str, float]:
    """pass@k of one task for each k <= n; written to the per-task JSONL."""
    return {f"pass@{k}": pass_at_k(n, c, k) for k in sorted(set(ks)) if k <= n}
