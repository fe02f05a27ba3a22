"""Execution strategies: how a logit loss is computed, apart from what it computes.

A logit loss (:class:`distill.losses.base.LogitLoss`: cross-entropy and every divergence) declares
its per-token function once, ``per_token(student_log_probs, target)``, and the target it compares
with (:mod:`distill.losses.targets`: labels, a full teacher, or a sparse top-k teacher, picked by
the teacher's output). An :class:`Execution` runs that function:

* :class:`Plain` (here): over the whole batch, on the student's log-softmax shared by every
  component of the step; per-token values out (:class:`~distill.losses.inputs.PerToken`).
* :class:`~distill.losses.chunked.Chunked`: chunk by chunk over tokens, value and gradient formed
  per chunk (bounded memory); :class:`~distill.losses.inputs.Reduced` out.
* :class:`~distill.losses.fused.Fused`: from the student's final hidden states and output head, so
  its ``(B, L, V)`` logits are never held (Liger kernels on CUDA when installed).

Chosen by ``loss.execution: plain | chunked | fused`` (:mod:`distill.losses.execution`), or per
component (``execution=`` on the component). A new divergence gets all of them, and the sparse
target, without any code of its own.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch

from distill.losses.inputs import LossInputs, PerToken, Reduced
from distill.types import Need


class LogitLoss(Protocol):
    """What a strategy reads of the component it runs (:class:`distill.losses.base.LogitLoss`
    implements it). A protocol, not an import: the component calls the strategy, so the strategy
    module stays below it in the layer order."""

    shared_vocabulary: ClassVar[bool]

    def per_token(self, student_lp: torch.Tensor, target: Any) -> torch.Tensor: ...

    def target(self, inputs: LossInputs) -> Any: ...

    def softmax_temperature(self, inputs: LossInputs) -> float: ...

    def scale(self, temperature: float) -> float: ...


def default_token_weights(mask: torch.Tensor) -> torch.Tensor:
    """``mask / max(1, mask.sum())``: what the combiner passes for a single micro-batch step."""
    return mask.float() / mask.sum().clamp_min(1).float()


def component_weights(inputs: LossInputs, scale: float = 1.0, positions: torch.Tensor | None = None) -> torch.Tensor:
    """``inputs.token_weights`` (or the micro-batch default) times ``scale``, zero off the mask (and
    off ``positions`` when given)."""
    w = inputs.token_weights
    if w is None:
        w = default_token_weights(inputs.mask)
    keep = inputs.mask if positions is None else inputs.mask & positions
    w = torch.where(keep, w, 0.0)
    return w * scale if scale != 1.0 else w


class Execution:
    """Base class of the strategies. ``name`` is the value of ``loss.execution`` that selects it."""

    name: ClassVar[str] = ""

    @classmethod
    def build(cls, chunk_size: int | None = None, backend: str = "auto", owner: str = "loss.execution") -> Execution:
        """The strategy for a config's settings; one it would ignore is refused, so a config never
        carries a setting that does nothing."""
        if chunk_size is not None or backend != "auto":
            raise ValueError(f"{owner}={cls.name} takes no chunk_size or backend (got {chunk_size}, {backend!r}); "
                             "use chunked or fused, or drop them")
        return cls()

    def needs(self, component_needs: frozenset[Need]) -> frozenset[Need]:
        """What a component with these declared needs reads under this strategy."""
        return component_needs

    def __call__(self, comp: LogitLoss, inputs: LossInputs) -> PerToken | Reduced:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Plain(Execution):
    """The whole batch at once with autograd: ``per_token`` on ``(B, L, V)`` log-probabilities.

    The student side is :meth:`LossInputs.student_log_probs` (one log-softmax per temperature and
    step, shared); the teacher side has finite rows at masked positions (:class:`LossInputs`), so a
    NaN there cannot reach the gradient.
    """

    name = "plain"

    def __call__(self, comp: LogitLoss, inputs: LossInputs) -> PerToken:
        t = comp.softmax_temperature(inputs)
        target = comp.target(inputs)
        values = comp.per_token(*target.whole(inputs.student_log_probs(t), t))
        scale = comp.scale(t)
        if scale != 1.0:
            values = values * scale
        if target.positions is not None:
            values = torch.where(target.positions, values, 0.0)
        return PerToken(values)


PLAIN = Plain()
