"""Loss components for the newer divergences: skew KL, total variation, AKL, ToDi and ULD.

Each is one :class:`~distill.losses.base.Divergence` that declares ``per_token`` on
log-probabilities (the maths is in :mod:`distill.losses.divergences`); ``loss.execution`` runs it
plain, chunked or fused with the same value and gradient.

Teacher kinds: skew KL and total variation are f-divergences, defined on a top-k teacher's buckets
(a lower bound of the full value, as for forward KL). AKL, ToDi and ULD need the teacher's **full**
distribution (online logits, or hidden states + head): the head/tail split of AKL, ToDi's per-entry
weight and ULD's sort all need every entry, so a sparse teacher is refused when the run is configured.
"""

from __future__ import annotations

from typing import ClassVar

from distill.losses import divergences as D
from distill.losses.base import Divergence
from distill.types import ModelInfo, TeacherKind


class SkewForwardKL(Divergence):
    """Skew forward KL (DistiLLM, Ko et al., ICML 2024): ``T^2 * KL(p || alpha p + (1 - alpha) q)``.

    Args:
        alpha: skew in ``[0, 1)``; 0.1 is the paper's default (0 = forward KL).
        scale_by_t2: multiply by ``T^2`` (Hinton et al., 2015).
    """

    def __init__(self, alpha: float = 0.1, scale_by_t2: bool = True, execution=None):
        super().__init__(scale_by_t2, execution)
        self.alpha = D._check_alpha(alpha, f"loss component {type(self).__name__}")

    def per_token(self, student_lp, teacher_lp):
        return D.skew_forward_kl_lp(student_lp, teacher_lp, self.alpha)


class SkewReverseKL(SkewForwardKL):
    """Skew reverse KL (DistiLLM): ``T^2 * KL(q || (1 - alpha) p + alpha q)``; args as :class:`SkewForwardKL`."""

    def per_token(self, student_lp, teacher_lp):
        return D.skew_reverse_kl_lp(student_lp, teacher_lp, self.alpha)


class TotalVariation(Divergence):
    """Total variation ``1/2 sum_v |p_v - q_v|`` per token (bounded in [0, 1]).

    Args:
        scale_by_t2: default False: TV is bounded, its gradient does not shrink as ``1/T^2``.
    """

    def __init__(self, scale_by_t2: bool = False, execution=None):
        super().__init__(scale_by_t2, execution)

    def per_token(self, student_lp, teacher_lp):
        return D.total_variation_lp(student_lp, teacher_lp)


class AdaptiveKL(Divergence):
    """Adaptive KL (Wu et al., 2024, arXiv 2404.02657): ``w_head FKL + w_tail RKL`` per token.

    ``w_head = g_head / (g_head + g_tail)`` with ``g_head`` the L1 gap between teacher and student
    on the teacher's head (top entries up to cumulative mass ``mu``, the top one always included)
    and ``g_tail`` on the rest; detached (see :func:`distill.losses.divergences.adaptive_kl`).

    Args:
        mu: head mass, 0.5 as in the paper.
        scale_by_t2: multiply by ``T^2``.
    """

    def __init__(self, mu: float = 0.5, scale_by_t2: bool = True, execution=None):
        super().__init__(scale_by_t2, execution)
        if not 0.0 < mu <= 1.0:
            raise ValueError(f"loss component AdaptiveKL: mu must be in (0, 1], got {mu}")
        self.mu = float(mu)

    teacher_kinds = frozenset({TeacherKind.FULL})

    def per_token(self, student_lp, teacher_lp):
        return D.adaptive_kl_lp(student_lp, teacher_lp, self.mu)


class ToDi(Divergence):
    """ToDi (Jung et al., 2025, arXiv 2505.16297): per-entry FKL/RKL mix with weight ``sg[sigmoid(log p - log q)]``.

    ``T^2 * sum_v [a_v p_v log(p_v/q_v) + (1 - a_v) q_v log(q_v/p_v)]``; see
    :func:`distill.losses.divergences.todi`.
    """

    teacher_kinds = frozenset({TeacherKind.FULL})

    def per_token(self, student_lp, teacher_lp):
        return D.todi_lp(student_lp, teacher_lp)


class UniversalLogitDistillation(Divergence):
    """ULD (Boizard et al., 2024, arXiv 2402.12030): L1 between sorted, zero-padded probability vectors.

    ``sum_i |p_(i) - q_(i)|``, the Wasserstein-1 distance under a uniform cost, defined for
    teacher and student vocabularies of **different** sizes, so it is the one logit loss here that
    runs across tokenizers (``shared_vocabulary = False``). The paper trains on
    ``CE + lambda * ULD``; ``conf/loss/uld.yaml`` does that with lambda = 1.

    With a cross-tokenizer teacher (:class:`distill.teachers.cross_tokenizer.CrossTokenizerTeacher`)
    the teacher rows are already aligned to the student's positions by character spans; a position
    with no aligned teacher token (``TeacherOutput.positions`` False) contributes 0.

    Args:
        scale_by_t2: default False (the paper uses T = 1).
    """

    shared_vocabulary: ClassVar[bool] = False
    teacher_kinds = frozenset({TeacherKind.FULL})

    def __init__(self, scale_by_t2: bool = False, execution=None):
        super().__init__(scale_by_t2, execution)

    def configure(self, student: ModelInfo, teacher: ModelInfo | None) -> None:
        if teacher is None:
            raise ValueError("ULD compares the student's distribution with a teacher's, but the run has no teacher "
                             "(teacher=none). Use an online teacher, e.g. teacher=cross_tokenizer.")

    def per_token(self, student_lp, teacher_lp):
        return D.uld_lp(student_lp, teacher_lp)


