"""Distillation from a sparse teacher: top-k caches with a tail bucket, and sampled caches.

An offline cache cannot store ``V``-wide teacher distributions (152k floats per token), so it
stores ``K`` entries per token (:class:`~distill.types.TeacherOutput` ``kind ==
"sparse"``): ``topk_ids (..., K)`` int and ``topk_logprobs (..., K)``. Two kinds of cache exist.

**Top-k** (``sampled=False``). ``topk_logprobs`` are the teacher's log-probabilities at ``T = 1``
on its ``K`` most likely ids (unique per token). Renormalising them over the support alone
over-confidently drops the rest of the distribution; instead the mass the cache does not list
becomes one extra **tail bucket**, so the teacher is the ``K + 1``-bucket distribution::

    P_k = exp(topk_logprobs_k),      P_tail = 1 - sum_k P_k          (clamped at 0)

and the student is coarse-grained onto the same buckets (over the *full* vocabulary softmax)::

    Q_k = q(i_k),                    Q_tail = sum_{v not in support} q(v) = 1 - sum_k Q_k

Any divergence is then taken between these two bucket distributions; by the data-processing
inequality it is a lower bound of the full-vocabulary divergence, exact when ``K = V`` (no tail
bucket at all then) and tight when the tail is small. The forward-KL gradient w.r.t. the student
logits ``s`` (derived in :func:`sparse_forward_kl_kernel`) is::

    dKL/ds_j = ( q_j - P_{k(j)} [j in support] - [j not in support] q_j P_tail / Q_tail ) / T

**Temperature on a top-k cache.** The cache holds ``p`` at ``T = 1`` and cannot recover the
individual tail probabilities, so ``p^{1/T}`` is renormalised over the ``K + 1`` buckets, with the
tail bucket treated as *one* pseudo-token of mass ``P_tail``: ``P^T_b = P_b^{1/T} / sum_b'
P_b'^{1/T}``. This is exact for ``T = 1`` and for ``K = V``; for ``T > 1`` it under-weights the
tail (``x -> x^{1/T}`` is concave, so a tail spread over many ids would gain more mass than one
pseudo-token does). The student side is exact: ``q = softmax(s / T)`` over the full vocabulary,
then bucketed.

**Sampled** (``sampled=True``; "random-sampling KD", Anshumann et al., ACL 2025, "Sparse Logit
Sampling: Accelerating Knowledge Distillation in LLMs"). The cache writer draws ``K`` ids i.i.d.
from a proposal ``r`` (by default the teacher ``p`` itself) and stores, per distinct drawn id,
the importance weight ``w_v = (count_v / K) * p(v) / r(v)`` (``topk_logprobs`` hold ``log w``;
unused slots have weight 0, i.e. ``log w = -inf``). Since ``E[w_v] = p(v)``, the sparse
cross-entropy ``-sum_k w_k log q(i_k)`` has gradient ``q * sum_k w_k - scatter(w)`` whose
expectation is exactly the full forward-KL gradient ``q - p``: the estimator is **unbiased**,
unlike top-k, which is biased towards the head. With ``r = p`` the weights are ``count / K`` and
sum to 1. **Temperature must be 1 for a sampled cache**: the weights estimate ``p`` linearly and
``p^{1/T}`` is not linear in ``p``, so no unbiased tempered target exists; the loss raises
otherwise (sample a cache from ``softmax(z / T)`` instead if a tempered target is wanted). The
reported value ``sum_k w_k (log w_k - log q(i_k))`` is a diagnostic (an unbiased cross-entropy
minus a plug-in entropy); only its gradient is unbiased. Sampled caches support forward KL only:
reverse KL and JSD need ``p`` where the *student* puts mass, which a sample cannot give.

Functions here are plain autograd, per token (``(...)`` values, like :mod:`functional`), plus
the per-chunk kernels used by :mod:`distill.losses.chunked` and :mod:`distill.losses.fused`.
"""

from __future__ import annotations

import math

import torch

from distill.losses import functional as LF
from distill.losses.kernels import FMIN as _FMIN  # one copy of the float32 floor (kernels.py)
from distill.losses.kernels import log_softmax_ as _log_softmax_
from distill.types import TeacherOutput

