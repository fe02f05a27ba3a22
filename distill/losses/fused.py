"""Losses fused with the output head: full-vocabulary logits are never materialised.

The student's ``(B, L, V)`` logits (and an online teacher's) are the largest tensors of a KD step
at LLM vocabulary sizes. A fused loss takes the final hidden states ``h (B, L, D)`` and the
``lm_head`` weight ``W (V, D)`` instead, and for each chunk of tokens computes

    s_c = h_c W^T            (n, V), in the model dtype, then float32
    value_c, G_c = kernel(s_c, teacher_c)          G_c = d value / d s_c   (closed form)
    dL/dh_c  = (w_c * G_c) W                       (n, D)
    dL/dW   += (w_c * G_c)^T h_c                   (V, D), accumulated in float32

so the peak extra memory is ``O(rows_per_chunk * V)`` plus the ``(V, D)`` weight gradient, in
plain PyTorch (runs on CPU). This is the scheme of Liger-Kernel's fused linear losses (Hsu et al.,
2024); on a CUDA device with ``liger-kernel`` installed, ``backend="auto"`` hands the supported
cases (teacher given as hidden states + head, uniform token weights) to Liger's Triton kernels and
otherwise falls back to this implementation.

The teacher can be given as (checked in this order):

* ``last_hidden (B, L, D_t)`` + ``lm_head_weight (V_t, D_t)`` attributes on the
  :class:`~distill.types.TeacherOutput` (an online teacher run up to its final norm):
  its logits are formed chunk by chunk too, under ``no_grad``;
* full ``logits (B, L, V_t)``;
* a sparse cache (``topk_ids`` / ``topk_logprobs``, see :mod:`distill.losses.sparse`).

Gradients reach the student hidden states and ``lm_head`` weight (tied embeddings included),
never the teacher. Logits are compared on the first ``min(V_student, V_teacher)`` ids, the shared
tokenizer's ids when embedding matrices are padded to different sizes. The head must be a plain
linear map (no bias, no logit soft-capping/scaling); for other heads use the chunked losses.

If the student output carries logits (because another component asked for them), the fused
components compute on those with the chunked kernels instead: same value, same memory bound
for the loss itself.
"""

from __future__ import annotations

import warnings

import torch

from distill.losses import chunked as CH
from distill.losses.kernels import FusedLinearLoss
from distill.losses.components import (STUDENT_LAST_HIDDEN, TEACHER_LAST_HIDDEN, TEACHER_LOGITS, CrossEntropy,
                                       ForwardKL, GeneralizedJSD, LossInputs, ReverseKL)
from distill.types import StudentOutput, TeacherKind, TeacherOutput

# STUDENT_LAST_HIDDEN: the module returns ``StudentOutput.last_hidden`` + ``lm_head_weight`` (a
# fused component leaves ``student_logits`` out of its needs, which already has that effect).
# TEACHER_LAST_HIDDEN: an online teacher returns ``last_hidden`` + ``lm_head_weight`` instead of
# full logits when no other component needs its logits (DistillationLoss.teacher_needs).

BACKENDS = ("auto", "torch", "liger")


# ----------------------------------------------------------------------------- teacher rows
def hidden_rows(teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, vocab_size: int) -> CH.RowFetch:
    """Teacher logit rows formed on the fly: ``(h_t[idx] W_t[:V]^T).float()``, never differentiated."""
    tw = _head_rows(teacher_weight.detach(), vocab_size)
    th = teacher_hidden.detach()

    def fetch(idx: CH.Index) -> torch.Tensor:
        return (th[idx].to(tw.dtype) @ tw.T).float()
    return fetch


def _teacher_head(teacher: TeacherOutput) -> tuple[torch.Tensor, torch.Tensor] | None:
    # TeacherOutput may not declare these fields; an online teacher can still attach them.
    h, w = getattr(teacher, "last_hidden", None), getattr(teacher, "lm_head_weight", None)
    return (h, w) if h is not None and w is not None else None


def _teacher_vocab(teacher: TeacherOutput | None) -> int | None:
    if teacher is None:
        return None
    head = _teacher_head(teacher)
    if head is not None:
        return head[1].shape[0]
    if teacher.logits is not None:
        return teacher.logits.shape[-1]
    return None


