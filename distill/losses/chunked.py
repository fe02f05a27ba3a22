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

Kernels map one chunk of float32 student logits ``s (n, V)`` (owned by the kernel; it may modify
it in place) and the matching teacher rows to ``(values (n,), dvalues/ds (n, V) or None)``. With
``a = s / T``, ``q = softmax(a)``, ``p = softmax(t / T)`` and ``d/ds = (d/da) / T``:

* forward KL ``sum p (log p - log q)``: ``d/da = q - p``.
* reverse KL ``R = sum q (log q - log p)``: ``d/da = q * (log q - log p - R)``
  (from ``dq_v/da_j = q_v ([v = j] - q_j)``).
* generalised JSD with ``m = beta p + (1 - beta) q``: ``dJ/dq_v = (1 - beta)(log q_v - log m_v)``
  (the ``p/m`` and ``q/m`` terms cancel), so with ``g = (1 - beta)(log q - log m)``:
  ``d/da = q * (g - sum_v q_v g_v)``. ``beta = 0`` / ``1`` are forward / reverse KL (TRL).
* cross-entropy ``-log softmax(s)_y``: ``d/ds = softmax(s) - onehot(y)`` (no temperature).

Every kernel is checked against autograd through :mod:`distill.losses.functional` in
``tests/losses/test_chunked.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from distill.losses import sparse as SP
from distill.losses.components import CrossEntropy, ForwardKL, GeneralizedJSD, LossInputs, ReverseKL
from distill.types import TeacherKind, TeacherOutput

_FMIN = torch.finfo(torch.float32).min

#: Default chunk: about this many float32 elements per ``(rows, V)`` buffer (64 MiB); a kernel
#: holds at most four such buffers at once (plus a transient one inside ``logsumexp``).
#: 110 rows at V = 152k, 524 at 32k, 8192 at 2k.
DEFAULT_CHUNK_ELEMENTS = 1 << 24

Index = tuple[torch.Tensor, ...]
Kernel = Callable[[torch.Tensor, Any, bool], tuple[torch.Tensor, torch.Tensor | None]]
RowFetch = Callable[[Index], Any]