# Reverse KL puts teacher log-probabilities in the denominator: a tail bucket the teacher gives
# (numerically) zero mass would make the divergence infinite. Teacher buckets are floored here.
REVERSE_KL_MIN_LOG_PROB = math.log(1e-12)


# ----------------------------------------------------------------------------- bucket distributions
def _has_tail(topk_ids: torch.Tensor, vocab_size: int) -> bool:
    # Top-k ids are unique per token, so the support covers the vocabulary iff K >= V.
    return topk_ids.shape[-1] < vocab_size


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate near 0 (Maechler, 2012)."""
    x = x.clamp_max(0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def teacher_bucket_log_probs(topk_logprobs: torch.Tensor, temperature: float = 1.0, with_tail: bool = True,
                             tail: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher log-probabilities on the ``K`` support buckets (+ the tail bucket), at ``T``.

    Args:
        topk_logprobs: ``(..., K)`` log-probabilities at ``T = 1`` on the support.
        temperature: buckets are tempered as ``P_b^{1/T}`` and renormalised over the
            ``K (+1)`` buckets (the tail is one pseudo-token; see the module docstring).
        with_tail: False when the support covers the vocabulary (``K = V``).
        tail: ``(...)`` the teacher's mass outside the support when the cache stores it (computed
            in float64 from the full logits it is exact even for tiny tails, where
            ``1 - sum exp(topk_logprobs)`` of float16-rounded values is not). None: derived.

    Returns:
        ``(..., K + 1)`` (or ``(..., K)``) in at least float32 (a float64 support stays float64, so
        a float64 check of the buckets is not limited by float32 rounding), normalised in log
        space, ``-inf`` clamped to the float32 minimum so ``0 * log 0`` terms stay finite.
    """
    lp = LF.upcast(topk_logprobs)
    if with_tail:
        if tail is None:
            log_tail = _log1mexp(torch.logsumexp(lp, dim=-1, keepdim=True))
        else:
            log_tail = torch.log(LF.upcast(tail).to(lp.dtype).clamp_min(0.0)).unsqueeze(-1)
        lp = torch.cat([lp, log_tail], dim=-1)
    if temperature != 1.0:
        lp = lp / temperature
    lp = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
    return lp.clamp_min(_FMIN)


def student_bucket_log_probs(student_logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float = 1.0,
                             with_tail: bool | None = None) -> torch.Tensor:
    """Student log-probabilities coarse-grained onto the teacher's support buckets.

    ``log Q_k = log q(i_k)`` and ``log Q_tail = logsumexp_{v not in support} log q(v)`` with
    ``q = softmax(s / T)`` over the **full** vocabulary (computed as a logsumexp rather than
    ``log(1 - sum Q_k)``, which cancels catastrophically when the support holds almost all mass).

    Args:
        student_logits: ``(..., V)``.
        topk_ids: ``(..., K)`` int, unique per token.
        temperature: softmax temperature.
        with_tail: add the tail bucket; default ``K < V``.

    Returns:
        ``(..., K + 1)`` (or ``(..., K)``) float32, differentiable w.r.t. ``student_logits``.
    """
    ids = topk_ids.long()
    if with_tail is None:
        with_tail = _has_tail(ids, student_logits.shape[-1])
    return student_buckets(LF.log_probs(student_logits, temperature), ids, with_tail)


def student_buckets(student_lp: torch.Tensor, ids: torch.Tensor, with_tail: bool) -> torch.Tensor:
    """:func:`student_bucket_log_probs` from the student's log-probabilities ``(..., V)`` (shared with
    the other components of the step)."""
    sup = student_lp.gather(-1, ids)
    if not with_tail:
        return sup
    tail = student_lp.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([sup, tail], dim=-1)


# ----------------------------------------------------------------------------- per-token divergences
def _check_sampled_temperature(temperature: float) -> None:
    if temperature != 1.0:
        raise ValueError(
            f"a sampled (importance-weighted) sparse teacher estimates p at temperature 1, but the loss "
            f"temperature is {temperature}: set loss.temperature=1 (no unbiased tempered estimator exists), "
            "or write a top-k cache instead")


