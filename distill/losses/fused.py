"""Fused execution: the loss applies the output head itself, so full-vocabulary logits are never held.

The student's ``(B, L, V)`` logits (and an online teacher's) are the largest tensors of a KD step
at LLM vocabulary sizes. Fused execution takes the final hidden states ``h (B, L, D)`` and the
``lm_head`` weight ``W (V, D)`` instead, and for each chunk of tokens computes

    s_c = h_c W^T            (n, V), in the model dtype, then at least float32
    value_c, G_c = kernel(s_c, target_c)           G_c = d value / d s_c
    dL/dh_c  = (w_c * G_c) W                       (n, D)
    dL/dW   += (w_c * G_c)^T h_c                   (V, D), accumulated in at least float32

so the peak extra memory is ``O(rows_per_chunk * V)`` plus the ``(V, D)`` weight gradient, in
plain PyTorch (runs on CPU). The kernel is the component's, as in chunked execution
(:func:`distill.losses.chunked.kernel_for`), so every divergence runs fused. On a CUDA device with
``liger-kernel`` installed, ``backend="auto"`` hands the cases the component maps to a Liger loss
to Liger's Triton kernels (:mod:`distill.losses.liger`) and otherwise uses this implementation.

The teacher can be given as its final hidden states + head (an online teacher run up to its final
norm: its logits are formed chunk by chunk too, under ``no_grad``), as full logits, or as a sparse
cache. Gradients reach the student hidden states and ``lm_head`` weight (tied embeddings included),
never the teacher. With a shared vocabulary, logits are compared on the first
``min(V_student, V_teacher)`` ids (embedding matrices padded to different sizes). The head must be
a plain linear map (no bias, no logit soft-capping/scaling); for other heads use chunked execution.

If the student output carries logits (because another component asked for them), fused execution
computes on those as chunked execution does: same value, same memory bound for the loss itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from distill.losses.chunked import Chunked
from distill.losses.components import CrossEntropy, ForwardKL
from distill.losses.inputs import LossInputs, Reduced
from distill.losses.kernels import FusedLinearLoss, Kernel, RowFetch, cross_entropy_kernel, rows_per_chunk
from distill.losses.liger import Liger
from distill.losses.strategy import default_token_weights
from distill.losses.targets import head_rows, label_rows
from distill.types import Need, StudentOutput, TeacherOutput

if TYPE_CHECKING:
    from distill.losses.base import Divergence, LogitLoss


def fused_linear_loss(hidden: torch.Tensor, weight: torch.Tensor, token_weights: torch.Tensor, kernel: Kernel,
                      fetch: RowFetch, chunk_size: int | None = None) -> torch.Tensor:
    """Generic fused loss ``sum_{tokens} token_weights * kernel(hidden W^T, target rows)``.

    Args:
        hidden: ``(..., D)`` final hidden states (after the final norm); receives a gradient.
        weight: ``(V, D)`` output head; receives a gradient when it requires one.
        token_weights: ``(...)`` float; zero-weight tokens are skipped.
        kernel: a chunk kernel (:func:`distill.losses.chunked.kernel_for`).
        fetch: target rows for an index tuple.
        chunk_size: tokens per chunk (None: about ``2^24 / V``).

    Returns:
        0-dim, float32 (float64 for a float64 head).
    """
    if hidden.shape[:-1] != token_weights.shape:
        raise ValueError(f"fused loss: hidden {tuple(hidden.shape)} does not match token weights "
                         f"{tuple(token_weights.shape)}")
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"fused loss: hidden size {hidden.shape[-1]} != lm_head in-features {weight.shape[-1]}")
    grad_on = torch.is_grad_enabled()
    need_h, need_w = grad_on and hidden.requires_grad, grad_on and weight.requires_grad
    rows = rows_per_chunk(weight.shape[0], chunk_size)
    return FusedLinearLoss.apply(hidden, weight, token_weights.detach(), kernel, fetch, rows, need_h, need_w)


def _require_head(student: StudentOutput, owner: str) -> None:
    if student.last_hidden is None or student.lm_head_weight is None:
        raise ValueError(f"{owner} needs the student's last_hidden and lm_head_weight (or its logits); the "
                         "student output has neither")


class Fused(Chunked):
    """From the student's final hidden states and head (see the module docstring).

    Args:
        chunk_size: tokens per chunk (None: about ``2^24 / V``).
        backend: "auto" (Liger on CUDA when installed and applicable, else PyTorch), "torch", or
            "liger" (error if Liger is not importable on a CUDA run).
    """

    name = "fused"

    def __init__(self, chunk_size: int | None = None, backend: str = "auto"):
        super().__init__(chunk_size)
        self.liger = Liger(backend)

    @classmethod
    def build(cls, chunk_size=None, backend="auto", owner="loss.execution") -> Fused:
        return cls(chunk_size, backend)

    def needs(self, component_needs: frozenset[Need]) -> frozenset[Need]:
        # The module then stops the student at its final hidden states; a teacher-reading component
        # also accepts the teacher's hidden states and head (DistillationLoss.teacher_needs).
        needs = (component_needs - {Need.STUDENT_LOGITS}) | {Need.STUDENT_LAST_HIDDEN}
        return needs | {Need.TEACHER_LAST_HIDDEN} if Need.TEACHER_LOGITS in needs else needs

    def __call__(self, comp: LogitLoss, inputs: LossInputs) -> Reduced:
        student = inputs.student
        if student.logits is not None:
            return super().__call__(comp, inputs)
        _require_head(student, type(comp).__name__)
        t, target, weights, kernel = self.prepare(comp, inputs)
        hidden, w = student.last_hidden, student.lm_head_weight
        vocab = min(w.shape[0], target.vocab or w.shape[0]) if comp.shared_vocabulary else None
        if self.liger.usable(hidden):
            out = comp.liger(self.liger, target, hidden, head_rows(w, vocab), weights, t)
            if out is not None:
                return Reduced(out)
        return Reduced(fused_linear_loss(hidden, head_rows(w, vocab), weights, kernel, target.rows(vocab),
                                         self.chunk_size))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(chunk_size={self.chunk_size}, backend={self.liger.backend!r})"


def fused_linear_divergence(hidden: torch.Tensor, weight: torch.Tensor,
                            teacher: TeacherOutput | torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                            token_weights: torch.Tensor, divergence: Divergence, temperature: float = 1.0,
                            chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * divergence(hidden @ weight.T, teacher)`` from the student's hidden states and head
    (times ``T^2`` when the divergence scales by it), for benchmarks that hold raw tensors.

    Args:
        hidden: ``(..., D)`` student final hidden states.
        weight: ``(V_s, D)`` student ``lm_head`` weight.
        teacher: full teacher logits ``(..., V_t)``, a ``(teacher_hidden (..., D_t), teacher_weight
            (V_t, D_t))`` pair, or a :class:`TeacherOutput` (full, head-carrying or sparse).
        token_weights: ``(...)``.
        divergence: the component, e.g. ``ForwardKL()`` or ``GeneralizedJSD(beta=0.1)``.
        temperature: softmax temperature of both sides.
        chunk_size: tokens per chunk.

    Returns:
        0-dim, the divergence's plain value on ``hidden @ weight.T`` reduced with ``token_weights``.
    """
    if isinstance(teacher, torch.Tensor):
        teacher = TeacherOutput(logits=teacher)
    elif isinstance(teacher, tuple):
        teacher = TeacherOutput(last_hidden=teacher[0], lm_head_weight=teacher[1])
    mask = token_weights != 0
    inputs = LossInputs(student=StudentOutput(last_hidden=hidden, lm_head_weight=weight), teacher=teacher,
                        targets=torch.where(mask, 0, -100), mask=mask, temperature=temperature,
                        token_weights=token_weights)
    return Fused(chunk_size, backend="torch")(divergence, inputs).value


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               token_weights: torch.Tensor | None = None,
                               chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * CE(hidden @ weight.T, labels)``; default weights give the token mean.

    Shapes: ``hidden (..., D)``, ``weight (V, D)``, ``labels (...)`` (``-100`` ignored).
    """
    valid = labels != -100
    if token_weights is None:
        token_weights = default_token_weights(valid)
    token_weights = torch.where(valid, token_weights, 0.0)
    return fused_linear_loss(hidden, weight, token_weights, cross_entropy_kernel, label_rows(labels), chunk_size)


# ----------------------------------------------------------------------------- old names
# The class names that conf/loss/kd_fused.yaml used before loss.execution, kept for saved configs.
def FusedForwardKL(chunk_size: int | None = None, scale_by_t2: bool = True, backend: str = "auto"):  # noqa: N802
    """Deprecated: ``ForwardKL`` with ``loss.execution=fused``."""
    return ForwardKL(scale_by_t2=scale_by_t2, execution=Fused(chunk_size, backend))


def FusedCrossEntropy(chunk_size: int | None = None, backend: str = "auto"):  # noqa: N802
    """Deprecated: ``CrossEntropy`` with ``loss.execution=fused``."""
    return CrossEntropy(execution=Fused(chunk_size, backend))
