"""One output type for every kind of teacher.

The loss code never asks *where* teacher signal came from. An online Hugging Face teacher fills
``logits`` (and hidden states / attentions when a loss asks for them); an offline cache fills the
sparse fields (``topk_ids``, ``topk_logprobs``: the teacher's log-probabilities on a per-token
support, top-k or importance-sampled); an API-born dataset has no teacher signal at all
(``TeacherOutput.none()``), so only hard-label components can run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

TeacherKind = Literal["full", "sparse", "none"]


@dataclass
class TeacherOutput:
    """What a teacher contributes to one batch.

    Attributes:
        logits: ``(B, L, V)`` full next-token logits, or None.
        topk_ids: ``(B, L, K)`` int token ids of the cached support, or None.
        topk_logprobs: ``(B, L, K)`` teacher log-probabilities (at temperature 1) on that support.
        sampled: True when the sparse support was importance-sampled rather than top-k; then
            ``topk_logprobs`` hold log of the *estimator weights* that sum to 1 per token
            (see ``distill.losses.sparse``).
        tail: ``(B, L)`` stored tail mass ``1 - sum exp(topk_logprobs)`` of a top-k cache, or None
            (then derived from ``topk_logprobs``).
        hidden_states: tuple of ``(B, L, D_t)``, embeddings first (as Hugging Face returns them).
        attentions: tuple of ``(B, H_t, L, L)`` per layer.
        last_hidden / lm_head_weight: ``(B, L, D_t)`` and ``(V, D_t)``: a full teacher given as its
            final hidden states and output head, so fused losses never materialise its logits.
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

    @property
    def kind(self) -> TeacherKind:
        if self.logits is not None or self.lm_head_weight is not None:
            return "full"
        if self.topk_logprobs is not None:
            return "sparse"
        return "none"

    @classmethod
    def none(cls) -> "TeacherOutput":
        return cls()


@dataclass
class StudentOutput:
    """What the student produced for one batch (same conventions as :class:`TeacherOutput`).

    ``logits`` may be None when a fused loss computes from ``last_hidden`` and ``lm_head_weight``
    without materialising the full-vocabulary logits.
    """

    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    last_hidden: torch.Tensor | None = None
    lm_head_weight: torch.Tensor | None = None