def rows_per_chunk(vocab_size: int, chunk_size: int | None = None) -> int:
    """Tokens per chunk: ``chunk_size`` if given, else about ``DEFAULT_CHUNK_ELEMENTS / V``."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or null, got {chunk_size}")
        return int(chunk_size)
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab_size))


# ----------------------------------------------------------------------------- kernels
def _log_softmax_(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(x / T)`` **in place** on an owned float32 chunk.

    In place because the caller's argument reference keeps ``x`` alive during the kernel: a new
    buffer would be one more ``(n, V)`` tensor at the peak. Clamped as
    :func:`functional.log_probs` is, so ``0 * log 0`` stays finite for ``-inf`` logits.
    """
    if temperature != 1.0:
        x.div_(temperature)
    x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))
    return x.clamp_min_(_FMIN)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_v a[n, v] * b[n, v]`` without an ``(n, V)`` temporary (a batched GEMV)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def forward_kl_kernel(s: torch.Tensor, t: torch.Tensor, need_grad: bool,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward KL ``KL(p || q)`` of one chunk: value ``(n,)`` and ``d/ds = (q - p) / T``."""
    ls = _log_softmax_(s, temperature)
    lt = _log_softmax_(t, temperature)
    p = lt.exp()
    value = _rowdot(p, lt.sub_(ls))  # lt is not needed after this
    del lt
    if not need_grad:
        return value, None
    grad = ls.exp_().sub_(p)
    if temperature != 1.0:
        grad.div_(temperature)
    return value, grad


def reverse_kl_kernel(s: torch.Tensor, t: torch.Tensor, need_grad: bool,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reverse KL ``R = KL(q || p)`` of one chunk: value and ``d/ds = q (log q - log p - R) / T``."""
    ls = _log_softmax_(s, temperature)
    lt = _log_softmax_(t, temperature)
    q = ls.exp()
    d = ls.sub_(lt)  # log q - log p, in place of log q
    del lt
    value = _rowdot(q, d)
    if not need_grad:
        return value, None
    grad = d.sub_(value.unsqueeze(1)).mul_(q)
    if temperature != 1.0:
        grad.div_(temperature)
    return value, grad


def jsd_kernel(s: torch.Tensor, t: torch.Tensor, need_grad: bool, temperature: float = 1.0,
               beta: float = 0.5) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generalised JSD of one chunk (``beta = 0`` forward KL, ``beta = 1`` reverse KL, as TRL).

    ``J = beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``;
    ``d/ds = q (g - sum q g) / T`` with ``g = (1 - beta)(log q - log m)``.
    """
    if beta == 0.0:
        return forward_kl_kernel(s, t, need_grad, temperature)
    if beta == 1.0:
        return reverse_kl_kernel(s, t, need_grad, temperature)
    ls = _log_softmax_(s, temperature)
    lt = _log_softmax_(t, temperature)
    lm = ls + math.log(1.0 - beta)
    tmp = lt + math.log(beta)
    torch.logaddexp(lm, tmp, out=lm)  # log m; buffers reused so at most 4 (n, V) are alive
    torch.sub(lt, lm, out=tmp)
    value = beta * _rowdot(lt.exp_(), tmp)  # lt now holds p
    del lt
    torch.sub(ls, lm, out=tmp)  # log q - log m
    del lm
    q = ls.exp_()  # ls now holds q
    value = value + (1.0 - beta) * _rowdot(q, tmp)
    if not need_grad:
        return value, None
    g = tmp.mul_(1.0 - beta)
    grad = g.sub_(_rowdot(q, g).unsqueeze(1)).mul_(q)
    if temperature != 1.0:
        grad.div_(temperature)
    return value, grad


def cross_entropy_kernel(s: torch.Tensor, labels: torch.Tensor, need_grad: bool,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hard-label CE of one chunk: ``-log softmax(s)_y`` and ``softmax(s) - onehot(y)``.

    ``temperature`` is ignored (the plain :class:`CrossEntropy` does not use it). Rows labelled
    ``-100`` give value 0 and gradient 0 (callers normally never pass them).
    """
    valid = labels != -100
    y = labels.clamp_min(0).long().unsqueeze(1)
    ls = _log_softmax_(s)
    value = -ls.gather(1, y).squeeze(1) * valid
    if not need_grad:
        return value, None
    grad = ls.exp_()
    grad.scatter_add_(1, y, torch.full_like(y, -1.0, dtype=grad.dtype))
    grad.mul_(valid.unsqueeze(1))
    return value, grad


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


# ----------------------------------------------------------------------------- the autograd Function
def token_index(token_weights: torch.Tensor) -> Index:
    """Index tuple of the tokens with a non-zero weight (masked tokens are never computed)."""
    return torch.nonzero(token_weights, as_tuple=True)


def _take(idx: Index, a: int, b: int) -> Index:
    return tuple(i[a:b] for i in idx)


class _ChunkedLoss(torch.autograd.Function):
    """``sum_tokens w * kernel(student_row, teacher_row)`` with the gradient formed chunk by chunk.

    Forward stores the finished gradient (in the logits' dtype) on ``ctx``; backward hands it over
    (scaled by ``grad_output``) and drops its own reference, so nothing else is kept. Calling
    backward twice through the same graph (``retain_graph=True``) is not supported.
    """

    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, token_weights: torch.Tensor, kernel: Kernel,
                fetch: RowFetch, rows: int, need_grad: bool) -> torch.Tensor:
        idx = token_index(token_weights)
        n = idx[0].numel()
        total = torch.zeros((), dtype=torch.float32, device=student_logits.device)
        grad = torch.zeros_like(student_logits) if need_grad else None
        for a in range(0, n, rows):
            ic = _take(idx, a, a + rows)
            # student_logits[ic] is a fresh copy (advanced indexing): the kernel may overwrite it.
            value, g = kernel(student_logits[ic].float(), fetch(ic), need_grad)
            w = token_weights[ic].float()
            total += (w * value).sum()
            if need_grad:
                grad[ic] = g.mul_(w.unsqueeze(1)).to(grad.dtype)
            del value, g
        ctx.grad = grad
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("a chunked loss was back-propagated twice (retain_graph=True) or built "
                               "without gradients; this is not supported")
        if bool(grad_output != 1.0):
            grad.mul_(grad_output.to(grad.dtype))
        return grad, None, None, None, None, None


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
    return _ChunkedLoss.apply(student_logits, token_weights.detach(), kernel, fetch, rows, need_grad)


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
