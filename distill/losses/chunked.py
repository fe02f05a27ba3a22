"""Chunked logit losses: bounded extra memory, same value and gradient as the plain versions.

The plain components (:mod:`distill.losses.components`) run ``log_softmax`` over the whole
``(B, L, V)`` batch and let autograd save every intermediate for backward: with a 152k vocabulary
each such copy is ``4 * B * L * V`` bytes, about as large as the logits themselves, and the naive
KD loss keeps several alive at once. Here the loss is computed over chunks of tokens inside one
:class:`torch.autograd.Function` that, for each chunk, computes the value **and** its gradient
w.r.t. the chunk's logits in closed form (see the kernels below), writes the gradient into one
buffer shaped like the logits (the size of the gradient backward must return anyway) and drops
every intermediate before the next chunk. Peak extra memory is therefore

    gradient buffer (same size/dtype as the student logits) + O(rows_per_chunk * V) float32,

instead of several ``(B, L, V)`` float32 tensors. The gradient is formed in float32 and stored in
the logits' dtype, exactly as autograd through ``logits.float()`` would.

Masking and reduction happen inside: a chunked component returns the 0-dim
``sum_{b,t} token_weights[b, t] * value[b, t]`` (``token_weights = mask / N_step`` from the
combiner, times ``T^2`` when the component scales by it). Masked tokens are never computed, so a
NaN or inf in a masked teacher row cannot leak in; a fully masked batch gives exactly 0 and a
zero gradient.

The kernels and the autograd Function live in :mod:`distill.losses.kernels` (the maths of each
kernel is written there); this module holds the row fetchers, the chunked functions and the
components.

Every kernel is checked against autograd through :mod:`distill.losses.functional` in
``tests/losses/test_chunked.py``.
"""

from __future__ import annotations

from functools import partial

import torch

from distill.losses import sparse as SP
from distill.losses.kernels import (DEFAULT_CHUNK_ELEMENTS, ChunkedLoss, Index, Kernel, RowFetch,  # noqa: F401
                                    cross_entropy_kernel, forward_kl_kernel, jsd_kernel, reverse_kl_kernel,
                                    rows_per_chunk, token_index)
from distill.losses.components import CrossEntropy, ForwardKL, GeneralizedJSD, LossInputs, ReverseKL
from distill.types import TeacherKind, TeacherOutput

def divergence_kernel(divergence: str, teacher_kind: str = "full", temperature: float = 1.0,
                      beta: float = 0.5, sampled: bool = False) -> Kernel:
    """The chunk kernel for ``divergence`` in ``{"forward_kl", "reverse_kl", "jsd", "ce"}``.

    ``teacher_kind`` "full" expects teacher rows as float32 logits ``(n, V)``; "sparse" expects
    ``(topk_ids, topk_logprobs)`` rows (see :mod:`distill.losses.sparse`); "ce" expects labels.
    """
    if divergence == "ce":
        return partial(cross_entropy_kernel, temperature=1.0)
    if teacher_kind == TeacherKind.SPARSE:
        if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
            return partial(SP.sparse_forward_kl_kernel, temperature=temperature, sampled=sampled)
        # Fail before any work, not chunk by chunk.
        SP._no_sampled(sampled, "reverse KL" if divergence == "reverse_kl" else "generalised JSD")
        return partial(SP.sparse_bucket_kernel, temperature=temperature, divergence=divergence, beta=beta,
                       sampled=sampled)
    if divergence == "forward_kl":
        return partial(forward_kl_kernel, temperature=temperature)
    if divergence == "reverse_kl":
        return partial(reverse_kl_kernel, temperature=temperature)
    if divergence == "jsd":
        return partial(jsd_kernel, temperature=temperature, beta=beta)
    raise ValueError(f"unknown divergence {divergence!r}; use forward_kl, reverse_kl, jsd or ce")


# ----------------------------------------------------------------------------- row fetchers
def full_rows(teacher_logits: torch.Tensor, vocab_size: int | None = None) -> RowFetch:
    """Rows of full teacher logits ``(..., V_t)`` as float32 ``(n, V)`` (first ``vocab_size`` ids)."""
    def fetch(idx: Index) -> torch.Tensor:
        rows = teacher_logits.detach()[idx]
        if vocab_size is not None and rows.shape[-1] != vocab_size:
            rows = rows[:, :vocab_size]
        return rows.float()
    return fetch


