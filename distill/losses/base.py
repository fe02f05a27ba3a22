"""The component interfaces: :class:`LossComponent`, and :class:`LogitLoss` / :class:`Divergence` for
losses on the student's next-token distribution.

A component turns a student's and a teacher's outputs into per-token values (:class:`PerToken`) or
an already reduced value (:class:`Reduced`); the combiner (:mod:`distill.losses.combine`) owns
weights, schedules, temperature, masking and normalisation.

A **divergence** is one class that declares ``per_token(student_lp, teacher_lp)`` on
log-probabilities once. How it runs (plain, chunked, fused) is an execution strategy
(:mod:`distill.losses.strategy`) the combiner binds to it from ``loss.execution``; against a top-k
teacher both sides become bucket distributions (:mod:`distill.losses.targets`). So a new divergence
is one class plus one YAML and runs every way. A divergence may also declare a closed-form chunk
kernel (:meth:`LogitLoss.closed_form`) or a Liger loss (:meth:`LogitLoss.liger`); both are
optimisations with the same value, never requirements.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from distill.losses.inputs import LossInputs, PerToken, Reduced
from distill.losses.kernels import Kernel
from distill.losses.strategy import PLAIN, Execution
from distill.losses.targets import Target, teacher_target
from distill.types import ModelInfo, Need, TeacherKind, as_needs, as_teacher_kinds


class LossComponent(nn.Module):
    """Base class of every loss term.

    Class attributes:
        needs: which outputs the component reads (:class:`~distill.types.Need` members). The module
            asks the models for hidden states / attentions only when some active component needs them.
        teacher_kinds: which :class:`~distill.types.TeacherKind` forms the component can use;
            checked before training so a mismatch fails early with a clear message. Plain strings
            are accepted and checked when the class is defined (a typo is a ``TypeError``).
        uses_temperature: whether the combiner's temperature applies (logged only then).
        shared_vocabulary: whether the component compares student and teacher id by id, so both need
            one tokenizer (True for every logit loss except ULD, which compares sorted distributions).
    """

    needs: ClassVar[frozenset[Need]] = frozenset()
    teacher_kinds: ClassVar[frozenset[TeacherKind]] = frozenset(TeacherKind)
    uses_temperature: ClassVar[bool] = False
    shared_vocabulary: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        # A misspelt need or teacher kind would otherwise be a silent set miss (the models are
        # never asked for it, or a kind check never matches): refuse it when the class is defined.
        super().__init_subclass__(**kwargs)
        cls.needs = as_needs(cls.needs, cls.__name__)
        cls.teacher_kinds = as_teacher_kinds(cls.teacher_kinds, cls.__name__)

    def configure(self, student: ModelInfo, teacher: ModelInfo | None) -> None:
        """Build shape-dependent parts (projections) and validate, before training starts.

        Raise ``ValueError`` naming what is wrong and how to fix it.
        """

    def forward(self, inputs: LossInputs) -> PerToken | Reduced | torch.Tensor:  # pragma: no cover - interface
        """Per-token values: :class:`PerToken` (a bare ``(B, L)`` tensor also counts), masked and
        normalised by the combiner; or :class:`Reduced`, already ``sum(inputs.token_weights * value)``."""
        raise NotImplementedError


class LogitLoss(LossComponent):
    """A loss on the student's next-token distribution, run by an execution strategy.

    Subclasses declare :meth:`per_token` and :meth:`target`; the rest has defaults.

    Args:
        execution: None (the loss's ``loss.execution``), or an
            :class:`~distill.losses.strategy.Execution` / its name for this component alone (e.g. a
            plain reverse KL next to fused forward KL).
    """

    needs = frozenset({Need.STUDENT_LOGITS})

    def __init__(self, execution: Execution | str | None = None):
        super().__init__()
        self.execution = execution
        self.bind(execution if isinstance(execution, Execution) else PLAIN)

    def bind(self, strategy: Execution) -> None:
        """Run with ``strategy`` (the combiner binds ``loss.execution`` unless ``execution`` was set)."""
        self.strategy = strategy
        # an instance attribute shadows the class contract: the module reads what this instance needs
        self.needs = strategy.needs(type(self).needs)

    def per_token(self, student_lp: torch.Tensor, target) -> torch.Tensor:  # pragma: no cover - interface
        """Values ``(...)`` from the student's log-probabilities ``(..., V)`` and the target's side."""
        raise NotImplementedError

    def target(self, inputs: LossInputs) -> Target:  # pragma: no cover - interface
        raise NotImplementedError

    def softmax_temperature(self, inputs: LossInputs) -> float:
        return 1.0

    def scale(self, temperature: float) -> float:
        return 1.0

    def closed_form(self, target: Target, temperature: float) -> Kernel | None:
        """A chunk kernel with a closed-form gradient for this target, or None (autograd per chunk)."""
        return None

    def liger(self, liger, target: Target, hidden: torch.Tensor, weight: torch.Tensor,
              token_weights: torch.Tensor, temperature: float) -> torch.Tensor | None:
        """The reduced value from Liger's kernels (:class:`distill.losses.liger.Liger`), or None."""
        return None

    def forward(self, inputs: LossInputs) -> PerToken | Reduced:
        return self.strategy(self, inputs)


class Divergence(LogitLoss):
    """A divergence between the teacher's and the student's next-token distributions.

    Subclasses implement ``per_token(student_lp, teacher_lp)``: log-probabilities ``(..., V)`` in
    (or ``(..., K + 1)`` bucket log-probabilities against a top-k teacher), one value per token out.
    The value is multiplied by ``T^2`` when ``scale_by_t2`` (Hinton et al., 2015, sec. 2: gradients
    of the softened KL scale as ``1/T^2``, so the soft term keeps its magnitude when ``T`` changes).

    A top-k teacher is accepted by default: any divergence of two distributions is defined on the
    buckets (a lower bound of the full one for an f-divergence). Override ``teacher_kinds`` when the
    divergence needs every entry of the teacher's distribution.

    Args:
        scale_by_t2: multiply by ``T^2``.
        execution: see :class:`LogitLoss`.
    """

    needs = frozenset({Need.STUDENT_LOGITS, Need.TEACHER_LOGITS})
    teacher_kinds = frozenset({TeacherKind.FULL, TeacherKind.SPARSE})
    uses_temperature = True

    def __init__(self, scale_by_t2: bool = True, execution: Execution | str | None = None):
        super().__init__(execution)
        self.scale_by_t2 = scale_by_t2

    def configure(self, student: ModelInfo, teacher: ModelInfo | None) -> None:
        if teacher is None:
            raise ValueError(f"{type(self).__name__} compares student and teacher logits, but the run "
                             "has no teacher (teacher=none). Pick an open-weight or cached teacher, "
                             "or use loss=ce.")

    def softmax_temperature(self, inputs: LossInputs) -> float:
        return inputs.temperature

    def scale(self, temperature: float) -> float:
        return temperature * temperature if self.scale_by_t2 else 1.0

    def sparse_floor(self) -> float | None:
        """Lower bound for the teacher's bucket log-probabilities (None: none), for divergences
        with the teacher in a denominator: a tail the teacher gives no mass would be infinite."""
        return None

    def supports_sampled(self) -> bool:
        """Whether an importance-sampled support gives an unbiased estimate (only for a divergence
        linear in the teacher's probabilities, i.e. forward KL)."""
        return False

    def target(self, inputs: LossInputs) -> Target:
        return teacher_target(inputs, self.shared_vocabulary, self.sparse_floor(), self.supports_sampled(),
                              type(self).__name__)
