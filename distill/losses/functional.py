"""Pure per-token divergences between a student and a teacher distribution.

Every function here takes logits of shape ``(..., V)`` and returns **one value per token**, shape
``(...)``, in float32 (inputs of any float dtype are upcast before ``log_softmax``). Nothing here
masks or reduces: :class:`distill.losses.combine.DistillationLoss` owns masking and normalisation
in one place, so every variant (plain, chunked, fused, sparse) shares the same empty-mask guard.

Conventions: ``p`` is the teacher distribution, ``q`` the student's; ``T`` a softmax temperature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` labels -> ``(B, L)`` targets: position ``t`` predicts ``labels[t + 1]``; the last is -100.

    The one definition of the causal-LM shift (training, validation, teacher pretraining).
    """
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 (softmax over 150k logits in half precision loses the tail); fp64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / T)`` in at least fp32 over the last dim; ``-inf`` clamped to the dtype minimum.

    The clamp keeps ``0 * log 0`` terms finite in value *and* gradient (a masked-out logit gives a
    probability of exactly 0 and a finite, very negative log-probability).
    """
    x = upcast(logits)
    lp = F.log_softmax(x if temperature == 1.0 else x / temperature, dim=-1)
    # The clamp is a vocabulary-wide pass forward and backward: pay it only when a logit is -inf.
    # (amin is one reduction, ~20x cheaper on CPU than isfinite().all(), which builds bool tensors;
    # a NaN makes it False and takes the clamp path, as before.)
    no_neg_inf = x.numel() == 0 or bool(x.amin() > float("-inf"))
    return lp if no_neg_inf else lp.clamp_min(torch.finfo(lp.dtype).min)


def kl_from_log_probs(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` per token, from log-probabilities ``(..., V)``."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """Forward KL ``KL(p_T || q_S)`` per token (Hinton et al., 2015): mean-seeking.

    Args:
        student_logits: ``(..., V)``.
        teacher_logits: ``(..., V)``, same vocabulary.
        temperature: both distributions are softened by ``T`` (no ``T^2`` here; see components).

    Returns:
        ``(...)`` float32, >= 0, exactly 0 for identical inputs.
    """
    return kl_from_log_probs(log_probs(teacher_logits, temperature), log_probs(student_logits, temperature))


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL ``KL(q_S || p_T)`` per token (MiniLLM, Gu et al., 2024): mode-seeking.

    Shapes as :func:`forward_kl`.
    """
    return kl_from_log_probs(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature))


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence per token (GKD, Agarwal et al., 2024).

    With the mixture ``m = beta * p_T + (1 - beta) * q_S``::

        JSD_beta = beta * KL(p_T || m) + (1 - beta) * KL(q_S || m)

    As in TRL's ``generalized_jsd_loss``, the endpoints are defined as the two KLs the family
    interpolates between: ``beta = 0`` gives forward ``KL(p_T || q_S)``, ``beta = 1`` gives reverse
    ``KL(q_S || p_T)``. The mixture is formed in log space with ``logsumexp``.

    Args:
        student_logits: ``(..., V)``.
        teacher_logits: ``(..., V)``.
        beta: in ``[0, 1]``.
        temperature: softmax temperature for both.

    Returns:
        ``(...)`` float32; symmetric in (student, teacher) at ``beta = 0.5``.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized_jsd: beta must be in [0, 1], got {beta}")
    return jsd_from_log_probs(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature), beta)


def jsd_from_log_probs(s: torch.Tensor, t: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """:func:`generalized_jsd` from the student's and the teacher's log-probabilities ``(..., V)``."""
    if beta == 0.0:
        return kl_from_log_probs(t, s)
    if beta == 1.0:
        return kl_from_log_probs(s, t)
    m = torch.logsumexp(torch.stack([s + math.log(1.0 - beta), t + math.log(beta)]), dim=0)
    return beta * kl_from_log_probs(t, m) + (1.0 - beta) * kl_from_log_probs(s, m)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy per token, fp32; ignored labels (``-100``) give 0.

    Args:
        logits: ``(..., V)``.
        labels: ``(...)`` int64 target ids, already aligned with ``logits`` (no shift here).
    """
    flat = F.cross_entropy(upcast(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           reduction="none", ignore_index=IGNORE_INDEX)
    return flat.reshape(labels.shape)
