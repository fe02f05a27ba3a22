"""What a loss component reads (:class:`LossInputs`) and what it returns (:class:`PerToken` / :class:`Reduced`).

The combiner builds one :class:`LossInputs` per micro-batch and hands it to every component, so
what components share is computed once there:

* the student's log-softmax, per temperature (:meth:`LossInputs.student_log_probs`): the default
  ``loss=kd`` reads it for forward KL and again for its logged CE, one vocabulary-wide pass instead
  of two;
* the teacher with its rows at masked positions replaced by finite values (:attr:`LossInputs.teacher`).
  A NaN or inf there would otherwise reach the student's gradient through ``0 * nan`` in backward,
  even though the combiner zeroes the value; masking the input once makes every component,
  user-written ones included, give exactly zero gradient at masked positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from distill.losses.functional import log_probs
from distill.types import StudentOutput, TeacherOutput


@dataclass(frozen=True)
class PerToken:
    """``values (B, L)``: one value per position; the combiner masks, weights and normalises them.

    ``logs``: optional diagnostics, name -> ``(B, L)``, reduced like the value (masked sum over
    ``N_step``, never weighted or differentiated) and logged as ``<component>_<name>``.
    """

    values: torch.Tensor
    logs: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class Reduced:
    """``value`` (0-dim): already ``sum_{b,t} token_weights[b, t] * value[b, t]``.

    Chunked and fused execution return this: they form the gradient chunk by chunk, so they need
    the step's token weights up front (``LossInputs.token_weights``) and never hold per-token values.
    """

    value: torch.Tensor


def as_result(out, owner: str) -> PerToken | Reduced:
    """A component's return value as :class:`PerToken` / :class:`Reduced`; a bare ``(B, L)`` tensor
    is per-token (the contract of components written before the typed return)."""
    if isinstance(out, (PerToken, Reduced)):
        return out
    if isinstance(out, torch.Tensor) and out.dim() > 0:
        return PerToken(out)
    raise TypeError(f"loss component {owner} returned {type(out).__name__}"
                    f"{' (0-dim)' if isinstance(out, torch.Tensor) else ''}; return per-token values (B, L), "
                    "PerToken(values), or Reduced(value) for a value already reduced with token_weights "
                    "(distill.losses.inputs)")


def _rows(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``x (B, L, ...)`` with every position where ``mask (B, L)`` is False set to ``fill``, when
    one of those rows is not finite; ``x`` itself otherwise.

    Only a NaN or inf at a masked position can reach a gradient (the combiner's ``torch.where``
    zeroes finite values there, value and gradient). The masked rows are few (a prompt, padding,
    each row's last position), so reading just them costs a gather, where rewriting the whole
    ``(B, L, V)`` tensor on every step cost the default step about 5% of its time.
    """
    off = ~mask
    if not bool(off.any()) or bool(torch.isfinite(x[off]).all()):
        return x
    return torch.where(mask.view(*mask.shape, *([1] * (x.dim() - mask.dim()))), x, fill)


class MaskedTeacher:
    """A read-only view of a :class:`TeacherOutput` whose rows at masked positions are finite.

    Each field is masked on its first read and kept, so a field no component reads costs nothing.
    Other attributes (``kind``, ``sampled``, ``positions``, ...) read through to the teacher.
    """

    def __init__(self, teacher: TeacherOutput, mask: torch.Tensor):
        self._teacher, self._mask, self._done = teacher, mask, {}

    @property
    def raw(self) -> TeacherOutput:
        return self._teacher

    def _masked(self, name: str):
        value = getattr(self._teacher, name)
        if value is None:
            return None
        m = self._mask
        if name == "hidden_states":
            return tuple(_rows(h, m) for h in value)
        if name == "attentions":  # (B, H, L, L): the query rows of masked positions
            q = m[:, None, :, None]
            return tuple(torch.where(q, a, 0.0) for a in value)
        if name == "topk_logprobs":  # any finite log-probs will do: the row is never counted
            return _rows(value, m, -math.log(value.shape[-1] + 1))
        if name == "topk_ids":
            return _rows(value, m, 0)
        return _rows(value, m)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in ("logits", "topk_logprobs", "topk_ids", "tail", "last_hidden", "hidden_states", "attentions",
                    "sampled_logprobs"):
            done = self._done
            if name not in done:
                done[name] = self._masked(name)
            return done[name]
        return getattr(self._teacher, name)


@dataclass
class LossInputs:
    """Everything a component may read for one micro-batch.

    Attributes:
        student: the student's outputs.
        teacher: the teacher's outputs (``kind`` "full", "sparse" or "none"). Built by the combiner,
            it is a :class:`MaskedTeacher`: rows at masked positions read as finite values.
        targets: ``(B, L)`` next-token ids, ``-100`` where no loss applies.
        mask: ``(B, L)`` bool, ``targets != -100``.
        temperature: current distillation temperature (from the combiner's schedule).
        step: optimizer steps taken so far.
        token_weights: ``(B, L)`` float32, ``mask / N_step`` (times the token weighting for weighted
            components): what a :class:`Reduced` result is reduced with.
        batch: the micro-batch's own fields, for components that read more than the models' outputs
            (on-policy distillation reads ``old_logprobs``, ``reward``, ``group``); empty unless
            the caller passes it to :class:`~distill.losses.combine.DistillationLoss`.
    """

    student: StudentOutput
    teacher: TeacherOutput | MaskedTeacher
    targets: torch.Tensor
    mask: torch.Tensor
    temperature: float = 1.0
    step: int = 0
    token_weights: torch.Tensor | None = None
    batch: Mapping[str, Any] = field(default_factory=dict)
    #: shared between the LossInputs of one micro-batch (the token-weighted copy included)
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def raw_teacher(self) -> TeacherOutput:
        """The teacher as it came, for code that reads only unmasked rows (chunked / fused)."""
        return self.teacher.raw if isinstance(self.teacher, MaskedTeacher) else self.teacher

    def student_log_probs(self, temperature: float = 1.0) -> torch.Tensor:
        """``log_softmax(student logits / T)`` (``(B, L, V)``, at least fp32), computed once per ``T``."""
        key = ("student_log_probs", float(temperature))
        if key not in self.cache:
            # With the grad mode of the whole loss, not of the component that asks first: a weight-0
            # component (measured under no_grad) may ask before one that trains on it.
            with torch.set_grad_enabled(self.cache.get("grad", torch.is_grad_enabled())):
                self.cache[key] = log_probs(self.student.logits, temperature)
        return self.cache[key]
