"""Loss components for the newer divergences: skew KL, total variation, AKL, ToDi and ULD.

Each divergence comes as a plain component (per-token values, masked and normalised by the
combiner), a ``Chunked*`` one (bounded memory on full logits) and a ``Fused*`` one (student given as
hidden states + head, so its ``(B, L, V)`` logits are never held). The chunked and fused variants
run the same pure function of :mod:`distill.losses.divergences` on blocks of rows under autograd
(:func:`distill.losses.kernels.autograd_kernel`), so their value and gradient equal the plain
component's; they return the 0-dim ``sum(token_weights * value)``.

Teacher kinds: all of them need the teacher's **full** distribution (online logits, or hidden
states + head). A sparse (cached top-k) teacher is refused when the run is configured, with the
fix in the message: none of these divergences is defined on a top-k support with a tail bucket
(the head/tail split of AKL, ToDi's per-entry weight and ULD's sort all need every entry).
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import torch

from distill.losses import chunked as CH
from distill.losses import divergences as D
from distill.losses import fused as FU
from distill.losses.components import (STUDENT_LAST_HIDDEN, STUDENT_LOGITS, TEACHER_LAST_HIDDEN, TEACHER_LOGITS,
                                       LossInputs, _LogitDivergence)
from distill.losses.kernels import autograd_kernel, rows_per_chunk
from distill.types import ModelInfo, TeacherKind


class _Divergence(_LogitDivergence):
    """A :class:`_LogitDivergence` whose per-token value is ``fn(student, teacher, temperature, **params)``."""

    teacher_kinds = frozenset({TeacherKind.FULL})

    def params(self) -> dict:
        return {}

    def per_token(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def divergence(self, student_logits, teacher_logits, temperature):
        return self.per_token(student_logits, teacher_logits, temperature)


class SkewForwardKL(_Divergence):
    """Skew forward KL (DistiLLM, Ko et al., ICML 2024): ``T^2 * KL(p || alpha p + (1 - alpha) q)``.

    Args:
        alpha: skew in ``[0, 1)``; 0.1 is the paper's default (0 = forward KL).
        scale_by_t2: multiply by ``T^2`` (Hinton et al., 2015).
    """

    def __init__(self, alpha: float = 0.1, scale_by_t2: bool = True):
        super().__init__(scale_by_t2)
        self.alpha = D._check_alpha(alpha, f"loss component {type(self).__name__}")

    def params(self) -> dict:
        return {"alpha": self.alpha}

    def per_token(self, student_logits, teacher_logits, temperature=1.0):
        return D.skew_forward_kl(student_logits, teacher_logits, self.alpha, temperature)


class SkewReverseKL(SkewForwardKL):
    """Skew reverse KL (DistiLLM): ``T^2 * KL(q || (1 - alpha) p + alpha q)``; args as :class:`SkewForwardKL`."""

    def per_token(self, student_logits, teacher_logits, temperature=1.0):
        return D.skew_reverse_kl(student_logits, teacher_logits, self.alpha, temperature)


class TotalVariation(_Divergence):
    """Total variation ``1/2 sum_v |p_v - q_v|`` per token (bounded in [0, 1]).

    Args:
        scale_by_t2: default False: TV is bounded, its gradient does not shrink as ``1/T^2``.
    """

    def __init__(self, scale_by_t2: bool = False):
        super().__init__(scale_by_t2)

    def per_token(self, student_logits, teacher_logits, temperature=1.0):
        return D.total_variation(student_logits, teacher_logits, temperature)


class AdaptiveKL(_Divergence):
    """Adaptive KL (Wu et al., 2024, arXiv 2404.02657): ``w_head FKL + w_tail RKL`` per token.

    ``w_head = g_head / (g_head + g_tail)`` with ``g_head`` the L1 gap between teacher and student
    on the teacher's head (top entries up to cumulative mass ``mu``, the top one always included)
    and ``g_tail`` on the rest; detached (see :func:`distill.losses.divergences.adaptive_kl`).

    Args:
        mu: head mass, 0.5 as in the paper.
        scale_by_t2: multiply by ``T^2``.
    """

    def __init__(self, mu: float = 0.5, scale_by_t2: bool = True):
        super().__init__(scale_by_t2)
        if not 0.0 < mu <= 1.0:
            raise ValueError(f"loss component AdaptiveKL: mu must be in (0, 1], got {mu}")
        self.mu = float(mu)

    def per_token(self, student_logits, teacher_logits, temperature=1.0):
        return D.adaptive_kl(student_logits, teacher_logits, self.mu, temperature)


class ToDi(_Divergence):
    """ToDi (Jung et al., 2025, arXiv 2505.16297): per-entry FKL/RKL mix with weight ``sg[sigmoid(log p - log q)]``.

    ``T^2 * sum_v [a_v p_v log(p_v/q_v) + (1 - a_v) q_v log(q_v/p_v)]``; see
    :func:`distill.losses.divergences.todi`.
    """

    def per_token(self, student_logits, teacher_logits, temperature=1.0):
        return D.todi(student_logits, teacher_logits, temperature)


class UniversalLogitDistillation(_Divergence):
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

    def __init__(self, scale_by_t2: bool = False):
        super().__init__(scale_by_t2)

    def configure(self, student: ModelInfo, teacher: ModelInfo | None) -> None:
        if teacher is None:
            raise ValueError("ULD compares the student's distribution with a teacher's, but the run has no teacher "
                             "(teacher=none). Use an online teacher, e.g. teacher=cross_tokenizer.")

    def per_token(self, student_logits, teacher_logits, temperature=1.0):
        return D.uld(student_logits, teacher_logits, temperature)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        value = super().forward(inputs)
        positions = aligned_positions(inputs)
        return value if positions is None else torch.where(positions, value, 0.0)


def aligned_positions(inputs: LossInputs) -> torch.Tensor | None:
    """``(B, L)`` bool: where a cross-tokenizer teacher has a token aligned to the student's, or None."""
    return getattr(inputs.teacher, "positions", None)


