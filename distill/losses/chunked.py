"""Chunked execution: bounded extra memory, same value and gradient as plain execution.

Plain execution runs ``log_softmax`` over the whole ``(B, L, V)`` batch and lets autograd save
every intermediate for backward: with a 152k vocabulary each such copy is ``4 * B * L * V`` bytes,
about as large as the logits themselves, and the naive KD loss keeps several alive at once. Here the
loss is computed over chunks of tokens inside one :class:`torch.autograd.Function` that, for each
chunk, computes the value **and** its gradient w.r.t. the chunk's logits, writes the gradient into
one buffer shaped like the logits (the size of the gradient backward must return anyway) and drops
every intermediate before the next chunk. Peak extra memory is therefore

    gradient buffer (same size/dtype as the student logits) + O(rows_per_chunk * V)

The gradient of a chunk comes from the component's closed-form kernel when it declares one
(forward/reverse KL, JSD, cross-entropy: :mod:`distill.losses.kernels`), else from autograd on
that chunk alone through the component's own ``per_token`` (:func:`~distill.losses.kernels.autograd_kernel`),
so any divergence runs chunked. Chunks are computed in the input's precision (at least float32:
float64 inputs give float64 values and gradients, equal to plain execution to rounding).

Masking and reduction happen inside: the result is the 0-dim ``sum_{b,t} token_weights[b, t] *
value[b, t]`` (:class:`~distill.losses.inputs.Reduced`; times ``T^2`` when the component scales by
it). Masked tokens are never computed, so a NaN or inf in a masked teacher row cannot leak in; a
fully masked batch gives exactly 0 and a zero gradient.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch

from distill.losses.components import CrossEntropy, ForwardKL
from distill.losses.functional import log_probs
from distill.losses.inputs import LossInputs, Reduced
from distill.losses.kernels import (DEFAULT_CHUNK_ELEMENTS, ChunkedLoss, Index, Kernel, RowFetch,  # noqa: F401
                                    autograd_kernel, cross_entropy_kernel, forward_kl_kernel, jsd_kernel,
                                    reverse_kl_kernel, rows_per_chunk, token_index)
from distill.losses.sparse import sparse_forward_kl_kernel
from distill.losses.strategy import Execution, component_weights, default_token_weights
from distill.losses.targets import Target, full_rows, label_rows, sparse_rows

if TYPE_CHECKING:
    from distill.losses.base import LogitLoss


def chunked_loss(student_logits: torch.Tensor, token_weights: torch.Tensor, kernel: Kernel, fetch: RowFetch,
                 chunk_size: int | None = None) -> torch.Tensor:
    """Generic chunked loss ``sum_{tokens} token_weights * kernel(...)``.

    Args:
        student_logits: ``(..., V)`` any float dtype; receives the gradient.
        token_weights: ``(...)`` float; tokens with weight 0 are skipped.
        kernel: a chunk kernel (:func:`kernel_for`).
        fetch: target rows for an index tuple (:mod:`distill.losses.targets`); never differentiated.
        chunk_size: tokens per chunk (None: :func:`rows_per_chunk`).

    Returns:
        0-dim, float32 (float64 for float64 logits).
    """
    if student_logits.shape[:-1] != token_weights.shape:
        raise ValueError(f"chunked loss: logits {tuple(student_logits.shape)} do not match token weights "
                         f"{tuple(token_weights.shape)}")
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    rows = rows_per_chunk(student_logits.shape[-1], chunk_size)
    return ChunkedLoss.apply(student_logits, token_weights.detach(), kernel, fetch, rows, need_grad)


def kernel_for(comp: LogitLoss, target: Target, temperature: float) -> Kernel:
    """The component's closed-form chunk kernel for this target, else autograd through its ``per_token``."""
    kernel = comp.closed_form(target, temperature)
    if kernel is not None:
        return kernel
    return autograd_kernel(lambda s, rows: comp.per_token(*target.pair(log_probs(s, temperature), rows,
                                                                       temperature)))


