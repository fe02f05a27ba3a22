"""The contracts every layer shares: model shapes, model outputs, what a loss needs, teacher kinds.

This is the lowest module of the package (it imports nothing from ``distill``), so losses,
teachers, models and the training module can all depend on it without depending on each other.

* :class:`Need` names an output a loss component reads. The training module asks the models for
  exactly the union of the active components' needs (hidden states and attentions cost memory).
* :class:`TeacherKind` names the form of teacher signal (:class:`TeacherOutput.kind`): full logits
  from an online model, a sparse per-token support from a cache or a server, or none (API-born
  data). Components declare which kinds they accept; a mismatch fails before training.

Both are ``str`` enums: configs and old code that compare with ``"full"`` keep working, while a
misspelt member is an ``AttributeError`` and a misspelt string is refused where a component
declares its contract (see :func:`as_needs`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import torch


class Need(str, Enum):
    """An output a loss component may read."""

    STUDENT_LOGITS = "student_logits"
    #: full teacher logits, or a sparse support when the component accepts :attr:`TeacherKind.SPARSE`
    TEACHER_LOGITS = "teacher_logits"
    STUDENT_HIDDEN = "student_hidden_states"
    TEACHER_HIDDEN = "teacher_hidden_states"
    STUDENT_ATTN = "student_attentions"
    TEACHER_ATTN = "teacher_attentions"
    #: fused losses take the final hidden states and the lm_head weight instead of the logits. A
    #: component listing TEACHER_LAST_HIDDEN next to TEACHER_LOGITS accepts either; when every
    #: logit-reading component does, the teacher runs without its head.
    STUDENT_LAST_HIDDEN = "student_last_hidden"
    TEACHER_LAST_HIDDEN = "teacher_last_hidden"
    #: only the teacher's log-probability of each target token (:attr:`TeacherOutput.sampled_logprobs`):
    #: what on-policy distillation reads, so a served or cross-tokenizer teacher can answer it
    #: without a distribution (``distill.losses.opd.sampled_token_logprobs`` fills it from logits,
    #: a head or a top-k support)
    TEACHER_SAMPLED_LOGPROB = "teacher_sampled_logprob"

    def __str__(self) -> str:  # log lines and error messages show the plain name
        return self.value


class TeacherKind(str, Enum):
    """The form of a teacher's signal (see :class:`TeacherOutput`)."""

    FULL = "full"
    SPARSE = "sparse"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


#: The needs a teacher answers (the rest are the student's).
TEACHER_NEEDS = frozenset({Need.TEACHER_LOGITS, Need.TEACHER_LAST_HIDDEN, Need.TEACHER_HIDDEN, Need.TEACHER_ATTN,
                           Need.TEACHER_SAMPLED_LOGPROB})


def _coerce(enum: type[Enum], values: Iterable, owner: str, what: str) -> frozenset:
    out = set()
    for v in values:
        try:
            out.add(enum(v.value if isinstance(v, Enum) else v))
        except ValueError:
            valid = ", ".join(repr(m.value) for m in enum)
            raise TypeError(f"{owner}.{what}: unknown value {v!r}; valid values are {valid} "
                            f"(use distill.types.{enum.__name__})") from None
    return frozenset(out)


def as_needs(values: Iterable, owner: str = "component") -> frozenset[Need]:
    """``values`` as :class:`Need` members; an unknown name raises ``TypeError`` naming ``owner``."""
    return _coerce(Need, values, owner, "needs")


def as_teacher_kinds(values: Iterable, owner: str = "component") -> frozenset[TeacherKind]:
    """``values`` as :class:`TeacherKind` members; an unknown name raises ``TypeError``."""
    return _coerce(TeacherKind, values, owner, "teacher_kinds")


@dataclass
class ModelInfo:
    """Shape facts about a model, read from its config without loading weights."""

    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int

    @classmethod
    def from_hf_config(cls, config) -> "ModelInfo":
        config = getattr(config, "text_config", None) or config
        return cls(hidden_size=config.hidden_size, num_layers=config.num_hidden_layers,
                   num_heads=config.num_attention_heads, vocab_size=config.vocab_size)


@dataclass
class TeacherOutput:
    """What a teacher contributes to one batch.

    The loss code never asks *where* teacher signal came from. An online Hugging Face teacher fills
    ``logits`` (and hidden states / attentions when a loss asks for them); an offline cache or a
    remote server fills the sparse fields; an API-born dataset has no teacher signal at all
    (:meth:`none`), so only hard-label components can run.

    Attributes:
        logits: ``(B, L, V)`` full next-token logits, or None.
        topk_ids: ``(B, L, K)`` int token ids of the sparse support, or None.
        topk_logprobs: ``(B, L, K)`` teacher log-probabilities (at temperature 1) on that support.
        sampled: True when the sparse support was importance-sampled rather than top-k; then
            ``topk_logprobs`` hold log of the *estimator weights* that sum to 1 per token
            (see ``distill.losses.sparse``).
        tail: ``(B, L)`` stored tail mass ``1 - sum exp(topk_logprobs)`` of a top-k support, or
            None (then derived from ``topk_logprobs``).
        hidden_states: tuple of ``(B, L, D_t)``, embeddings first (as Hugging Face returns them).
        attentions: tuple of ``(B, H_t, L, L)`` per layer.
        last_hidden / lm_head_weight: ``(B, L, D_t)`` and ``(V, D_t)``: a full teacher given as its
            final hidden states and output head, so fused losses never materialise its logits.
        sampled_logprobs: ``(B, L)`` the teacher's log-probability (at temperature 1) of the target
            token at each position (``log p(targets[b, t] | prefix)``; anything finite where the
            target is -100), or None. Asked for by :attr:`Need.TEACHER_SAMPLED_LOGPROB`; it does not
            change :attr:`kind` (a teacher with only this field has no distribution to compare).
        positions, member_top1, member_picked: optional extras of cross-tokenizer and ensemble
            teachers (alignment mask; per-member argmax and selection, for their log lines).
        member_rows: a routed teacher's ``{member: (B,) bool}``: the rows each member scored (for
            the per-member log lines).
    """

    logits: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    sampled: bool = False
    tail: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    last_hidden: torch.Tensor | None = None
    lm_head_weight: torch.Tensor | None = None
    #: ``(B, L)`` bool: positions the teacher's own tokenization aligns to (cross-tokenizer teachers)
    positions: torch.Tensor | None = None
    #: ensemble teachers: ``{member: (B, L) top-1 ids}`` and ``{member: (B, L) bool}`` where it was selected
    member_top1: dict | None = None
    member_picked: dict | None = None
    #: routed teachers: ``{member: (B,) bool}`` rows each member scored
    member_rows: dict | None = None
    sampled_logprobs: torch.Tensor | None = None

    @property
    def kind(self) -> TeacherKind:
        if self.logits is not None or self.lm_head_weight is not None:
            return TeacherKind.FULL
        if self.topk_logprobs is not None:
            return TeacherKind.SPARSE
        return TeacherKind.NONE

    @classmethod
    def none(cls) -> "TeacherOutput":
        return cls()


@dataclass
class StudentOutput:
    """What the student produced for one batch (same conventions as :class:`TeacherOutput`).

    ``logits`` is None when a fused loss computes from ``last_hidden`` and ``lm_head_weight``
    without materialising the full-vocabulary logits.
    """

    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    last_hidden: torch.Tensor | None = None
    lm_head_weight: torch.Tensor | None = None
