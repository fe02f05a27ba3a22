"""What a logit loss compares the student's distribution with: the labels, a full teacher or a sparse one.

A :class:`Target` hands the execution strategies (:mod:`distill.losses.strategy`,
:mod:`~distill.losses.chunked`, :mod:`~distill.losses.fused`) the two sides of a component's
``per_token(student, target)`` in the form each needs:

* :meth:`Target.whole`: over the whole ``(B, L)`` batch, from the student's shared log-softmax
  (plain execution);
* :meth:`Target.rows` and :meth:`Target.pair`: row by row, for a chunk kernel (chunked and fused
  execution), where the rows are fetched for the unmasked tokens only.

The sparse target is where a divergence meets a top-k teacher: both sides are coarse-grained onto
the teacher's ``K`` support buckets plus one tail bucket (:mod:`distill.losses.sparse`), and the
same ``per_token`` runs on those, so every divergence gets sparse execution without a sparse copy.
"""

from __future__ import annotations

from typing import Any

import torch

from distill.losses import sparse as SP
from distill.losses.functional import log_probs, upcast
from distill.losses.inputs import LossInputs
from distill.losses.kernels import Index, RowFetch
from distill.types import TeacherKind


# ----------------------------------------------------------------------------- row fetchers
def full_rows(teacher_logits: torch.Tensor, vocab_size: int | None = None) -> RowFetch:
    """Rows of full teacher logits ``(..., V_t)`` as ``(n, V)`` in at least fp32 (first ``vocab_size`` ids)."""
    def fetch(idx: Index) -> torch.Tensor:
        rows = teacher_logits.detach()[idx]
        if vocab_size is not None and rows.shape[-1] != vocab_size:
            rows = rows[:, :vocab_size]
        return upcast(rows)
    return fetch


def head_rows(weight: torch.Tensor, vocab: int | None) -> torch.Tensor:
    """The first ``vocab`` rows of an output head ``(V, D)`` (all when None or ``vocab >= V``)."""
    # Slice only when needed: a slice's backward allocates a second full (V, D) gradient.
    return weight if vocab is None or vocab >= weight.shape[0] else weight[:vocab]


def hidden_rows(teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, vocab_size: int | None) -> RowFetch:
    """Teacher logit rows formed on the fly, ``upcast(h_t[idx] W_t[:V]^T)``, never differentiated."""
    tw = head_rows(teacher_weight.detach(), vocab_size)
    th = teacher_hidden.detach()
    return lambda idx: upcast(th[idx].to(tw.dtype) @ tw.T)


def sparse_rows(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, tail: torch.Tensor | None = None) -> RowFetch:
    """Rows of a sparse teacher: ``(ids (n, K), logprobs (n, K), tail (n,) or None)``."""
    return lambda idx: (topk_ids[idx], topk_logprobs.detach()[idx], None if tail is None else tail.detach()[idx])


def label_rows(labels: torch.Tensor) -> RowFetch:
    """Rows of hard labels ``(n,)``."""
    return lambda idx: labels[idx]