# ----------------------------------------------------------------------------- chunked / fused variants
class _Blocked:
    """Mixin: run ``per_token`` on row blocks under autograd (same value and gradient, bounded memory)."""

    chunk_size: int | None
    scale_by_t2: bool

    def _init_chunks(self, chunk_size: int | None) -> None:
        rows_per_chunk(1, chunk_size)  # validate early
        self.chunk_size = chunk_size

    def _kernel_and_weights(self, inputs: LossInputs):
        t = inputs.temperature
        kernel = autograd_kernel(partial(self.per_token, temperature=t))
        weights = CH.component_weights(inputs, t * t if self.scale_by_t2 else 1.0)
        positions = aligned_positions(inputs)
        if positions is not None:
            weights = torch.where(positions, weights, 0.0)
        return kernel, weights

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        kernel, weights = self._kernel_and_weights(inputs)
        teacher = inputs.teacher
        if teacher.kind != TeacherKind.FULL:
            raise ValueError(f"{type(self).__name__} needs a full teacher (logits or hidden states + head), got "
                             f"a '{teacher.kind}' one")
        logits = inputs.student.logits
        # a shared vocabulary compares the first V_student ids; ULD compares whole distributions
        fetch = FU.teacher_row_fetch(teacher, logits.shape[-1] if self.shared_vocabulary else None)
        return CH.chunked_loss(logits, weights, kernel, fetch, self.chunk_size)


class _Fused(_Blocked):
    """Mixin: as :class:`_Blocked`, but from the student's hidden states and head when it has no logits."""

    needs = frozenset({STUDENT_LAST_HIDDEN, TEACHER_LOGITS, TEACHER_LAST_HIDDEN})

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        kernel, weights = self._kernel_and_weights(inputs)
        return FU.fused_kernel_loss(inputs, kernel, weights, self.chunk_size, type(self).__name__)


def _blocked_init(base):
    """``__init__(*args, chunk_size=None, **kwargs)`` for a variant of ``base``."""

    def __init__(self, *args, chunk_size: int | None = None, **kwargs):
        base.__init__(self, *args, **kwargs)
        self._init_chunks(chunk_size)

    return __init__


def _variants(base: type) -> tuple[type, type]:
    doc = (":class:`{name}` computed {how}: same value and gradient, bounded memory. Extra arg: ``chunk_size`` "
           "(tokens per block; None picks about ``2^24 / V``).")
    chunked = type(f"Chunked{base.__name__}", (_Blocked, base),
                   {"__init__": _blocked_init(base), "__module__": __name__,
                    "__doc__": doc.format(name=base.__name__, how="on row blocks of the logits"),
                    "needs": frozenset({STUDENT_LOGITS, TEACHER_LOGITS})})
    fused = type(f"Fused{base.__name__}", (_Fused, base),
                 {"__init__": _blocked_init(base), "__module__": __name__,
                  "__doc__": doc.format(name=base.__name__, how="from the student's hidden states and head")})
    return chunked, fused


ChunkedSkewForwardKL, FusedSkewForwardKL = _variants(SkewForwardKL)
ChunkedSkewReverseKL, FusedSkewReverseKL = _variants(SkewReverseKL)
ChunkedTotalVariation, FusedTotalVariation = _variants(TotalVariation)
ChunkedAdaptiveKL, FusedAdaptiveKL = _variants(AdaptiveKL)
ChunkedToDi, FusedToDi = _variants(ToDi)
# ULD has a chunked variant (rows of two different vocabularies); no fused one: a fused student head
# would have to be compared against a teacher head of another vocabulary, which fused_kernel_loss
# slices to a shared size. Use ChunkedUniversalLogitDistillation for bounded memory.
ChunkedUniversalLogitDistillation = _variants(UniversalLogitDistillation)[0]