class Chunked(Execution):
    """Chunk by chunk over the unmasked tokens of the student's logits (see the module docstring).

    Args:
        chunk_size: tokens per chunk; None picks about ``2^24 / V`` (64 MiB float32 buffers).
    """

    name = "chunked"

    def __init__(self, chunk_size: int | None = None):
        rows_per_chunk(1, chunk_size)  # a bad value fails when the config is built
        self.chunk_size = chunk_size

    @classmethod
    def build(cls, chunk_size=None, backend="auto", owner="loss.execution") -> Chunked:
        if backend != "auto":
            raise ValueError(f"{owner}=chunked has no backend (got {backend!r}); backends are for fused")
        return cls(chunk_size)

    def prepare(self, comp: LogitLoss, inputs: LossInputs) -> tuple[float, Target, torch.Tensor, Kernel]:
        t = comp.softmax_temperature(inputs)
        target = comp.target(inputs)
        weights = component_weights(inputs, comp.scale(t), target.positions)
        return t, target, weights, kernel_for(comp, target, t)

    def __call__(self, comp: LogitLoss, inputs: LossInputs) -> Reduced:
        _, target, weights, kernel = self.prepare(comp, inputs)
        logits = inputs.student.logits
        fetch = target.rows(logits.shape[-1] if comp.shared_vocabulary else None)
        return Reduced(chunked_loss(logits, weights, kernel, fetch, self.chunk_size))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(chunk_size={self.chunk_size})"


# ----------------------------------------------------------------------------- functional forms
# For benchmarks and tests that hold raw tensors; each names its kernel, no dispatch.
def chunked_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, token_weights: torch.Tensor,
                       temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * KL(p_T || q_S)`` (no ``T^2``): equals ``(w * functional.forward_kl(...)).sum()``.

    Shapes: logits ``(..., V)``, ``token_weights (...)``; returns 0-dim.
    """
    return chunked_loss(student_logits, token_weights, partial(forward_kl_kernel, temperature=temperature),
                        full_rows(teacher_logits), chunk_size)


def chunked_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, token_weights: torch.Tensor,
                       temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * KL(q_S || p_T)``; shapes as :func:`chunked_forward_kl`."""
    return chunked_loss(student_logits, token_weights, partial(reverse_kl_kernel, temperature=temperature),
                        full_rows(teacher_logits), chunk_size)


def chunked_generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            token_weights: torch.Tensor, beta: float = 0.5, temperature: float = 1.0,
                            chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * JSD_beta``; shapes as :func:`chunked_forward_kl`."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"chunked_generalized_jsd: beta must be in [0, 1], got {beta}")
    return chunked_loss(student_logits, token_weights, partial(jsd_kernel, temperature=temperature, beta=beta),
                        full_rows(teacher_logits), chunk_size)


def chunked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, token_weights: torch.Tensor | None = None,
                          chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * CE``; default weights ``(labels != -100) / max(1, count)`` (a token mean)."""
    if token_weights is None:
        token_weights = default_token_weights(labels != -100)
    token_weights = torch.where(labels != -100, token_weights, 0.0)
    return chunked_loss(logits, token_weights, cross_entropy_kernel, label_rows(labels), chunk_size)


def chunked_sparse_forward_kl(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                              token_weights: torch.Tensor, temperature: float = 1.0, sampled: bool = False,
                              chunk_size: int | None = None, tail: torch.Tensor | None = None) -> torch.Tensor:
    """``sum w * sparse_forward_kl(...)`` (see :mod:`distill.losses.sparse`), chunked."""
    kernel = partial(sparse_forward_kl_kernel, temperature=temperature, sampled=sampled)
    return chunked_loss(student_logits, token_weights, kernel, sparse_rows(topk_ids, topk_logprobs, tail), chunk_size)


# ----------------------------------------------------------------------------- old names
# The class names that conf/loss/kd_chunked.yaml used before loss.execution, kept for saved configs.
def ChunkedForwardKL(chunk_size: int | None = None, scale_by_t2: bool = True):  # noqa: N802
    """Deprecated: ``ForwardKL`` with ``loss.execution=chunked``."""
    return ForwardKL(scale_by_t2=scale_by_t2, execution=Chunked(chunk_size))


def ChunkedCrossEntropy(chunk_size: int | None = None):  # noqa: N802
    """Deprecated: ``CrossEntropy`` with ``loss.execution=chunked``."""
    return CrossEntropy(execution=Chunked(chunk_size))
