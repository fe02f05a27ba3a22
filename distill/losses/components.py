"""Loss components: one ``nn.Module`` per distillation signal.

A component turns a student's and a teacher's outputs into **per-token values** ``(B, L)``; the
combiner (:mod:`distill.losses.combine`) owns weights, schedules, temperature, masking and
normalisation. To add your own, subclass :class:`~distill.losses.base.LossComponent` anywhere (your
own package is fine), declare what it ``needs``, implement ``forward`` and name the class by
``_target_`` in a loss config; for a divergence subclass :class:`~distill.losses.base.Divergence`
and write only ``per_token`` (it then runs plain, chunked, fused and on a sparse teacher). Nothing in
``distill/`` has to change.

Alignment: every tensor is per input position. ``inputs.targets[:, t]`` is the token that
position ``t`` predicts (the next token) or ``-100``; ``inputs.mask`` is ``targets != -100``.
Logits are ``(B, L, V)``, hidden states ``(B, L, D)``, attentions ``(B, H, L, L)``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses import functional as LF
from distill.losses.base import Divergence, LogitLoss, LossComponent  # noqa: F401  (the names configs use)
from distill.losses.inputs import LossInputs, PerToken, Reduced  # noqa: F401
from distill.losses.kernels import cross_entropy_kernel, forward_kl_kernel, jsd_kernel, reverse_kl_kernel
from distill.losses.sparse import REVERSE_KL_MIN_LOG_PROB, sparse_forward_kl_kernel
from distill.losses.targets import Labels, Target
from distill.types import ModelInfo, Need, TeacherKind  # noqa: F401

# The contract's names, kept here too so that components written against them keep importing.
STUDENT_LOGITS, TEACHER_LOGITS = Need.STUDENT_LOGITS, Need.TEACHER_LOGITS
STUDENT_HIDDEN, TEACHER_HIDDEN = Need.STUDENT_HIDDEN, Need.TEACHER_HIDDEN
STUDENT_ATTN, TEACHER_ATTN = Need.STUDENT_ATTN, Need.TEACHER_ATTN
STUDENT_LAST_HIDDEN, TEACHER_LAST_HIDDEN = Need.STUDENT_LAST_HIDDEN, Need.TEACHER_LAST_HIDDEN
FULL, SPARSE, NONE = TeacherKind.FULL, TeacherKind.SPARSE, TeacherKind.NONE


class CrossEntropy(LogitLoss):
    """Hard-label cross-entropy on the data: ``-log q_S(y_t)``.

    The supervised term of Hinton et al. (2015), and the whole loss of sequence-level KD (Kim &
    Rush, 2016) where the data itself was written by the teacher. Read from the student's
    log-softmax that the step's divergences share (at ``T = 1``).
    """

    def per_token(self, student_lp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # nll_loss on log_softmax is what F.cross_entropy computes: same values and gradient, bit for bit
        flat = F.nll_loss(student_lp.reshape(-1, student_lp.shape[-1]), labels.reshape(-1), reduction="none",
                          ignore_index=LF.IGNORE_INDEX)
        return flat.reshape(labels.shape)

    def target(self, inputs: LossInputs) -> Target:
        return Labels(inputs.targets)

    def closed_form(self, target: Target, temperature: float):
        return cross_entropy_kernel

    def liger(self, liger, target, hidden, weight, token_weights, temperature):
        return liger.cross_entropy(hidden, weight, target.labels, token_weights)


class ForwardKL(Divergence):
    """Soft forward KL (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network").

    ``T^2 * KL(p_T^T || q_S^T)`` per token, with ``p^T = softmax(z / T)``. Mean-seeking: the
    student spreads mass over everything the teacher finds plausible. Against an importance-sampled
    cache, the unbiased estimator of Anshumann et al. (2025) (:mod:`distill.losses.sparse`).
    """

    def per_token(self, student_lp, teacher_lp):
        return LF.kl_from_log_probs(teacher_lp, student_lp)

    def supports_sampled(self) -> bool:
        return True

    def closed_form(self, target: Target, temperature: float):
        if target.sparse:
            return partial(sparse_forward_kl_kernel, temperature=temperature, sampled=target.sampled)
        return partial(forward_kl_kernel, temperature=temperature)

    def liger(self, liger, target, hidden, weight, token_weights, temperature):
        return liger.jsd(hidden, weight, target.head, token_weights, 0.0, temperature)


class ReverseKL(Divergence):
    """Reverse KL (Gu et al., 2024, "MiniLLM: Knowledge Distillation of Large Language Models").

    ``T^2 * KL(q_S^T || p_T^T)`` per token. Mode-seeking: the student commits to the teacher's
    main modes instead of covering its tail, which suits small students on open-ended generation.
    On a top-k teacher the teacher's buckets are floored at ``1e-12`` (it is in the denominator).
    """

    def per_token(self, student_lp, teacher_lp):
        return LF.kl_from_log_probs(student_lp, teacher_lp)

    def sparse_floor(self) -> float | None:
        return REVERSE_KL_MIN_LOG_PROB

    def closed_form(self, target: Target, temperature: float):
        return None if target.sparse else partial(reverse_kl_kernel, temperature=temperature)

    def liger(self, liger, target, hidden, weight, token_weights, temperature):
        return liger.jsd(hidden, weight, target.head, token_weights, 1.0, temperature)


class GeneralizedJSD(Divergence):
    """Generalised JSD (Agarwal et al., 2024, "On-Policy Distillation of Language Models" / GKD).

    ``T^2 * [beta KL(p || m) + (1 - beta) KL(q || m)]`` with ``m = beta p + (1 - beta) q``;
    ``beta = 0`` is forward KL and ``beta = 1`` reverse KL (TRL's convention).
    """

    def __init__(self, beta: float = 0.5, scale_by_t2: bool = True, execution=None):
        super().__init__(scale_by_t2, execution)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"loss component GeneralizedJSD: beta must be in [0, 1], got {beta}")
        self.beta = float(beta)

    def per_token(self, student_lp, teacher_lp):
        return LF.jsd_from_log_probs(student_lp, teacher_lp, self.beta)

    def sparse_floor(self) -> float | None:
        return REVERSE_KL_MIN_LOG_PROB if self.beta == 1.0 else None

    def supports_sampled(self) -> bool:
        return self.beta == 0.0  # forward KL

    def closed_form(self, target: Target, temperature: float):
        if not target.sparse:
            return partial(jsd_kernel, temperature=temperature, beta=self.beta)
        if self.beta == 0.0:
            return partial(sparse_forward_kl_kernel, temperature=temperature, sampled=target.sampled)
        return None

    def liger(self, liger, target, hidden, weight, token_weights, temperature):
        return liger.jsd(hidden, weight, target.head, token_weights, self.beta, temperature)


def resolve_layer_map(layer_map: str | list, student_layers: int, teacher_layers: int,
                      owner: str) -> list[tuple[int, int]]:
    """Pairs ``(student_layer, teacher_layer)`` indexing Hugging Face ``hidden_states``/layers.

    For hidden states index 0 is the embedding output and ``1..N`` the blocks; for attentions
    ``0..N-1`` are the blocks (the caller passes the right counts).

    Args:
        layer_map: ``"uniform"`` (student block i <-> teacher block round(i * N_t / N_s)),
            ``"last"`` (final blocks only) or an explicit list of ``[student, teacher]`` pairs.
    """
    if layer_map == "last":
        return [(student_layers, teacher_layers)]
    if layer_map == "uniform":
        return [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]
    if isinstance(layer_map, str):
        raise ValueError(f"{owner}.layer_map: unknown value {layer_map!r}; use 'uniform', 'last' or a "
                         "list of [student_layer, teacher_layer] pairs")
    pairs = [tuple(int(x) for x in pair) for pair in layer_map]
    for s, t in pairs:
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise ValueError(f"{owner}.layer_map: pair [{s}, {t}] is out of range (student has "
                             f"{student_layers}, teacher {teacher_layers} layers)")
    return pairs


class HiddenStateMatch(LossComponent):
    """Hidden-state matching (FitNets, Romero et al., 2015; TinyBERT, Jiao et al., 2020).

    For each layer pair ``(i, j)``: ``d(W h_S^i, h_T^j)`` per token, averaged over pairs, with
    ``d`` the mean squared error over features (``loss="mse"``) or ``1 - cos`` (``loss="cosine"``).
    ``W`` is a learned linear projection (trained with the student and saved in checkpoints),
    created when the widths differ or ``project=True``; identity otherwise.
    """

    needs = frozenset({STUDENT_HIDDEN, TEACHER_HIDDEN})
    teacher_kinds = frozenset({FULL})

    def __init__(self, loss: str = "mse", layer_map: str | list = "uniform", project: bool | None = None):
        super().__init__()
        if loss not in ("mse", "cosine"):
            raise ValueError(f"loss component HiddenStateMatch: loss must be 'mse' or 'cosine', got {loss!r}")
        self.loss, self.layer_map, self.project = loss, layer_map, project
        self.pairs: list[tuple[int, int]] = []
        self.projections = nn.ModuleList()

    def configure(self, student: ModelInfo, teacher: ModelInfo | None) -> None:
        if teacher is None:
            raise ValueError("HiddenStateMatch needs an online teacher's hidden states (teacher=none has none)")
        self.pairs = resolve_layer_map(self.layer_map, student.num_layers, teacher.num_layers, "HiddenStateMatch")
        project = self.project if self.project is not None else student.hidden_size != teacher.hidden_size
        if not project and student.hidden_size != teacher.hidden_size:
            raise ValueError(f"HiddenStateMatch: widths differ ({student.hidden_size} vs {teacher.hidden_size}) "
                             "so project=false cannot work; set project=true or leave it unset")
        if project and len(self.projections) == 0:
            self.projections = nn.ModuleList(
                nn.Linear(student.hidden_size, teacher.hidden_size, bias=False) for _ in self.pairs)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        hs, ht = inputs.student.hidden_states, inputs.teacher.hidden_states
        total = 0.0
        for k, (i, j) in enumerate(self.pairs):
            s = hs[i]
            if len(self.projections):
                s = self.projections[k](s.to(self.projections[k].weight.dtype))
            s, t = LF.upcast(s), LF.upcast(ht[j]).detach()
            if self.loss == "mse":
                d = (s - t).pow(2).mean(-1)
            else:
                d = 1.0 - torch.nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-6)
            total = total + d
        return total / len(self.pairs)


def _group_heads(attn: torch.Tensor, groups: int) -> torch.Tensor:
    """Average ``(B, H, L, L)`` attention probabilities into ``groups`` head groups.

    Averaging probabilities (not scores) keeps every row a distribution.
    """
    b, h, lq, lk = attn.shape
    return attn.reshape(b, groups, h // groups, lq, lk).mean(2)


class AttentionMatch(LossComponent):
    """Attention-map transfer (TinyBERT, Jiao et al., 2020; MiniLM, Wang et al., 2020).

    For each layer pair and query position ``t``: ``KL(A_T[t, :] || A_S[t, :])`` over keys
    (``loss="kl"``, MiniLM) or the mean squared difference (``loss="mse"``, TinyBERT), averaged
    over heads and layer pairs. When head counts differ, the larger side's heads are averaged in
    groups down to the smaller count if it divides evenly, otherwise both sides are averaged to a
    single map. Needs eager attention: the module switches both models to it and says so.
    """

    needs = frozenset({STUDENT_ATTN, TEACHER_ATTN})
    teacher_kinds = frozenset({FULL})

    def __init__(self, loss: str = "kl", layer_map: str | list = "uniform"):
        super().__init__()
        if loss not in ("kl", "mse"):
            raise ValueError(f"loss component AttentionMatch: loss must be 'kl' or 'mse', got {loss!r}")
        self.loss, self.layer_map = loss, layer_map
        self.pairs: list[tuple[int, int]] = []
        self.heads: tuple[int, int] = (1, 1)

    def configure(self, student: ModelInfo, teacher: ModelInfo | None) -> None:
        if teacher is None:
            raise ValueError("AttentionMatch needs an online teacher's attentions (teacher=none has none)")
        # attentions are indexed 0..N-1 (no embedding entry): shift the 1-based map down by one.
        pairs = resolve_layer_map(self.layer_map, student.num_layers, teacher.num_layers, "AttentionMatch")
        if self.layer_map in ("uniform", "last"):
            pairs = [(s - 1, t - 1) for s, t in pairs]
        self.pairs = pairs
        self.heads = (student.num_heads, teacher.num_heads)

    def _match_heads(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hs, ht = s.shape[1], t.shape[1]
        if hs == ht:
            return s, t
        if ht % hs == 0:
            return s, _group_heads(t, hs)
        if hs % ht == 0:
            return _group_heads(s, ht), t
        return s.mean(1, keepdim=True), t.mean(1, keepdim=True)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        a_s, a_t = inputs.student.attentions, inputs.teacher.attentions
        total = 0.0
        for i, j in self.pairs:
            s, t = self._match_heads(LF.upcast(a_s[i]), LF.upcast(a_t[j]).detach())
            if self.loss == "kl":
                # xlogy gives 0 for zero-probability keys (future or padded positions).
                d = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(1e-12))).sum(-1)
            else:
                d = (s - t).pow(2).sum(-1)
            total = total + d.mean(1)  # mean over heads -> (B, L)
        return total / len(self.pairs)
