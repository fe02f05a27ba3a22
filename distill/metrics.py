"""Held-out distillation metrics on text, as sums so they aggregate exactly over batches.

``heldout_metrics`` returns per-batch *sums* over unmasked tokens plus the token count;
``finalize`` turns accumulated sums into means: student loss and perplexity, teacher loss,
top-1 agreement (argmax match) and ``KL(p_T || q_S)`` per token.
"""

from __future__ import annotations

import math

import torch

from distill.losses import functional as LF


@torch.no_grad()
def heldout_metrics(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                    targets: torch.Tensor) -> dict[str, float]:
    """Sums over unmasked positions of one batch.

    Args:
        student_logits: ``(B, L, V)``.
        teacher_logits: ``(B, L, V)`` on the same vocabulary, or None (student metrics only).
        targets: ``(B, L)`` next-token ids per position, ``-100`` = masked.

    Returns:
        ``{"tokens", "student_ce", ["teacher_ce", "agree", "kl"]}`` as Python floats (sums).
    """
    mask = targets != -100
    out = {"tokens": float(mask.sum()),
           "student_ce": float(LF.cross_entropy(student_logits, targets)[mask].sum())}
    if teacher_logits is not None:
        out["teacher_ce"] = float(LF.cross_entropy(teacher_logits, targets)[mask].sum())
        agree = student_logits.argmax(-1) == teacher_logits.argmax(-1)
        out["agree"] = float(agree[mask].sum())
        out["kl"] = float(LF.forward_kl(student_logits, teacher_logits)[mask].sum())
    return out


def accumulate(total: dict[str, float], batch: dict[str, float]) -> dict[str, float]:
    for k, v in batch.items():
        total[k] = total.get(k, 0.0) + v
    return total


def finalize(total: dict[str, float]) -> dict[str, float]:
    """Means per token: ``loss``, ``ppl``, ``teacher_loss``, ``teacher_ppl``, ``agreement``, ``kl``."""
    n = max(total.get("tokens", 0.0), 1.0)
    out = {"loss": total.get("student_ce", 0.0) / n}
    out["ppl"] = math.exp(min(out["loss"], 50.0))
    if "teacher_ce" in total:
        out["teacher_loss"] = total["teacher_ce"] / n
        out["teacher_ppl"] = math.exp(min(out["teacher_loss"], 50.0))
        out["agreement"] = total["agree"] / n
        out["kl"] = total["kl"] / n
    return out