def sparse_rows(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, tail: torch.Tensor | None = None) -> RowFetch:
    """Rows of a sparse teacher: ``(ids (n, K), logprobs (n, K), tail (n,) or None)``."""
    return lambda idx: (topk_ids[idx], topk_logprobs.detach()[idx], None if tail is None else tail.detach()[idx])


def label_rows(labels: torch.Tensor) -> RowFetch:
    """Rows of hard labels ``(n,)``."""
    return lambda idx: labels[idx]


def teacher_rows(teacher: TeacherOutput, vocab_size: int | None = None) -> RowFetch:
    """Row fetcher for a full or sparse :class:`TeacherOutput`."""
    if teacher.kind == TeacherKind.FULL:
        return full_rows(teacher.logits, vocab_size)
    if teacher.kind == TeacherKind.SPARSE:
        return sparse_rows(teacher.topk_ids, teacher.topk_logprobs, SP.teacher_tail(teacher))
    raise ValueError("this loss needs teacher logits or a sparse teacher cache, but the teacher has none")


# ----------------------------------------------------------------------------- chunked losses
def chunked_loss(student_logits: torch.Tensor, token_weights: torch.Tensor, kernel: Kernel, fetch: RowFetch,
                 chunk_size: int | None = None) -> torch.Tensor:
    """Generic chunked loss ``sum_{tokens} token_weights * kernel(...)``.

    Args:
        student_logits: ``(..., V)`` any float dtype; receives the gradient.
        token_weights: ``(...)`` float; tokens with weight 0 are skipped.
        kernel: see :func:`divergence_kernel`.
        fetch: teacher rows for an index tuple (see :func:`teacher_rows`); never differentiated.
        chunk_size: tokens per chunk (None: :func:`rows_per_chunk`).

    Returns:
        0-dim float32.
    """
    if student_logits.shape[:-1] != token_weights.shape:
        raise ValueError(f"chunked loss: logits {tuple(student_logits.shape)} do not match token weights "
                         f"{tuple(token_weights.shape)}")
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    rows = rows_per_chunk(student_logits.shape[-1], chunk_size)
    return ChunkedLoss.apply(student_logits, token_weights.detach(), kernel, fetch, rows, need_grad)


def chunked_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, token_weights: torch.Tensor,
                       temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * KL(p_T || q_S)`` (no ``T^2``): equals ``(w * functional.forward_kl(...)).sum()``.

    Shapes: logits ``(..., V)``, ``token_weights (...)``; returns 0-dim float32.
    """
    return chunked_loss(student_logits, token_weights, divergence_kernel("forward_kl", temperature=temperature),
                        full_rows(teacher_logits), chunk_size)


def chunked_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, token_weights: torch.Tensor,
                       temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * KL(q_S || p_T)``; shapes as :func:`chunked_forward_kl`."""
    return chunked_loss(student_logits, token_weights, divergence_kernel("reverse_kl", temperature=temperature),
                        full_rows(teacher_logits), chunk_size)


def chunked_generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            token_weights: torch.Tensor, beta: float = 0.5, temperature: float = 1.0,
                            chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * JSD_beta``; shapes as :func:`chunked_forward_kl`."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"chunked_generalized_jsd: beta must be in [0, 1], got {beta}")
    return chunked_loss(student_logits, token_weights,
                        divergence_kernel("jsd", temperature=temperature, beta=beta),
                        full_rows(teacher_logits), chunk_size)


