"""``teacher=ensemble``: K teachers of any kind (online, cached, or a mix) as one full teacher.

Every member turns the batch into its own next-token distribution ``p_k`` (a cached member's
top-k support and tail bucket are spread over the vocabulary: the tail mass uniformly over the
ids outside the support). The ensemble combines them into one distribution per token and hands
it to the loss as full logits ``log p`` (a :class:`~distill.types.TeacherOutput` of kind "full"):

* ``combine: mean``: the weighted mean of probabilities ``p = sum_k w_k p_k`` (weights normalised
  to sum to 1), formed in log space;
* ``combine: token``: per token, the member with the lowest cross-entropy on the gold next token
  (``-log p_k(y_t) - log w_k``: the weights act as a prior), in the spirit of multi-teacher
  "purification" (arXiv 2602.01064);
* ``combine: example``: per example, the member with the lowest mean CE over its tokens (same prior).

Members run one after another and each one's logits are dropped once folded in, so at most one
member's ``(B, L, V)`` logits exist at a time next to the running combination (the fused losses
then read the combined logits; a member's head cannot be handed on, since a mixture is not one
linear head). Each output carries, per member, its argmax ``member_top1[name] (B, L)`` and, in
the selection modes, ``member_picked[name] (B, L)``; the combiner logs them as
``train/agree_<name>`` (agreement with the student) and ``train/picked_<name>``.

Members must share the student's tokenizer (for cross-tokenizer teachers use ``loss=uld`` with
``teacher=cross_tokenizer``); at most one member may be a cached teacher (their batch fields
would collide); hidden-state and attention matching need a single online teacher.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch

from distill.losses.functional import IGNORE_INDEX, log_probs, next_token_targets
from distill.teachers.base import Teacher
from distill.types import ModelInfo, Need, TeacherKind, TeacherOutput

log = logging.getLogger(__name__)

COMBINE = ("mean", "token", "example")


def dense_log_probs(out: TeacherOutput, vocab_size: int) -> torch.Tensor:
    """A member's output as ``(B, L, V)`` float32 log-probabilities (temperature 1).

    Full logits are normalised; a top-k support puts its stored tail mass uniformly on the ids
    outside the support (the one choice that adds no information the cache does not have); a
    sampled support is the estimator's distribution on the drawn ids (tail 0).
    """
    if out.logits is not None:
        return log_probs(out.logits[..., :vocab_size])
    if out.topk_logprobs is None:
        raise ValueError("teacher=ensemble: a member gave no teacher signal (kind 'none'); every member needs "
                         "logits or a cache")
    from distill.losses.sparse import teacher_tail

    ids, lp = out.topk_ids.long(), out.topk_logprobs.float()
    probs = torch.zeros(*ids.shape[:-1], vocab_size, dtype=torch.float32, device=lp.device)
    probs.scatter_add_(-1, ids, lp.exp())
    if not out.sampled:
        support = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, ids, lp > float("-inf"))
        tail = teacher_tail(out)
        tail = (1.0 - probs.sum(-1)).clamp_min(0.0) if tail is None else tail.float()
        outside = (~support).sum(-1, keepdim=True).clamp_min(1)
        probs = probs + (~support) * (tail.unsqueeze(-1) / outside)
    return probs.clamp_min(0.0).log().clamp_min(torch.finfo(torch.float32).min)


class EnsembleTeacher(Teacher):
    """Several teachers as one full-distribution teacher (see the module docstring).

    Args:
        teachers: name -> teacher (names become log keys), or a list (named ``t0``, ``t1``, ...).
        weights: name -> weight (or a list in the same order); default equal. Normalised to sum 1.
        combine: "mean", "token" or "example".
    """

    kind = TeacherKind.FULL

    def __init__(self, teachers: Mapping[str, Teacher] | Sequence[Teacher],
                 weights: Mapping[str, float] | Sequence[float] | None = None, combine: str = "mean"):
        members = dict(teachers) if isinstance(teachers, Mapping) else {f"t{i}": t for i, t in enumerate(teachers)}
        if len(members) < 1:
            raise ValueError("teacher.teachers is empty: name at least one teacher (two for an ensemble)")
        for name, t in members.items():
            if not isinstance(t, Teacher):
                raise TypeError(f"teacher.teachers.{name} is a {type(t).__name__}, not a distill Teacher")
            if t.kind == TeacherKind.NONE:
                raise ValueError(f"teacher.teachers.{name} gives no teacher signal (kind 'none'); remove it")
            if t.members:
                raise ValueError(f"teacher.teachers.{name} is itself an ensemble; list its members directly")
        cached = [n for n, t in members.items() if t.kind == TeacherKind.SPARSE]
        if len(cached) > 1:
            raise ValueError(f"teacher.teachers: {cached} are all cached teachers; their rows would share the same "
                             "batch fields. Keep one cached member (the others online).")
        if combine not in COMBINE:
            raise ValueError(f"teacher.combine must be one of {COMBINE}, got {combine!r}")
        if weights is None:
            weights = {n: 1.0 for n in members}
        elif not isinstance(weights, Mapping):
            weights = list(weights)
            if len(weights) != len(members):
                raise ValueError(f"teacher.weights has {len(weights)} entries for {len(members)} teachers")
            weights = dict(zip(members, weights))
        unknown = sorted(set(weights) - set(members))
        missing = sorted(set(members) - set(weights))
        if unknown or missing:
            raise ValueError(f"teacher.weights must name every teacher in teacher.teachers {sorted(members)}: "
                             f"unknown {unknown}, missing {missing}")
        if any(float(w) <= 0 for w in weights.values()):
            raise ValueError(f"teacher.weights must all be > 0, got {dict(weights)}")
        toks = {t.tokenizer for t in members.values() if t.tokenizer}
        if len(toks) > 1:
            raise ValueError(f"teacher.teachers use different tokenizers {sorted(toks)}: an ensemble mixes "
                             "distributions id by id. Give every member the student's tokenizer.")
        total = sum(float(w) for w in weights.values())
        self.members = members
        self.weights = {n: float(weights[n]) / total for n in members}
        self.combine = combine

    # ------------------------------------------------------------------ Teacher interface
    def info(self) -> ModelInfo | None:
        infos = [t.info() for t in self.members.values()]
        infos = [i for i in infos if i is not None]
        if not infos:
            return None
        first = infos[0]
        # the combined distribution lives on the ids every member has
        return ModelInfo(first.hidden_size, first.num_layers, first.num_heads, min(i.vocab_size for i in infos))

    @property
    def tokenizer(self) -> str | None:
        return next((t.tokenizer for t in self.members.values() if t.tokenizer), None)

    def scoring_limit(self) -> str | None:
        # the combination scores a sequence only if every member does
        return next((f"teacher.teachers.{name}: {why}" for name, t in self.members.items()
                     if (why := t.scoring_limit()) is not None), None)

    def covers(self, batch: dict) -> bool:
        return all(t.covers(batch) for t in self.members.values())

    def prepare(self, datamodule) -> None:
        for name, t in self.members.items():
            log.info("teacher=ensemble: preparing member %r (%s)", name, type(t).__name__)
            t.prepare(datamodule)

    def load(self, attn_implementation: str | None = None) -> None:
        if attn_implementation == "eager":
            raise ValueError("teacher=ensemble cannot feed attention matching (whose attentions? members differ in "
                             "heads and layers): use a single online teacher for attention / hidden-state losses")
        for t in self.members.values():
            t.load(attn_implementation)

    def to(self, device: torch.device) -> "EnsembleTeacher":
        for t in self.members.values():
            t.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        if Need.TEACHER_HIDDEN in needs or Need.TEACHER_ATTN in needs:
            raise ValueError("teacher=ensemble gives a combined distribution only; hidden-state and attention "
                             "matching need a single online teacher (teacher=<model>)")
        if not hasattr(self, "_vocab"):  # read the members' configs once, not every step
            info = self.info()
            self._vocab = info.vocab_size if info is not None else None
        vocab = self._vocab
        targets = next_token_targets(batch["labels"]) if self.combine != "mean" else None
        acc: torch.Tensor | None = None  # running log p (mean) or the selected log p
        best: torch.Tensor | None = None  # selection score of the selected member, per token / example
        choice: torch.Tensor | None = None
        top1: dict[str, torch.Tensor] = {}
        for k, (name, teacher) in enumerate(self.members.items()):
            out = teacher(batch, frozenset({Need.TEACHER_LOGITS}))
            size = vocab or (out.logits.shape[-1] if out.logits is not None else None)
            if size is None:
                raise ValueError(f"teacher=ensemble: member {name!r} has no model config to size the vocabulary")
            lp = dense_log_probs(out, size)
            del out
            top1[name] = lp.argmax(-1)
            prior = math.log(self.weights[name])
            if self.combine == "mean":
                lp = lp + prior
                acc = lp if acc is None else torch.logaddexp(acc, lp)
                continue
            score = self._score(lp, targets) - prior
            if acc is None:
                acc, best = lp, score
                choice = torch.zeros_like(score, dtype=torch.long)
                continue
            better = score < best
            acc = torch.where(self._expand(better, lp), lp, acc)
            best = torch.where(better, score, best)
            choice = torch.where(better, torch.full_like(choice, k), choice)
            del lp
        out = TeacherOutput(logits=acc)
        out.member_top1 = top1
        if choice is not None:
            per_token = choice if choice.dim() == 2 else choice.unsqueeze(1).expand(acc.shape[:2])
            out.member_picked = {name: per_token == k for k, name in enumerate(self.members)}
        return out

    def _score(self, lp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """CE on the gold token per token ``(B, L)`` (token mode) or its mean per example ``(B,)``."""
        mask = targets != IGNORE_INDEX
        ce = -lp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        ce = torch.where(mask, ce, torch.zeros_like(ce))
        if self.combine == "token":
            return ce
        return ce.sum(1) / mask.sum(1).clamp_min(1)

    @staticmethod
    def _expand(better: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        while better.dim() < like.dim():
            better = better.unsqueeze(-1)
        return better
