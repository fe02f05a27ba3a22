"""The newer per-token divergences (2024-26): skew KL, total variation, AKL, ToDi and ULD.

Pure functions in the style of :mod:`distill.losses.functional`: logits ``(..., V)`` in (or, in the
``*_lp`` forms the components use, log-probabilities: student ``lq`` first), **one value per token** ``(...)`` out, float32 or wider (inputs are upcast before ``log_softmax``, whose
``-inf`` clamp keeps one-hot / masked teachers finite in value and gradient). Nothing here masks
or reduces; the combiner does (:mod:`distill.losses.combine`). ``p`` is the teacher distribution,
``q`` the student's, both softened by the temperature ``T``.

Each function only ever reduces over the last dim, so chunked and fused execution can run it row
block by row block (:func:`distill.losses.kernels.autograd_kernel`).
"""

from __future__ import annotations

import math

import torch

from distill.losses.functional import kl_from_log_probs, log_probs


def _check_alpha(alpha: float, owner: str) -> float:
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"{owner}: alpha must be in [0, 1) (alpha = 1 makes the divergence identically 0), "
                         f"got {alpha}")
    return float(alpha)


def _mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """``log(weight_a * a + (1 - weight_a) * b)`` from log-probabilities, in log space (``logsumexp``)."""
    if weight_a == 0.0:
        return log_b
    if weight_a == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log(1.0 - weight_a))


def skew_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew forward KL (DistiLLM, Ko et al., ICML 2024, eq. 3): ``KL(p || alpha p + (1 - alpha) q)``.

    Mixing a little of the teacher into the student side bounds the log-ratio by ``-log alpha``,
    so tokens the student gives ~0 mass no longer produce exploding gradients. ``alpha = 0`` is
    forward KL. Shapes as :func:`distill.losses.functional.forward_kl`.
    """
    alpha = _check_alpha(alpha, "skew_forward_kl")
    return skew_forward_kl_lp(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature), alpha)


def skew_forward_kl_lp(lq: torch.Tensor, lp: torch.Tensor, alpha: float) -> torch.Tensor:
    """:func:`skew_forward_kl` from the student's ``lq`` and the teacher's ``lp`` log-probabilities."""
    return kl_from_log_probs(lp, _mix(lp, lq, alpha))


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew reverse KL (DistiLLM, eq. 4): ``KL(q || (1 - alpha) p + alpha q)``.

    ``alpha = 0`` is reverse KL. Shapes as :func:`distill.losses.functional.forward_kl`.
    """
    alpha = _check_alpha(alpha, "skew_reverse_kl")
    return skew_reverse_kl_lp(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature), alpha)


def skew_reverse_kl_lp(lq: torch.Tensor, lp: torch.Tensor, alpha: float) -> torch.Tensor:
    """:func:`skew_reverse_kl` from log-probabilities."""
    return kl_from_log_probs(lq, _mix(lq, lp, alpha))


def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """Total variation distance ``1/2 sum_v |p_v - q_v|`` per token, in ``[0, 1]``.

    Bounded and symmetric; its gradient does not blow up where either side has ~0 mass (as in
    DistillKit's TVD loss). At ``p_v = q_v`` the subgradient is taken as 0 (``sign(0) = 0``).
    """
    return total_variation_lp(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature))


def total_variation_lp(lq: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """:func:`total_variation` from log-probabilities."""
    return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)


def akl_weights(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mu: float = 0.5,
                temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """AKL's head/tail weights ``(g_head / (g_head + g_tail), g_tail / (g_head + g_tail))``, detached.

    Sort the teacher probabilities in decreasing order; the *head* is the prefix whose cumulative
    mass is ``<= mu`` plus always the top entry, the *tail* the rest; ``g_head = sum_head |p - q|``
    and ``g_tail = sum_tail |p - q|`` (Wu et al., 2024, eqs. 7-9 and their released ``get_ratio``).
    Where ``g_head + g_tail = 0`` (identical distributions) both weights are 1/2: the paper leaves
    0/0 undefined, and either KL is 0 there anyway.
    """
    return akl_weights_lp(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature), mu)