def chunked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, token_weights: torch.Tensor | None = None,
                          chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * CE``; default weights ``(labels != -100) / max(1, count)`` (a token mean)."""
    if token_weights is None:
        token_weights = default_token_weights(labels != -100)
    token_weights = torch.where(labels != -100, token_weights, 0.0)
    return chunked_loss(logits, token_weights, divergence_kernel("ce"), label_rows(labels), chunk_size)


def chunked_sparse_forward_kl(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                              token_weights: torch.Tensor, temperature: float = 1.0, sampled: bool = False,
                              chunk_size: int | None = None, tail: torch.Tensor | None = None) -> torch.Tensor:
    """``sum w * sparse_forward_kl(...)`` (see :mod:`distill.losses.sparse`), chunked."""
    return chunked_loss(student_logits, token_weights,
                        divergence_kernel("forward_kl", "sparse", temperature, sampled=sampled),
                        sparse_rows(topk_ids, topk_logprobs, tail), chunk_size)


def default_token_weights(mask: torch.Tensor) -> torch.Tensor:
    """``mask / max(1, mask.sum())``: what the combiner passes for a single micro-batch step."""
    return mask.float() / mask.sum().clamp_min(1).float()


# ----------------------------------------------------------------------------- components
def component_weights(inputs: LossInputs, scale: float = 1.0) -> torch.Tensor:
    """``inputs.token_weights`` (or the micro-batch default) times ``scale``, zero off the mask."""
    w = inputs.token_weights
    if w is None:
        w = default_token_weights(inputs.mask)
    w = torch.where(inputs.mask, w.float(), 0.0)
    return w * scale if scale != 1.0 else w


class _ChunkedDivergence:
    """Mixin for the chunked divergences: full or sparse teacher, 0-dim reduced output."""

    divergence: str = "forward_kl"
    teacher_kinds = frozenset({TeacherKind.FULL, TeacherKind.SPARSE})
    chunk_size: int | None
    scale_by_t2: bool

    def _beta(self) -> float:
        return 0.5

    def _chunked_value(self, inputs: LossInputs) -> torch.Tensor:
        t = inputs.temperature
        teacher = inputs.teacher
        kernel = divergence_kernel(self.divergence, teacher.kind, t, self._beta(), bool(teacher.sampled))
        weights = component_weights(inputs, t * t if self.scale_by_t2 else 1.0)
        logits = inputs.student.logits
        return chunked_loss(logits, weights, kernel, teacher_rows(teacher, logits.shape[-1]), self.chunk_size)


class ChunkedForwardKL(_ChunkedDivergence, ForwardKL):
    """:class:`~distill.losses.components.ForwardKL` computed chunk by chunk (bounded memory).

    Same value and gradient as ``ForwardKL`` (``T^2 * KL(p_T^T || q_S^T)``); also accepts a sparse
    teacher (top-k with tail bucket, or importance-sampled; :mod:`distill.losses.sparse`).
    Returns the 0-dim ``sum(token_weights * value)``.

    Args:
        chunk_size: tokens per chunk; None picks about ``2^24 / V`` (64 MiB float32 buffers).
        scale_by_t2: multiply by ``T^2`` (Hinton et al., 2015).
    """

    divergence = "forward_kl"

    def __init__(self, chunk_size: int | None = None, scale_by_t2: bool = True):
        super().__init__(scale_by_t2=scale_by_t2)
        rows_per_chunk(1, chunk_size)  # validate early
        self.chunk_size = chunk_size

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return self._chunked_value(inputs)


class ChunkedReverseKL(_ChunkedDivergence, ReverseKL):
    """:class:`~distill.losses.components.ReverseKL`, chunked; a top-k teacher is bucketed.

    Args as :class:`ChunkedForwardKL`.
    """

    divergence = "reverse_kl"

    def __init__(self, chunk_size: int | None = None, scale_by_t2: bool = True):
        super().__init__(scale_by_t2=scale_by_t2)
        rows_per_chunk(1, chunk_size)
        self.chunk_size = chunk_size

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return self._chunked_value(inputs)


class ChunkedGeneralizedJSD(_ChunkedDivergence, GeneralizedJSD):
    """:class:`~distill.losses.components.GeneralizedJSD`, chunked; a top-k teacher is bucketed.

    Args:
        beta: JSD mixture weight (0 forward KL, 1 reverse KL).
        chunk_size, scale_by_t2: as :class:`ChunkedForwardKL`.
    """

    divergence = "jsd"

    def __init__(self, beta: float = 0.5, chunk_size: int | None = None, scale_by_t2: bool = True):
        super().__init__(beta=beta, scale_by_t2=scale_by_t2)
        rows_per_chunk(1, chunk_size)
        self.chunk_size = chunk_size

    def _beta(self) -> float:
        return self.beta

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return self._chunked_value(inputs)


class ChunkedCrossEntropy(CrossEntropy):
    """:class:`~distill.losses.components.CrossEntropy` computed chunk by chunk.

    Args:
        chunk_size: tokens per chunk (None: automatic).
    """

    def __init__(self, chunk_size: int | None = None):
        super().__init__()
        rows_per_chunk(1, chunk_size)
        self.chunk_size = chunk_size

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return chunked_loss(inputs.student.logits, component_weights(inputs), divergence_kernel("ce"),
                            label_rows(inputs.targets), self.chunk_size)