# ----------------------------------------------------------------------------- fused losses
def fused_linear_loss(hidden: torch.Tensor, weight: torch.Tensor, token_weights: torch.Tensor, kernel: CH.Kernel,
                      fetch: CH.RowFetch, chunk_size: int | None = None) -> torch.Tensor:
    """Generic fused loss ``sum_{tokens} token_weights * kernel(hidden W^T, teacher rows)``.

    Args:
        hidden: ``(..., D)`` final hidden states (after the final norm); receives a gradient.
        weight: ``(V, D)`` output head; receives a gradient when it requires one.
        token_weights: ``(...)`` float; zero-weight tokens are skipped.
        kernel: a chunk kernel (:func:`distill.losses.chunked.divergence_kernel`).
        fetch: teacher rows for an index tuple.
        chunk_size: tokens per chunk (None: about ``2^24 / V``).

    Returns:
        0-dim float32.
    """
    if hidden.shape[:-1] != token_weights.shape:
        raise ValueError(f"fused loss: hidden {tuple(hidden.shape)} does not match token weights "
                         f"{tuple(token_weights.shape)}")
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"fused loss: hidden size {hidden.shape[-1]} != lm_head in-features {weight.shape[-1]}")
    grad_on = torch.is_grad_enabled()
    need_h, need_w = grad_on and hidden.requires_grad, grad_on and weight.requires_grad
    rows = CH.rows_per_chunk(weight.shape[0], chunk_size)
    return FusedLinearLoss.apply(hidden, weight, token_weights.detach(), kernel, fetch, rows, need_h, need_w)


