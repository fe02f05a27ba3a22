"""Held-out distillation metrics on text, as sums so they aggregate exactly over batches.

``heldout_metrics`` returns per-batch *sums* over unmasked tokens plus the token count;
``finalize`` turns accumulated sums into means: student loss and perplexity, teacher loss,
top-1 agreement (argmax match) and ``KL(p_T || q_S)`` per token. With :func:`byte_sums`
accumulated too, also bits per byte of the held-out text (``bpb``, ``teacher_bpb``): the CE sums
over the UTF-8 bytes of the scored targets (:mod:`distill.data.bytes_per_token`), the one measure
that compares models with different tokenizers.
"""

from __future__ import annotations

import math

import torch

from distill.losses import functional as LF
from distill.types import TeacherKind, TeacherOutput


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


@torch.no_grad()
def sparse_heldout_metrics(student_logits: torch.Tensor, teacher, targets: torch.Tensor) -> dict[str, float]:
    """Sums like :func:`heldout_metrics` against a sparse (cached) teacher ``TeacherOutput``.

    ``sparse_kl``: the forward KL over the cached support plus the tail bucket
    (:func:`distill.losses.sparse.sparse_forward_kl`; for a top-k cache a lower bound of the full
    KL, for a sampled cache a noisy estimate). ``sparse_agree`` (top-k caches only, whose first id
    is the teacher's argmax): top-1 agreement, the same quantity as the online ``agree``.
    ``teacher_ce`` / ``teacher_tokens``: the teacher's exact CE, when it gives the log-prob of each
    target (``sampled_logprobs``: a cache stores it), so a cached run keeps its teacher row.
    """
    from distill.losses.sparse import sparse_forward_kl

    mask = targets != -100
    out = {"tokens": float(mask.sum()),
           "student_ce": float(LF.cross_entropy(student_logits, targets)[mask].sum())}
    kl = sparse_forward_kl(student_logits, teacher.topk_ids, teacher.topk_logprobs, 1.0, teacher.sampled)
    out["sparse_kl"] = float(kl[mask].sum())
    if not teacher.sampled:
        top1 = teacher.topk_ids.gather(-1, teacher.topk_logprobs.argmax(-1, keepdim=True)).squeeze(-1)
        out["sparse_agree"] = float((student_logits.argmax(-1) == top1)[mask].sum())
    target_lp = getattr(teacher, "sampled_logprobs", None)
    if target_lp is not None:
        out["teacher_ce"] = float(-target_lp.float()[mask].sum())
        out["teacher_tokens"] = out["tokens"]
    return out


def heldout_sums(student_logits: torch.Tensor, teacher: TeacherOutput, targets: torch.Tensor) -> dict[str, float]:
    """Sums of one batch against whatever the teacher gave for validation: full logits
    (:func:`heldout_metrics`), a sparse support (:func:`sparse_heldout_metrics`), or nothing (the
    student's own CE)."""
    if teacher.kind == TeacherKind.SPARSE:
        return sparse_heldout_metrics(student_logits, teacher, targets)
    return heldout_metrics(student_logits, teacher.logits, targets)


def byte_sums(table: torch.Tensor | None, targets: torch.Tensor) -> dict[str, float]:
    """``{"bytes", "bytes_tokens"}`` of one batch: the UTF-8 bytes of its scored targets by the
    per-id ``table`` (:func:`distill.data.bytes_per_token.checked_byte_lengths`), and the tokens
    they cover; ``{}`` without a table or when a target is outside it (``finalize`` then reports no
    bpb: never one over part of the batches)."""
    mask = targets != -100
    if table is None or (mask.any() and int(targets[mask].max()) >= table.numel()):
        return {}
    n_bytes = table.to(targets.device)[targets.clamp_min(0)][mask].sum()
    return {"bytes": float(n_bytes), "bytes_tokens": float(mask.sum())}


def accumulate(total: dict[str, float], batch: dict[str, float]) -> dict[str, float]:
    for k, v in batch.items():
        total[k] = total.get(k, 0.0) + v
    return total


def finalize(total: dict[str, float]) -> dict[str, float]:
    """Means per token: ``loss``, ``ppl``, ``teacher_loss``, ``teacher_ppl``, ``agreement``, ``kl``;
    bits per byte ``bpb`` (and ``teacher_bpb`` beside ``teacher_loss``) where every batch counted its
    bytes (:func:`byte_sums`)."""
    n = max(total.get("tokens", 0.0), 1.0)
    out = {"loss": total.get("student_ce", 0.0) / n}
    out["ppl"] = math.exp(min(out["loss"], 50.0))
    # A sparse teacher's CE counts only where every batch gave it (teacher_tokens): never a partial mean.
    if "teacher_ce" in total and total.get("teacher_tokens", total.get("tokens", 0.0)) == total.get("tokens", 0.0):
        out["teacher_loss"] = total["teacher_ce"] / n
        out["teacher_ppl"] = math.exp(min(out["teacher_loss"], 50.0))
    if "agree" in total:
        out["agreement"] = total["agree"] / n
        out["kl"] = total["kl"] / n
    if "sparse_kl" in total:  # a cached (sparse) teacher: see sparse_heldout_metrics
        out["kl_sparse"] = total["sparse_kl"] / n
        if "sparse_agree" in total:
            out["agreement"] = total["sparse_agree"] / n
    n_bytes = total.get("bytes", 0.0)
    if n_bytes > 0 and total.get("bytes_tokens") == total.get("tokens"):
        # bits per byte: the same CE sums over the text's bytes instead of its tokens
        out["bpb"] = total.get("student_ce", 0.0) / math.log(2) / n_bytes
        if "teacher_loss" in out:
            out["teacher_bpb"] = total["teacher_ce"] / math.log(2) / n_bytes
    return out


def gap_closed(student: float | None, baseline: float | None, teacher: float | None,
               higher_is_better: bool = False) -> float | None:
    """``(baseline - student) / (baseline - teacher)``: the share of the distance between the
    baseline student and the teacher that distillation recovered (1 = teacher level, < 0 = worse
    than the baseline). The one definition (run summary on held-out CE, evaluation report on pass@k
    with ``higher_is_better=True``).

    None when a value is missing or the teacher is not better than the baseline: then there is no
    gap to close, and the ratio means nothing.
    """
    if None in (student, baseline, teacher):
        return None
    gap = (teacher - baseline) if higher_is_better else (baseline - teacher)
    return None if gap <= 1e-12 else (baseline - student) / (baseline - teacher)
