"""Token weighting and selection: one per-token weight ``w[b, t] >= 0`` that the combiner applies.

The combiner (:class:`distill.losses.combine.DistillationLoss`) multiplies the weighted
components' per-token values by ``w`` *before* its usual step-level normalisation::

    term = sum_{b,t} mask[b,t] * w[b,t] * value[b,t] / N_step

``N_step`` stays the step's token count, so the weights never change how a step is split into
micro-batches: every strategy here computes ``w`` for a token from that token's own outputs
(and, for selection, from a threshold fixed for the whole step), never from a micro-batch
statistic (a sequence is never split across micro-batches, so a per-sequence ranking is allowed).
Weights are detached: they say how much a token counts, not a path for gradients.

Strategies:

* :class:`TeacherConfidence`: ``w = max_v p_v`` or ``w = 1 - H(p) / log V``.
* :class:`EntropySelection` (SE-KD, Tavor et al., 2026, arXiv 2602.01395): distil only the
  top-``ratio`` fraction of tokens by student (or teacher) entropy, ranked within each sequence
  (or against a threshold from the previous step).
* :class:`DifficultyFocus`: a focal-style weight ``w = s^gamma`` on AdaKD's token difficulty
  ``s`` (the Hellinger distance between teacher and student, Xie et al., 2025, arXiv 2510.11615).

Chunked and fused components receive ``w`` inside ``LossInputs.token_weights``, so they are
weighted exactly like the plain ones.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from distill.losses.components import LossInputs
from distill.losses.functional import log_probs
from distill.types import ModelInfo, Need, TeacherKind, as_needs, as_teacher_kinds

#: Rows of ``hidden @ head.T`` formed at once when a teacher comes as hidden states + head.
_ROWS = 1024


def _teacher_log_probs(inputs: LossInputs, temperature: float = 1.0):
    """Yield ``(index, log p (n, V))`` blocks of the teacher's distribution for the masked tokens.

    Works from full logits or from the teacher's final hidden states and head (never holding the
    ``(B, L, V)`` logits then).
    """
    teacher, mask = inputs.teacher, inputs.mask
    idx = torch.nonzero(mask, as_tuple=True)
    head = (getattr(teacher, "last_hidden", None), getattr(teacher, "lm_head_weight", None))
    for a in range(0, idx[0].numel(), _ROWS):
        ic = tuple(i[a:a + _ROWS] for i in idx)
        if teacher.logits is not None:
            rows = teacher.logits[ic]
        elif head[0] is not None and head[1] is not None:
            rows = head[0][ic].to(head[1].dtype) @ head[1].T
        else:
            raise ValueError("token weighting by the teacher needs its full distribution (logits or hidden "
                             f"states + head); the teacher is '{teacher.kind}'")
        yield ic, log_probs(rows.detach(), temperature)


def _student_logits(inputs: LossInputs, owner: str) -> torch.Tensor:
    logits = inputs.student.logits
    if logits is None:
        raise ValueError(f"{owner} reads the student's logits, but the student ran without its head")
    return logits.detach()


def _zeros(inputs: LossInputs) -> torch.Tensor:
    """``(B, L)`` zeros in the precision of the logits (at least float32; float64 runs stay float64)."""
    ref = inputs.student.logits if inputs.student.logits is not None else inputs.teacher.logits
    dtype = torch.promote_types(ref.dtype, torch.float32) if ref is not None else torch.float32
    return torch.zeros(inputs.mask.shape, dtype=dtype, device=inputs.mask.device)


def entropy(lp: torch.Tensor) -> torch.Tensor:
    """``H = -sum_v p_v log p_v`` per row of log-probabilities ``(..., V)`` (0 log 0 = 0)."""
    return -(lp.exp() * lp).sum(-1)


class TokenWeighting(nn.Module):
    """Base class: ``forward(inputs) -> (B, L)`` float32 weights >= 0 (masked positions are ignored).

    Class attributes, as on :class:`~distill.losses.components.LossComponent`:
        needs: outputs read (the models are asked for them).
        teacher_kinds: teacher forms it works with (checked before training).
    """

    needs: ClassVar[frozenset[Need]] = frozenset()
    teacher_kinds: ClassVar[frozenset[TeacherKind]] = frozenset(TeacherKind)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.needs = as_needs(cls.needs, cls.__name__)
        cls.teacher_kinds = as_teacher_kinds(cls.teacher_kinds, cls.__name__)

    def configure(self, student: ModelInfo, teacher: ModelInfo | None, teacher_kind: str) -> None:
        """Refuse a teacher it cannot read (``ValueError`` naming the fix)."""
        if teacher_kind not in self.teacher_kinds:
            raise ValueError(f"loss.token_weighting ({type(self).__name__}) cannot use a '{teacher_kind}' teacher "
                             f"(it accepts {sorted(str(k) for k in self.teacher_kinds)}). Use another strategy or an "
                             "online teacher.")

    def forward(self, inputs: LossInputs) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TeacherConfidence(TokenWeighting):
    """Weight each token by how sure the teacher is: ``max_v p_v`` or ``1 - H(p) / log V``.

    Both lie in ``[0, 1]`` (1 = one-hot teacher). Computed on the teacher at temperature 1 (the
    distribution it predicts, not the softened training target). ``max_prob`` also works on a
    cached top-k teacher (its first entry is the argmax); ``entropy`` needs the full distribution.

    Args:
        measure: "max_prob" or "entropy".
    """

    needs = frozenset({Need.TEACHER_LOGITS, Need.TEACHER_LAST_HIDDEN})
    teacher_kinds = frozenset({TeacherKind.FULL, TeacherKind.SPARSE})

    def __init__(self, measure: str = "max_prob"):
        super().__init__()
        if measure not in ("max_prob", "entropy"):
            raise ValueError(f"loss.token_weighting.measure must be 'max_prob' or 'entropy', got {measure!r}")
        self.measure = measure

    def configure(self, student, teacher, teacher_kind) -> None:
        super().configure(student, teacher, teacher_kind)
        if teacher_kind == TeacherKind.SPARSE and self.measure == "entropy":
            raise ValueError("loss.token_weighting.measure=entropy needs the teacher's full distribution, but the "
                             "teacher is a sparse cache; use measure=max_prob or an online teacher")

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        teacher = inputs.teacher
        w = _zeros(inputs)
        if teacher.kind == TeacherKind.SPARSE:
            if teacher.sampled:
                raise ValueError("TeacherConfidence: a sampled cache holds estimator weights, not the teacher's "
                                 "top probability; use a top-k cache (cache.mode=topk) or an online teacher")
            return teacher.topk_logprobs.detach().float().amax(-1).exp()
        for ic, lp in _teacher_log_probs(inputs):
            if self.measure == "max_prob":
                w[ic] = lp.amax(-1).exp().to(w.dtype)
            else:
                w[ic] = (1.0 - entropy(lp) / math.log(lp.shape[-1])).clamp(0.0, 1.0).to(w.dtype)
        return w


class DifficultyFocus(TokenWeighting):
    """Focal-style difficulty weighting: ``w = s^gamma`` with AdaKD's token difficulty ``s``.

    ``s = (1 / sqrt 2) * || sqrt p - sqrt q ||_2``, the Hellinger distance between teacher and
    student at temperature 1 (AdaKD, Xie et al., 2025, eq. 1), in ``[0, 1]``: hard tokens (where
    the student is far from the teacher) count more, easy ones less. Choice: AdaKD uses ``s`` to
    pick a dynamic fraction of hard tokens (LATF) and a per-token temperature (IDTS); here it is
    the focal weight ``s^gamma`` (Lin et al., 2017's shape), which keeps every token and needs no
    cross-micro-batch statistics. ``gamma = 0`` weights every token 1.

    Args:
        gamma: focusing exponent >= 0.
    """

    needs = frozenset({Need.STUDENT_LOGITS, Need.TEACHER_LOGITS, Need.TEACHER_LAST_HIDDEN})
    teacher_kinds = frozenset({TeacherKind.FULL})

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"loss.token_weighting.gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        student = _student_logits(inputs, "DifficultyFocus")
        w = _zeros(inputs)
        for ic, lp in _teacher_log_probs(inputs):
            lq = log_probs(student[ic][..., : lp.shape[-1]])
            s = ((lp * 0.5).exp() - (lq * 0.5).exp()).pow(2).sum(-1).div(2.0).sqrt().clamp(0.0, 1.0)
            w[ic] = s.pow(self.gamma).to(w.dtype)
        return w


class EntropySelection(TokenWeighting):
    """SE-KD (Tavor et al., 2026, "Rethinking Selective Knowledge Distillation", arXiv 2602.01395).

    Distil only the top-``ratio`` fraction of token positions by entropy (the paper's default: the
    student's entropy, top 20%): ``w = 1`` for a selected token, else 0. The kept fraction is
    logged (``tw_kept``).

    Where the paper leaves the ranking pool open, the pool has to respect micro-batch invariance
    (the combiner sees one micro-batch at a time, so ranking over a micro-batch would make the
    selection depend on how a step is split). Two pools do:

    * ``scope="sequence"`` (default): the top ``ceil(ratio * n)`` of each sequence's ``n`` loss
      positions. A sequence is never split across micro-batches, so this is exact, and every step
      keeps ``~ratio`` of its tokens.
    * ``scope="step"``: a threshold shared by the whole step, the ``(1 - ratio)``-quantile of the
      entropies of **all** tokens of the *previous* optimizer step (recorded as micro-batches pass,
      frozen when the next step starts; the first step keeps every token; the threshold is a buffer,
      saved in checkpoints). Closer to a step-wide ranking, but it lags: while entropies fall fast
      (early training) it keeps far fewer than ``ratio``, as ``tw_kept`` shows.

    Args:
        ratio: fraction of tokens to keep, in (0, 1].
        source: "student" (SE-KD) or "teacher" entropy.
        scope: "sequence" or "step" (see above).
    """

    needs = frozenset({Need.STUDENT_LOGITS})

    def __init__(self, ratio: float = 0.2, source: str = "student", scope: str = "sequence"):
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"loss.token_weighting.ratio must be in (0, 1], got {ratio}")
        if source not in ("student", "teacher"):
            raise ValueError(f"loss.token_weighting.source must be 'student' or 'teacher', got {source!r}")
        if scope not in ("sequence", "step"):
            raise ValueError(f"loss.token_weighting.scope must be 'sequence' or 'step', got {scope!r}")
        self.ratio, self.source, self.scope = float(ratio), source, scope
        if source == "teacher":
            # instance attributes shadow the class contract (read through the instance by the combiner)
            self.needs = frozenset({Need.TEACHER_LOGITS, Need.TEACHER_LAST_HIDDEN})
            self.teacher_kinds = frozenset({TeacherKind.FULL})
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self._pending: list[torch.Tensor] = []
        self._pending_step: int | None = None

    def _entropies(self, inputs: LossInputs) -> torch.Tensor:
        h = _zeros(inputs)
        if self.source == "student":
            logits = _student_logits(inputs, "EntropySelection(source=student)")
            idx = torch.nonzero(inputs.mask, as_tuple=True)
            for a in range(0, idx[0].numel(), _ROWS):
                ic = tuple(i[a:a + _ROWS] for i in idx)
                h[ic] = entropy(log_probs(logits[ic])).to(h.dtype)
        else:
            for ic, lp in _teacher_log_probs(inputs):
                h[ic] = entropy(lp).to(h.dtype)
        return h

    def _per_sequence(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The top ``ceil(ratio * n_b)`` positions of each row ``b`` (ties at the cut kept too)."""
        ranked = torch.where(mask, h, torch.full_like(h, float("-inf"))).sort(dim=-1, descending=True).values
        n = mask.sum(-1)
        k = torch.ceil(self.ratio * n.to(h.dtype)).long().clamp(min=1)
        cut = ranked.gather(-1, (k - 1).clamp(max=h.shape[-1] - 1).unsqueeze(-1))
        return ((h >= cut) & mask).to(h.dtype)

    def _roll(self, step: int) -> None:
        """At the first call of a new step, freeze the threshold from the previous step's tokens."""
        if self._pending_step is not None and step != self._pending_step and self._pending:
            values = torch.cat(self._pending)
            k = max(1, math.ceil(self.ratio * values.numel()))
            # the k-th largest entropy: the top-k tokens are those >= it
            self.threshold.fill_(values.topk(k).values[-1].item())
        if step != self._pending_step:
            self._pending, self._pending_step = [], step

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        h = self._entropies(inputs)
        if self.scope == "sequence":
            return self._per_sequence(h, inputs.mask)
        if self.training:
            self._roll(inputs.step)
            self._pending.append(h[inputs.mask].detach())
        if torch.isnan(self.threshold):
            return torch.ones_like(h)
        return (h >= self.threshold).to(h.dtype)