def teacher_head(teacher) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(last_hidden, lm_head_weight)`` when the teacher came as its final hidden states and head."""
    h, w = getattr(teacher, "last_hidden", None), getattr(teacher, "lm_head_weight", None)
    return (h, w) if h is not None and w is not None else None


# ----------------------------------------------------------------------------- targets
class Target:
    """Base class. ``sparse``/``sampled`` say which closed-form kernel fits; ``vocab`` is the target's
    vocabulary size (None: no vocabulary, labels); ``positions (B, L)`` restricts the loss further
    than the mask (a cross-tokenizer teacher's aligned positions) or is None."""

    sparse = False
    sampled = False
    vocab: int | None = None
    positions: torch.Tensor | None = None
    head: tuple[torch.Tensor, torch.Tensor] | None = None

    def whole(self, student_lp: torch.Tensor, temperature: float) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def rows(self, vocab: int | None) -> RowFetch:
        raise NotImplementedError

    def pair(self, student_lp: torch.Tensor, rows: Any, temperature: float) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError


class Labels(Target):
    """Hard labels ``(B, L)`` (``-100`` ignored): the target of cross-entropy."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def whole(self, student_lp, temperature):
        return student_lp, self.labels

    def rows(self, vocab):
        return label_rows(self.labels)

    def pair(self, student_lp, rows, temperature):
        return student_lp, rows


class FullTeacher(Target):
    """A teacher's full distribution, from its logits or from its final hidden states and head.

    Args:
        inputs: the micro-batch; ``inputs.teacher`` (rows at masked positions finite) serves the
            whole-batch path, ``inputs.raw_teacher`` the row path (which reads unmasked rows only).
        shared_vocabulary: compare on the student's ids (teacher rows cut to the student's ``V``).
    """

    def __init__(self, inputs: LossInputs, shared_vocabulary: bool = True):
        self.teacher, self.raw = inputs.teacher, inputs.raw_teacher
        self.shared = shared_vocabulary
        self.head = teacher_head(self.raw)
        self.vocab = self.head[1].shape[0] if self.head is not None else self.raw.logits.shape[-1]
        self.positions = getattr(self.raw, "positions", None)

    def whole(self, student_lp, temperature):
        if self.head is not None and self.teacher.logits is None:
            t = self.teacher.last_hidden.detach()
            t = t.to(self.head[1].dtype) @ self.head[1].detach().T
        else:
            t = self.teacher.logits.detach()
        if self.shared and t.shape[-1] > student_lp.shape[-1]:
            t = t[..., :student_lp.shape[-1]]
        return student_lp, log_probs(t, temperature)

    def rows(self, vocab):
        if self.head is not None:
            return hidden_rows(self.head[0], self.head[1], vocab)
        return full_rows(self.raw.logits, vocab)

    def pair(self, student_lp, rows, temperature):
        return student_lp, log_probs(rows, temperature)


class SparseTeacher(Target):
    """A top-k (or importance-sampled) teacher: both sides on the support buckets plus the tail.

    Args:
        inputs: the micro-batch.
        floor: lower bound of the teacher's bucket log-probabilities, for divergences with the
            teacher in a denominator (reverse KL), or None.
        sampled_ok: whether the divergence has an unbiased estimate from an importance-sampled
            support (linear in the teacher: forward KL); a sampled cache is refused otherwise.
        owner: the component's name, for errors.
    """

    sparse = True

    def __init__(self, inputs: LossInputs, floor: float | None = None, sampled_ok: bool = False,
                 owner: str = "component"):
        self.teacher, self.raw = inputs.teacher, inputs.raw_teacher
        self.sampled = bool(self.raw.sampled)
        if self.sampled and not sampled_ok:
            SP._no_sampled(True, owner)
        self.floor = floor
        self.positions = getattr(self.raw, "positions", None)

    def _buckets(self, student_lp, ids, lp, tail, temperature):
        ids = ids.long()
        if self.sampled:
            SP._check_sampled_temperature(temperature)
            # log of the estimator weights as the "teacher", the student at the drawn ids, no tail:
            # forward KL is then the importance-weighted cross-entropy (minus a plug-in entropy).
            return student_lp.gather(-1, ids), lp.float().clamp_min(torch.finfo(torch.float32).min)
        with_tail = SP._has_tail(ids, student_lp.shape[-1])
        p = SP.teacher_bucket_log_probs(lp, temperature, with_tail, tail)
        if self.floor is not None:
            p = p.clamp_min(self.floor)
        return SP.student_buckets(student_lp, ids, with_tail), p

    def whole(self, student_lp, temperature):
        t = self.teacher
        return self._buckets(student_lp, t.topk_ids, t.topk_logprobs.detach(), SP.teacher_tail(t), temperature)

    def rows(self, vocab):
        t = self.raw
        return sparse_rows(t.topk_ids, t.topk_logprobs, SP.teacher_tail(t))

    def pair(self, student_lp, rows, temperature):
        ids, lp, tail = rows
        return self._buckets(student_lp, ids, lp, tail, temperature)


def teacher_target(inputs: LossInputs, shared_vocabulary: bool = True, floor: float | None = None,
                   sampled_ok: bool = False, owner: str = "component") -> Target:
    """The target a divergence compares with, picked by the teacher's output (full or sparse)."""
    kind = inputs.raw_teacher.kind
    if kind == TeacherKind.SPARSE:
        return SparseTeacher(inputs, floor, sampled_ok, owner)
    if kind == TeacherKind.FULL:
        return FullTeacher(inputs, shared_vocabulary)
    raise ValueError(f"{owner} needs teacher logits, a teacher head or a sparse cache, but the teacher has none")