def sparse_forward_kl(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                      temperature: float = 1.0, sampled: bool = False,
                      tail: torch.Tensor | None = None) -> torch.Tensor:
    """Forward KL against a sparse teacher, per token (plain autograd; the reference).

    Top-k: ``sum_b P_b (log P_b - log Q_b)`` over the ``K`` support buckets and the tail bucket.
    Sampled: ``sum_k w_k (log w_k - log q(i_k))`` with the importance weights ``w``; its gradient
    is an unbiased estimate of the full forward-KL gradient (``T`` must be 1).

    Args:
        student_logits: ``(..., V)``.
        topk_ids: ``(..., K)`` int.
        topk_logprobs: ``(..., K)`` teacher log-probs at ``T = 1`` (top-k) or log-weights (sampled).
        temperature: see the module docstring.
        sampled: whether the cache is importance-sampled.
        tail: optional ``(...)`` stored tail mass of a top-k cache (see
            :func:`teacher_bucket_log_probs`); ignored for a sampled cache.

    Returns:
        ``(...)`` float32.
    """
    if sampled:
        _check_sampled_temperature(temperature)
        w = topk_logprobs.float().exp()
        lq = LF.log_probs(student_logits).gather(-1, topk_ids.long())
        return (torch.xlogy(w, w) - w * lq).sum(-1)
    with_tail = _has_tail(topk_ids, student_logits.shape[-1])
    p = teacher_bucket_log_probs(topk_logprobs, temperature, with_tail, tail)
    q = student_bucket_log_probs(student_logits, topk_ids, temperature, with_tail)
    return LF.kl_from_log_probs(p, q)


def _no_sampled(sampled: bool, what: str) -> None:
    if sampled:
        raise ValueError(f"{what} needs the teacher's probabilities where the student puts mass, which an "
                         "importance-sampled cache cannot give; use forward KL with a sampled cache, or a "
                         "top-k cache")


