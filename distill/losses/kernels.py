"""Per-row loss kernels and the two autograd Functions that run them chunk by chunk.

This is the numeric core under :mod:`distill.losses.chunked` (components on full logits) and
:mod:`distill.losses.fused` (components on hidden states + output head): it knows nothing of
components, teachers or configs, only rows of numbers.

A **kernel** maps one chunk of student logits ``s (n, V)`` in float32 (float64 for float64 inputs,
:func:`compute_dtype`; owned by the kernel, which may modify it in place) and the matching teacher rows to ``(values (n,), dvalues/ds (n, V) or None)``.
With ``a = s / T``, ``q = softmax(a)``, ``p = softmax(t / T)`` and ``d/ds = (d/da) / T``:

* forward KL ``sum p (log p - log q)``: ``d/da = q - p``.
* reverse KL ``R = sum q (log q - log p)``: ``d/da = q * (log q - log p - R)``
  (from ``dq_v/da_j = q_v ([v = j] - q_j)``).
* generalised JSD with ``m = beta p + (1 - beta) q``: ``dJ/dq_v = (1 - beta)(log q_v - log m_v)``
  (the ``p/m`` and ``q/m`` terms cancel), so with ``g = (1 - beta)(log q - log m)``:
  ``d/da = q * (g - sum_v q_v g_v)``. ``beta = 0`` / ``1`` are forward / reverse KL (TRL).
* cross-entropy ``-log softmax(s)_y``: ``d/ds = softmax(s) - onehot(y)`` (no temperature).
* any other per-token divergence ``f(s, t)`` written in PyTorch: :func:`autograd_kernel` runs
  autograd on the chunk alone (value and gradient identical to the plain function's, memory
  bounded by the chunk: the divergences of :mod:`distill.losses.divergences` use it).

The **autograd Functions** (:class:`ChunkedLoss`, :class:`FusedLinearLoss`) call a kernel chunk by
chunk, keep only the finished gradient and hand it to backward, so peak extra memory is one
gradient buffer plus ``O(rows_per_chunk * V)`` float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

FMIN = torch.finfo(torch.float32).min

#: Default chunk: about this many float32 elements per ``(rows, V)`` buffer (64 MiB); a kernel
#: holds at most four such buffers at once (plus a transient one inside ``logsumexp``).
#: 110 rows at V = 152k, 524 at 32k, 8192 at 2k.
DEFAULT_CHUNK_ELEMENTS = 1 << 24

Index = tuple[torch.Tensor, ...]
Kernel = Callable[[torch.Tensor, Any, bool], tuple[torch.Tensor, torch.Tensor | None]]
RowFetch = Callable[[Index], Any]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision a chunk is computed in: float32 for half precision (a softmax over 150k logits
    in bf16 loses the tail), the input's own for float32 and float64 (so float64 runs stay exact)."""
    return torch.promote_types(dtype, torch.float32)