def akl_weights_lp(lq: torch.Tensor, lp: torch.Tensor, mu: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`akl_weights` from log-probabilities."""
    with torch.no_grad():
        p, q = lp.exp(), lq.exp()
        p_sorted, order = p.sort(dim=-1, descending=True)
        errors = (p_sorted - q.gather(-1, order)).abs()
        tail = p_sorted.cumsum(-1) > mu
        tail[..., 0] = False
        g_tail = (errors * tail).sum(-1)
        g_head = (errors * ~tail).sum(-1)
        total = g_head + g_tail
        safe = torch.where(total > 0, total, torch.ones_like(total))
        w_head = torch.where(total > 0, g_head / safe, torch.full_like(total, 0.5))
        w_tail = torch.where(total > 0, g_tail / safe, torch.full_like(total, 0.5))
    return w_head, w_tail


def adaptive_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mu: float = 0.5,
                temperature: float = 1.0) -> torch.Tensor:
    """Adaptive KL (AKL; Wu et al., 2024, "Rethinking KL Divergence in KD for LLMs", arXiv 2404.02657).

    ``AKL = w_head * KL(p || q) + w_tail * KL(q || p)`` with the detached weights of
    :func:`akl_weights`: forward KL (which fits the teacher's head first) gets the share of the
    gap that sits in the head, reverse KL (which fits the tail first) the share in the tail.
    ``mu = 0.5`` as in the paper. The weights are computed per token, as in the released code.
    """
    if not 0.0 < mu <= 1.0:
        raise ValueError(f"adaptive_kl: mu must be in (0, 1], got {mu}")
    return adaptive_kl_lp(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature), mu)


def adaptive_kl_lp(lq: torch.Tensor, lp: torch.Tensor, mu: float = 0.5) -> torch.Tensor:
    """:func:`adaptive_kl` from log-probabilities."""
    w_head, w_tail = akl_weights_lp(lq, lp, mu)
    return w_head * kl_from_log_probs(lp, lq) + w_tail * kl_from_log_probs(lq, lp)


def todi(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ToDi (Jung et al., 2025, "Token-wise Distillation via Fine-Grained Divergence Control", arXiv 2505.16297).

    Per vocabulary entry, a mix of the forward- and reverse-KL summands::

        ToDi = sum_v [ a_v p_v log(p_v / q_v) + (1 - a_v) q_v log(q_v / p_v) ],
        a_v = sg[ sigmoid(log p_v - log q_v) ] = sg[ p_v / (p_v + q_v) ]

    Where the student underestimates an entry (``p_v > q_v``) the forward-KL term, which raises
    it, dominates; where it overestimates, the reverse-KL term, which lowers it. ``sg`` = detached
    (the weight is a coefficient, not differentiated). With that ``a_v`` the value is
    ``sum_v (p_v - q_v)(log p_v - log q_v) = KL(p || q) + KL(q || p)`` (>= 0, 0 only at ``p = q``);
    the gradient is not that of the symmetric KL, because ``a_v`` is held fixed. Choice: the
    weight is ``sigmoid(log p_v - log q_v)`` with no extra scale inside the sigmoid (the form the
    paper's method summary gives; a scaled variant is not implemented).
    """
    return todi_lp(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature))


def todi_lp(lq: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """:func:`todi` from log-probabilities."""
    diff = lp - lq
    a = torch.sigmoid(diff).detach()
    return (a * lp.exp() * diff - (1.0 - a) * lq.exp() * diff).sum(-1)


def uld(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Universal Logit Distillation (Boizard et al., 2024, arXiv 2402.12030, eq. 5).

    ``sum_i | p_(i) - q_(i) |`` over the probability vectors sorted in decreasing order, the
    shorter one zero-padded to the longer vocabulary: the Wasserstein-1 distance between the two
    distributions when every pair of tokens is one unit apart, which needs no shared vocabulary.
    ``student_logits (..., V_s)`` and ``teacher_logits (..., V_t)`` may have different ``V``.

    The padding is never materialised: the entries past ``min(V_s, V_t)`` of the longer vector
    are compared with 0, so they add their plain sum.
    """
    return uld_lp(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature))


def uld_lp(lq: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """:func:`uld` from log-probabilities (``lq (..., V_s)``, ``lp (..., V_t)``)."""
    p = lp.exp().sort(dim=-1, descending=True).values
    q = lq.exp().sort(dim=-1, descending=True).values
    n = min(p.shape[-1], q.shape[-1])
    value = (p[..., :n] - q[..., :n]).abs().sum(-1)
    if p.shape[-1] > n:
        value = value + p[..., n:].sum(-1)
    if q.shape[-1] > n:
        value = value + q[..., n:].sum(-1)
    return value