def sparse_reverse_kl(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                      temperature: float = 1.0, sampled: bool = False,
                      tail: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse KL ``sum_b Q_b (log Q_b - log P_b)`` over the top-k buckets, per token.

    Teacher bucket log-probabilities are floored at ``log 1e-12`` so a tail the teacher gives no
    (representable) mass does not make the value infinite. Top-k caches only. Shapes as
    :func:`sparse_forward_kl`.
    """
    _no_sampled(sampled, "reverse KL")
    with_tail = _has_tail(topk_ids, student_logits.shape[-1])
    p = teacher_bucket_log_probs(topk_logprobs, temperature, with_tail, tail).clamp_min(REVERSE_KL_MIN_LOG_PROB)
    q = student_bucket_log_probs(student_logits, topk_ids, temperature, with_tail)
    return LF.kl_from_log_probs(q, p)


def _bucket_jsd(p: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    if beta == 0.0:
        return LF.kl_from_log_probs(p, q)
    if beta == 1.0:
        return LF.kl_from_log_probs(q, p)
    m = torch.logaddexp(q + math.log(1.0 - beta), p + math.log(beta))
    return beta * LF.kl_from_log_probs(p, m) + (1.0 - beta) * LF.kl_from_log_probs(q, m)


def sparse_generalized_jsd(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                           beta: float = 0.5, temperature: float = 1.0, sampled: bool = False,
                           tail: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised JSD (TRL convention, see :func:`functional.generalized_jsd`) over the top-k buckets.

    ``beta = 1`` (reverse KL) uses the same teacher floor as :func:`sparse_reverse_kl`. Top-k caches
    only. Shapes as :func:`sparse_forward_kl`.
    """
    _no_sampled(sampled, "generalised JSD")
    with_tail = _has_tail(topk_ids, student_logits.shape[-1])
    p = teacher_bucket_log_probs(topk_logprobs, temperature, with_tail, tail)
    if beta == 1.0:
        p = p.clamp_min(REVERSE_KL_MIN_LOG_PROB)
    q = student_bucket_log_probs(student_logits, topk_ids, temperature, with_tail)
    return _bucket_jsd(p, q, beta)


# ----------------------------------------------------------------------------- chunk kernels
# A kernel maps one chunk of fp32 student logits ``s (n, V)`` (owned by the kernel: it may be
# modified in place) and the matching teacher rows to ``(values (n,), d values / d s (n, V) or None)``.

def sparse_forward_kl_kernel(s: torch.Tensor, teacher: tuple[torch.Tensor, ...], need_grad: bool,
                             temperature: float = 1.0,
                             sampled: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Closed-form value and gradient of :func:`sparse_forward_kl` for one chunk.

    With ``a = s / T``, ``q = softmax(a)`` and the buckets of the module docstring,
    ``KL = sum_b P_b log P_b - sum_k P_k log q_{i_k} - P_tail log Q_tail``. Using
    ``d log q_i / d a_j = [i = j] - q_j`` and ``d Q_tail / d a_j = q_j ([j not in S] - Q_tail)``::

        dKL/da_j = q_j (P_S + P_tail) - P_{k(j)} [j in S] - P_tail q_j [j not in S] / Q_tail
                 = q_j - P_{k(j)} [j in S] - [j not in S] q_j P_tail / Q_tail

    (``P_S + P_tail = 1``), and ``d/ds = (d/da) / T``. For a sampled cache
    (``T = 1``) the gradient of ``-sum_k w_k log q_{i_k}`` is ``q sum_k w_k - scatter_add(w)``.

    Args:
        s: ``(n, V)`` float32 student logits.
        teacher: ``(ids (n, K), logprobs (n, K), tail (n,) or None)``.
        temperature: softmax temperature.
        need_grad: also return the gradient.
        sampled: importance-sampled cache.
    """
    ids, lp, tail = teacher
    ids = ids.long()
    if sampled:
        _check_sampled_temperature(temperature)
        ls = _log_softmax_(s)
        w = lp.float().exp()
        value = (torch.xlogy(w, w) - w * ls.gather(1, ids)).sum(-1)
        if not need_grad:
            return value, None
        grad = ls.exp_().mul_(w.sum(-1, keepdim=True)).scatter_add_(1, ids, -w)
        return value, grad
    v = s.shape[-1]
    with_tail = _has_tail(ids, v)
    ls = _log_softmax_(s, temperature)
    lq_sup = ls.gather(1, ids)
    lp_b = teacher_bucket_log_probs(lp, temperature, with_tail, tail)
    if with_tail:
        lq_tail = ls.scatter(1, ids, float("-inf")).logsumexp(-1, keepdim=True)
        lq_b = torch.cat([lq_sup, lq_tail], dim=-1)
    else:
        lq_b = lq_sup
    value = LF.kl_from_log_probs(lp_b, lq_b)
    if not need_grad:
        return value, None
    p_sup = lp_b[:, :ids.shape[1]].exp()
    grad = ls.exp()  # q
    if with_tail:
        # q_j P_tail / Q_tail = exp(log q_j - log Q_tail + log P_tail), formed in log space: the
        # ratio P_tail / Q_tail alone overflows when the student's tail underflows, while
        # log q_j - log Q_tail <= 0 keeps every term <= P_tail <= 1.
        grad.sub_(ls.sub_(lq_tail - lp_b[:, -1:]).exp_())  # right for every id outside the support ...
        grad.scatter_(1, ids, (lq_sup.exp() - p_sup).to(grad.dtype))  # ... and overwritten on the support
    else:
        grad.scatter_add_(1, ids, -p_sup.to(grad.dtype))  # (a float64 support meets float32 logits)
    if temperature != 1.0:
        grad.div_(temperature)
    return value, grad


# ----------------------------------------------------------------------------- teacher fields
def teacher_tail(teacher: TeacherOutput) -> torch.Tensor | None:
    """The stored tail mass ``(B, L)`` of a top-k cache, when the teacher output carries one.

    Read as an optional ``tail`` attribute so a cache reader can pass the float64-exact tail it
    stores; without it the tail is derived from ``topk_logprobs``.
    """
    return getattr(teacher, "tail", None)