def fused_linear_divergence(hidden: torch.Tensor, weight: torch.Tensor, teacher: TeacherOutput | torch.Tensor |
                            tuple[torch.Tensor, torch.Tensor], token_weights: torch.Tensor,
                            divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                            chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * D(p_T || q_S)`` from the student's hidden states and head (no ``T^2`` here).

    Args:
        hidden: ``(..., D)`` student final hidden states.
        weight: ``(V_s, D)`` student ``lm_head`` weight.
        teacher: full teacher logits ``(..., V_t)``, a ``(teacher_hidden (..., D_t), teacher_weight
            (V_t, D_t))`` pair, or a :class:`TeacherOutput` (full, head-carrying or sparse).
        token_weights: ``(...)``.
        divergence: "forward_kl", "reverse_kl" or "jsd" (with ``beta``).
        temperature: softmax temperature of both sides.
        chunk_size: tokens per chunk.

    Returns:
        0-dim float32, equal to ``(w * functional.<divergence>(hidden @ weight.T, teacher_logits)).sum()``.
    """
    if isinstance(teacher, torch.Tensor):
        teacher = TeacherOutput(logits=teacher)
    elif isinstance(teacher, tuple):
        pair = teacher
        teacher = TeacherOutput()
        teacher.last_hidden, teacher.lm_head_weight = pair
    kind = TeacherKind.FULL if _teacher_head(teacher) is not None else teacher.kind
    vocab = min(weight.shape[0], _teacher_vocab(teacher) or weight.shape[0])
    kernel = CH.divergence_kernel(divergence, kind, temperature, beta, bool(teacher.sampled))
    return fused_linear_loss(hidden, _head_rows(weight, vocab), token_weights, kernel, _fetch(teacher, vocab),
                             chunk_size)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               token_weights: torch.Tensor | None = None,
                               chunk_size: int | None = None) -> torch.Tensor:
    """``sum w * CE(hidden @ weight.T, labels)``; default weights give the token mean.

    Shapes: ``hidden (..., D)``, ``weight (V, D)``, ``labels (...)`` (``-100`` ignored).
    """
    valid = labels != -100
    if token_weights is None:
        token_weights = CH.default_token_weights(valid)
    token_weights = torch.where(valid, token_weights, 0.0)
    return fused_linear_loss(hidden, weight, token_weights, CH.divergence_kernel("ce"), CH.label_rows(labels),
                             chunk_size)


def _head_rows(weight: torch.Tensor, vocab: int) -> torch.Tensor:
    # Slice only when needed: a slice's backward allocates a second full (V, D) gradient.
    return weight if vocab >= weight.shape[0] else weight[:vocab]


def teacher_row_fetch(teacher: TeacherOutput, vocab: int | None) -> CH.RowFetch:
    """Rows of a full teacher as float32 logits over its first ``vocab`` ids (all when None), from
    its hidden states + head when it carries them, else from its logits (or a sparse cache)."""
    head = _teacher_head(teacher)
    if head is not None:
        return hidden_rows(head[0], head[1], vocab if vocab is not None else head[1].shape[0])
    return CH.teacher_rows(teacher, vocab)


def _fetch(teacher: TeacherOutput, vocab: int) -> CH.RowFetch:
    head = _teacher_head(teacher)
    if head is not None:
        return hidden_rows(head[0], head[1], vocab)
    return CH.teacher_rows(teacher, vocab)


def fused_kernel_loss(inputs: LossInputs, kernel: CH.Kernel, weights: torch.Tensor, chunk_size: int | None,
                      owner: str) -> torch.Tensor:
    """``sum w * kernel(...)`` for a full teacher: on the student's logits when it has them (chunked),
    else from its hidden states and head (fused). The teacher may be logits or hidden states + head.

    The generic path for divergences without a Liger kernel (:mod:`distill.losses.methods`).
    """
    student, teacher = inputs.student, inputs.teacher
    if _teacher_head(teacher) is None and teacher.logits is None:
        raise ValueError(f"{owner} needs a full teacher (logits, or hidden states and head); got a "
                         f"'{teacher.kind}' teacher")
    if student.logits is not None:
        logits = student.logits
        return CH.chunked_loss(logits, weights, kernel, _fetch(teacher, logits.shape[-1]), chunk_size)
    _require_head(student, owner)
    w = student.lm_head_weight
    vocab = min(w.shape[0], _teacher_vocab(teacher) or w.shape[0])
    return fused_linear_loss(student.last_hidden, _head_rows(w, vocab), weights, kernel, _fetch(teacher, vocab),
                             chunk_size)


# ----------------------------------------------------------------------------- Liger (GPU, optional)
_LIGER_FAILED = False


def _liger_module():
    try:
        import liger_kernel.transformers as lt  # noqa: F401  (needs triton and a GPU)
        return lt
    except Exception:  # ImportError, or triton failing to initialise
        return None


def _uniform_weight(token_weights: torch.Tensor) -> torch.Tensor | None:
    """The common value of the non-zero token weights (a 0-dim tensor), or None if they differ."""
    nz = token_weights[token_weights != 0]
    if nz.numel() == 0 or not bool((nz == nz[0]).all()):
        return None
    return nz[0]


def _try_liger(divergence: str, beta: float, temperature: float, hidden: torch.Tensor, weight: torch.Tensor,
               teacher: TeacherOutput | None, labels: torch.Tensor, token_weights: torch.Tensor,
               backend: str) -> torch.Tensor | None:
    """Liger-Kernel's fused linear JSD / cross-entropy when applicable, else None (torch path).

    Liger reduces by the mean over non-ignored tokens; ``sum(w * value)`` with uniform weights ``w``
    is that mean times ``n_valid * w = sum(w)``. Liger's JSD has the same beta convention
    (0 forward KL, 1 reverse KL) and no ``T^2`` factor (``w`` carries it).
    """
    global _LIGER_FAILED
    if backend == "torch" or _LIGER_FAILED or not hidden.is_cuda:
        return None
    lt = _liger_module()
    if lt is None:
        if backend == "liger":
            raise RuntimeError("backend='liger' but liger-kernel is not importable (pip install liger-kernel; "
                               "needs a CUDA GPU and triton)")
        return None
    w = _uniform_weight(token_weights)
    if w is None:
        return None
    valid = token_weights != 0
    h2 = hidden.reshape(-1, hidden.shape[-1])
    try:
        if divergence == "ce":
            y = torch.where(valid, labels, -100).reshape(-1)
            mean = lt.LigerFusedLinearCrossEntropyLoss(reduction="mean")(weight, h2, y)
        else:
            head = _teacher_head(teacher) if teacher is not None else None
            if head is None:
                return None
            th, tw = head
            vocab = min(weight.shape[0], tw.shape[0])
            b = {"forward_kl": 0.0, "reverse_kl": 1.0}.get(divergence, beta)
            y = torch.where(valid, 0, -100).reshape(-1)
            fn = lt.LigerFusedLinearJSD(jsd_beta=b, ignore_index=-100, temperature=temperature)
            th2 = th.detach().reshape(-1, th.shape[-1])
            mean = fn(h2, _head_rows(weight, vocab), th2, _head_rows(tw.detach(), vocab), y)
    except Exception as e:  # an API or version mismatch: fall back once, loudly
        _LIGER_FAILED = True
        warnings.warn(f"Liger fused loss failed ({type(e).__name__}: {e}); using the PyTorch fused path",
                      stacklevel=2)
        return None
    return mean.float() * (w * valid.sum())


# ----------------------------------------------------------------------------- components
def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"fused loss: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _require_head(student: StudentOutput, owner: str) -> None:
    if student.last_hidden is None or student.lm_head_weight is None:
        raise ValueError(f"{owner} needs the student's last_hidden and lm_head_weight (or its logits); the "
                         "student output has neither")


class _FusedDivergence:
    """Mixin: fused (hidden + head) divergence; chunked fallback when logits are present."""

    divergence: str = "forward_kl"
    needs = frozenset({STUDENT_LAST_HIDDEN, TEACHER_LOGITS, TEACHER_LAST_HIDDEN})
    teacher_kinds = frozenset({TeacherKind.FULL, TeacherKind.SPARSE})
    chunk_size: int | None
    scale_by_t2: bool
    backend: str

    def _beta(self) -> float:
        return 0.5

    def _fused_value(self, inputs: LossInputs) -> torch.Tensor:
        t = inputs.temperature
        student, teacher = inputs.student, inputs.teacher
        weights = CH.component_weights(inputs, t * t if self.scale_by_t2 else 1.0)
        head = _teacher_head(teacher)
        kind = TeacherKind.FULL if head is not None else teacher.kind
        if kind == TeacherKind.NONE:
            raise ValueError(f"{type(self).__name__} needs teacher logits, a teacher head or a sparse cache")
        kernel = CH.divergence_kernel(self.divergence, kind, t, self._beta(), bool(teacher.sampled))
        if student.logits is not None:
            logits = student.logits
            return CH.chunked_loss(logits, weights, kernel, _fetch(teacher, logits.shape[-1]), self.chunk_size)
        _require_head(student, type(self).__name__)
        out = _try_liger(self.divergence, self._beta(), t, student.last_hidden, student.lm_head_weight, teacher,
                         inputs.targets, weights, self.backend) if kind == TeacherKind.FULL else None
        if out is not None:
            return out
        w = student.lm_head_weight
        vocab = min(w.shape[0], _teacher_vocab(teacher) or w.shape[0])
        return fused_linear_loss(student.last_hidden, _head_rows(w, vocab), weights, kernel, _fetch(teacher, vocab),
                                 self.chunk_size)


class FusedForwardKL(_FusedDivergence, ForwardKL):
    """:class:`~distill.losses.components.ForwardKL` fused with the output head (no full logits).

    Value and gradients equal ``ForwardKL`` on ``last_hidden @ lm_head_weight.T``. Accepts a full
    teacher (logits, or ``last_hidden`` + ``lm_head_weight``) or a sparse cache. Returns the 0-dim
    ``sum(token_weights * value)``.

    Args:
        chunk_size: tokens per chunk (None: about ``2^24 / V``).
        scale_by_t2: multiply by ``T^2``.
        backend: "auto" (Liger on CUDA when installed and applicable, else PyTorch), "torch", or
            "liger" (error if Liger is not importable on a CUDA run).
    """

    divergence = "forward_kl"

    def __init__(self, chunk_size: int | None = None, scale_by_t2: bool = True, backend: str = "auto"):
        super().__init__(scale_by_t2=scale_by_t2)
        CH.rows_per_chunk(1, chunk_size)
        self.chunk_size, self.backend = chunk_size, _check_backend(backend)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return self._fused_value(inputs)


class FusedReverseKL(_FusedDivergence, ReverseKL):
    """:class:`~distill.losses.components.ReverseKL` fused with the output head. Args as
    :class:`FusedForwardKL`."""

    divergence = "reverse_kl"

    def __init__(self, chunk_size: int | None = None, scale_by_t2: bool = True, backend: str = "auto"):
        super().__init__(scale_by_t2=scale_by_t2)
        CH.rows_per_chunk(1, chunk_size)
        self.chunk_size, self.backend = chunk_size, _check_backend(backend)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return self._fused_value(inputs)


class FusedGeneralizedJSD(_FusedDivergence, GeneralizedJSD):
    """:class:`~distill.losses.components.GeneralizedJSD` fused with the output head.

    Args:
        beta: mixture weight (0 forward KL, 1 reverse KL).
        chunk_size, scale_by_t2, backend: as :class:`FusedForwardKL`.
    """

    divergence = "jsd"

    def __init__(self, beta: float = 0.5, chunk_size: int | None = None, scale_by_t2: bool = True,
                 backend: str = "auto"):
        super().__init__(beta=beta, scale_by_t2=scale_by_t2)
        CH.rows_per_chunk(1, chunk_size)
        self.chunk_size, self.backend = chunk_size, _check_backend(backend)

    def _beta(self) -> float:
        return self.beta

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return self._fused_value(inputs)


class FusedCrossEntropy(CrossEntropy):
    """:class:`~distill.losses.components.CrossEntropy` fused with the output head.

    Args:
        chunk_size: tokens per chunk (None: automatic).
        backend: as :class:`FusedForwardKL`.
    """

    needs = frozenset({STUDENT_LAST_HIDDEN})

    def __init__(self, chunk_size: int | None = None, backend: str = "auto"):
        super().__init__()
        CH.rows_per_chunk(1, chunk_size)
        self.chunk_size, self.backend = chunk_size, _check_backend(backend)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        student = inputs.student
        weights = CH.component_weights(inputs)
        kernel, fetch = CH.divergence_kernel("ce"), CH.label_rows(inputs.targets)
        if student.logits is not None:
            return CH.chunked_loss(student.logits, weights, kernel, fetch, self.chunk_size)
        _require_head(student, "FusedCrossEntropy")
        out = _try_liger("ce", 0.0, 1.0, student.last_hidden, student.lm_head_weight, None, inputs.targets,
                         weights, self.backend)
        if out is not None:
            return out
        return fused_linear_loss(student.last_hidden, student.lm_head_weight, weights, kernel, fetch,
                                 self.chunk_size)