def rows_per_chunk(vocab_size: int, chunk_size: int | None = None) -> int:
    """Tokens per chunk: ``chunk_size`` if given, else about ``DEFAULT_CHUNK_ELEMENTS / V``."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or null, got {chunk_size}")
        return int(chunk_size)
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab_size))


def log_softmax_(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(x / T)`` **in place** on an owned float32 (or float64) chunk.

    In place because the caller's argument reference keeps ``x`` alive during the kernel: a new
    buffer would be one more ``(n, V)`` tensor at the peak. Clamped as
    :func:`functional.log_probs` is, so ``0 * log 0`` stays finite for ``-inf`` logits.
    """
    if temperature != 1.0:
        x.div_(temperature)
    x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))
    return x.clamp_min_(FMIN if x.dtype == torch.float32 else torch.finfo(x.dtype).min)


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_v a[n, v] * b[n, v]`` without an ``(n, V)`` temporary (a batched GEMV)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def forward_kl_kernel(s: torch.Tensor, t: torch.Tensor, need_grad: bool,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward KL ``KL(p || q)`` of one chunk: value ``(n,)`` and ``d/ds = (q - p) / T``."""
    ls = log_softmax_(s, temperature)
    lt = log_softmax_(t, temperature)
    p = lt.exp()
    value = rowdot(p, lt.sub_(ls))  # lt is not needed after this
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
    ls = log_softmax_(s, temperature)
    lt = log_softmax_(t, temperature)
    q = ls.exp()
    d = ls.sub_(lt)  # log q - log p, in place of log q
    del lt
    value = rowdot(q, d)
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
    ls = log_softmax_(s, temperature)
    lt = log_softmax_(t, temperature)
    lm = ls + math.log(1.0 - beta)
    tmp = lt + math.log(beta)
    torch.logaddexp(lm, tmp, out=lm)  # log m; buffers reused so at most 4 (n, V) are alive
    torch.sub(lt, lm, out=tmp)
    value = beta * rowdot(lt.exp_(), tmp)  # lt now holds p
    del lt
    torch.sub(ls, lm, out=tmp)  # log q - log m
    del lm
    q = ls.exp_()  # ls now holds q
    value = value + (1.0 - beta) * rowdot(q, tmp)
    if not need_grad:
        return value, None
    g = tmp.mul_(1.0 - beta)
    grad = g.sub_(rowdot(q, g).unsqueeze(1)).mul_(q)
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
    ls = log_softmax_(s)
    value = -ls.gather(1, y).squeeze(1) * valid
    if not need_grad:
        return value, None
    grad = ls.exp_()
    grad.scatter_add_(1, y, torch.full_like(y, -1.0, dtype=grad.dtype))
    grad.mul_(valid.unsqueeze(1))
    return value, grad


def autograd_kernel(fn: Callable[[torch.Tensor, Any], torch.Tensor]) -> Kernel:
    """A kernel from any per-token function ``fn(student_logits (n, V), teacher_rows) -> (n,)``.

    The gradient is autograd's through ``fn`` on this chunk only, so the chunked value and
    gradient equal the plain (whole-batch) function's exactly, while the intermediates autograd
    saves are those of one chunk. Used for divergences without a closed-form gradient kernel.
    """

    def kernel(s: torch.Tensor, t: Any, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not need_grad:
            with torch.no_grad():
                return fn(s, t), None
        with torch.enable_grad():
            s = s.detach().requires_grad_(True)
            value = fn(s, t)
            (grad,) = torch.autograd.grad(value.sum(), s)
        return value.detach(), grad

    return kernel


# ----------------------------------------------------------------------------- the autograd Functions
def token_index(token_weights: torch.Tensor) -> Index:
    """Index tuple of the tokens with a non-zero weight (masked tokens are never computed)."""
    return torch.nonzero(token_weights, as_tuple=True)


def take(idx: Index, a: int, b: int) -> Index:
    return tuple(i[a:b] for i in idx)


class ChunkedLoss(torch.autograd.Function):
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
        dtype = compute_dtype(student_logits.dtype)
        total = torch.zeros((), dtype=dtype, device=student_logits.device)
        grad = torch.zeros_like(student_logits) if need_grad else None
        for a in range(0, n, rows):
            ic = take(idx, a, a + rows)
            # student_logits[ic] is a fresh copy (advanced indexing): the kernel may overwrite it.
            value, g = kernel(student_logits[ic].to(dtype), fetch(ic), need_grad)
            w = token_weights[ic].to(dtype)
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


class FusedLinearLoss(torch.autograd.Function):
    """``sum_tokens w * kernel(h W^T, teacher)`` with ``dL/dh`` and ``dL/dW`` formed chunk by chunk.

    Forward keeps only the two finished gradients (``(N, D)`` and ``(V, D)``) on ``ctx``; backward
    hands them over scaled by ``grad_output``. Double backward / ``retain_graph`` is unsupported.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, token_weights: torch.Tensor, kernel: Kernel,
                fetch: RowFetch, rows: int, need_h: bool, need_w: bool) -> torch.Tensor:
        idx = token_index(token_weights)
        n = idx[0].numel()
        dtype = compute_dtype(weight.dtype)
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if need_h else None
        # float32 accumulator: summing many bf16 chunk products would lose the small ones.
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        need = need_h or need_w
        wt = weight.T
        for a in range(0, n, rows):
            ic = take(idx, a, a + rows)
            h = hidden[ic].to(weight.dtype)
            # Logits in the model dtype (as the plain head computes them), then float32.
            value, g = kernel((h @ wt).to(dtype), fetch(ic), need)
            w = token_weights[ic].to(dtype)
            total += (w * value).sum()
            if need:
                g.mul_(w.unsqueeze(1))
                if need_h:
                    grad_h[ic] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(g.T, h.to(dtype))
            del value, g, h
        ctx.grads = (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("a fused loss was back-propagated twice (retain_graph=True); not supported")
        grad_h, grad_w = grads
        if bool(grad_output != 1.0):
            grad_h = grad_h.mul_(grad_output.to(grad_h.dtype)) if grad_h is not None else None
            grad_w = grad_w.mul_(grad_output.to(grad_w.dtype)) if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None, None, None
