"""The combiner: weights, schedules, temperature, masking and normalisation in one place.

``total = sum_c w_c(step) * sum_{b,t} mask[b,t] * value_c[b,t] / N_step``

where ``N_step`` is the number of unmasked tokens in the **whole optimizer step** (all
micro-batches of a gradient-accumulation cycle, on all devices). Dividing by the step's token
count instead of each micro-batch's makes the loss and its gradient independent of how the step
is split into micro-batches, the bug that mean-per-micro-batch reduction has (see the HF blog
"Fixing Gradient Accumulation", 2024). ``N_step`` is clamped to at least 1, so a fully masked
step gives exactly 0 and no NaN, for every component.

Token weighting (:mod:`distill.losses.weighting`) is applied here too, so that it works the
same for every component: the weighted components' per-token values are multiplied by the
strategy's detached weight ``w[b, t]`` before that sum (chunked / fused components get
``w * mask / N_step`` as their ``token_weights``). ``N_step`` stays the token count, so weights
keep the loss independent of the micro-batch split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from distill.losses.base import LogitLoss, LossComponent
from distill.losses.execution import ExecutionName, make_execution
from distill.losses.inputs import LossInputs, MaskedTeacher, PerToken, as_result
from distill.losses.schedules import Schedule, as_schedule
from distill.losses.strategy import Execution
from distill.losses.weighting import TokenWeighting
from distill.types import TEACHER_NEEDS, ModelInfo, Need, StudentOutput, TeacherKind, TeacherOutput

TEACHER_LOGITS, TEACHER_LAST_HIDDEN = Need.TEACHER_LOGITS, Need.TEACHER_LAST_HIDDEN

log = logging.getLogger(__name__)


class DistillationLoss(nn.Module):
    """A weighted, scheduled sum of :class:`LossComponent` terms.

    Args:
        components: name -> component. Names become metric keys (``train/<name>``).
        weights: name -> number or :class:`Schedule` (``step -> weight``). Every component needs a
            weight; a weight for an unknown component is an error (typos fail loudly).
        temperature: number or schedule for the softmax temperature of logit components (e.g.
            ``Linear(4, 1, steps)`` anneals 4 -> 1).
        token_weighting: a :class:`~distill.losses.weighting.TokenWeighting` (teacher confidence,
            entropy selection, difficulty focus), or None (every token counts 1).
        weighted: names of the components the token weights apply to; None = every component that
            reads the teacher's logits (the distillation terms; a hard-label CE keeps all tokens).
        execution: how the logit components (cross-entropy and the divergences) run: "plain" (whole
            batch, autograd), "chunked" (bounded memory) or "fused" (from the student's hidden states
            and head, no full logits); see :mod:`distill.losses.strategy`. A component given its own
            ``execution`` keeps it. Against a top-k teacher every strategy computes the divergence on
            the teacher's buckets.
        chunk_size: tokens per chunk for chunked / fused (None: about ``2^24 / V``).
        backend: fused only: "auto" (Liger kernels on CUDA when installed), "torch" or "liger".
    """

    def __init__(self, components: Mapping[str, LossComponent], weights: Mapping[str, float | Schedule],
                 temperature: float | Schedule = 1.0, token_weighting: TokenWeighting | None = None,
                 weighted: list[str] | None = None, execution: ExecutionName | Execution = "plain",
                 chunk_size: int | None = None, backend: str = "auto"):
        super().__init__()
        if not components:
            raise ValueError("loss.components is empty: name at least one component (e.g. loss=kd or loss=ce)")
        for name, comp in components.items():
            if not isinstance(comp, LossComponent):
                raise TypeError(f"loss.components.{name} is a {type(comp).__name__}, not a "
                                "distill.losses.components.LossComponent subclass")
        unknown = sorted(set(weights) - set(components))
        if unknown:
            raise ValueError(f"loss.weights has {unknown} but loss.components only defines "
                             f"{sorted(components)}; fix the name or add the component")
        missing = sorted(set(components) - set(weights))
        if missing:
            raise ValueError(f"loss.weights is missing {missing}; give each component a weight "
                             "(a number or a schedule)")
        self.execution = make_execution(execution, chunk_size, backend)
        for name, comp in components.items():
            if isinstance(comp, LogitLoss):
                own = comp.execution
                comp.bind(self.execution if own is None else
                          make_execution(own, owner=f"loss.components.{name}.execution"))
        self.components = nn.ModuleDict(dict(components))
        self.weights = {name: as_schedule(w) for name, w in weights.items()}
        self.temperature = as_schedule(temperature)
        t0 = self.temperature(0)
        if t0 <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {t0}")
        if token_weighting is not None and not isinstance(token_weighting, TokenWeighting):
            raise TypeError(f"loss.token_weighting is a {type(token_weighting).__name__}, not a "
                            "distill.losses.weighting.TokenWeighting")
        self.token_weighting = token_weighting
        if weighted is None:
            weighted = [n for n, c in components.items() if TEACHER_LOGITS in c.needs]
        unknown = sorted(set(weighted) - set(components))
        if unknown:
            raise ValueError(f"loss.weighted names {unknown}, which are not in loss.components {sorted(components)}")
        if token_weighting is not None and not weighted:
            raise ValueError("loss.token_weighting is set but no component is weighted: name them in loss.weighted")
        self.weighted = frozenset(weighted) if token_weighting is not None else frozenset()

    @property
    def needs(self) -> frozenset[str]:
        """Union of what the components read (drives which outputs the models compute)."""
        needs = frozenset().union(*(c.needs for c in self.components.values()))
        return needs | (self.token_weighting.needs if self.token_weighting is not None else frozenset())

    @property
    def teacher_needs(self) -> frozenset[str]:
        """What to ask the teacher for each step.

        Like :attr:`needs` restricted to the teacher, except for full logits: when every component
        that reads teacher logits also accepts the teacher's final hidden states and head (the fused
        components), ask for those instead, so an online teacher never materialises its
        ``(B, L, V)`` logits. Otherwise ask for logits only.
        """
        needs = self.needs & TEACHER_NEEDS
        readers = [c for c in self.components.values() if TEACHER_LOGITS in c.needs]
        if self.token_weighting is not None and TEACHER_LOGITS in self.token_weighting.needs:
            readers.append(self.token_weighting)
        if readers and all(TEACHER_LAST_HIDDEN in c.needs for c in readers):
            return needs - {TEACHER_LOGITS}
        return needs - {TEACHER_LAST_HIDDEN}

    @property
    def uses_temperature(self) -> bool:
        return any(c.uses_temperature for c in self.components.values())

    def configure(self, student: ModelInfo, teacher: ModelInfo | None, teacher_kind: str) -> None:
        """Let each component build projections and check it can run with this teacher."""
        for name, comp in self.components.items():
            if teacher_kind not in comp.teacher_kinds:
                hint = ("Choose another teacher (teacher=...) or drop the component from the loss config.")
                if not comp.shared_vocabulary:
                    hint = ("It needs the teacher's full distribution over the teacher's own vocabulary: use an "
                            "online teacher (teacher=cross_tokenizer when the tokenizers differ); a cached teacher "
                            "stores only a top-k support.")
                elif teacher_kind == TeacherKind.SPARSE:
                    hint = ("A cached teacher holds top-k log-probs, and this component needs every entry of the "
                            "teacher's distribution: use a divergence that accepts a sparse teacher (its "
                            "teacher_kinds include 'sparse', e.g. loss=kd), or an online teacher.")
                raise ValueError(
                    f"loss component '{name}' ({type(comp).__name__}) cannot use a teacher of kind "
                    f"'{teacher_kind}' (it accepts {sorted(comp.teacher_kinds)}). {hint}")
            try:
                comp.configure(student, teacher)
            except ValueError as e:
                raise ValueError(f"loss component '{name}': {e}") from e
        if self.token_weighting is not None:
            self.token_weighting.configure(student, teacher, teacher_kind)

    def forward(self, student: StudentOutput, teacher: TeacherOutput, targets: torch.Tensor, step: int,
                num_tokens: int | torch.Tensor | None = None,
                measure_unweighted: bool = True,
                batch: Mapping | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Combine the components for one micro-batch.

        Args:
            student: student outputs for the micro-batch.
            teacher: teacher outputs (any kind the components accept).
            targets: ``(B, L)`` next-token ids per position, ``-100`` where no loss applies.
            step: optimizer steps taken so far (drives schedules).
            num_tokens: unmasked tokens in the whole optimizer step; defaults to this micro-batch's.
            measure_unweighted: also compute components whose weight is 0 at this step, for their
                log line only. The module passes False on steps the loggers do not record: such a
                term (``loss=kd``'s CE) is a vocabulary-wide pass that would otherwise cost ~6% of a
                small model's step for a number nobody sees.
            batch: the micro-batch's fields, handed to the components as ``inputs.batch`` (the
                on-policy loss reads ``old_logprobs``, ``reward`` and ``group`` there); None: none.

        Returns:
            ``(total, logs)``: ``total`` is this micro-batch's share of the step loss (sum the
            totals of all micro-batches to get the step loss); ``logs`` maps ``<name>`` to the
            component's contribution before weighting, ``w_<name>`` to its weight and
            ``temperature`` to the temperature (when a component uses it).
        """
        mask = targets != -100
        if num_tokens is None:
            num_tokens = mask.sum()
        denom = torch.as_tensor(num_tokens, dtype=torch.float32, device=targets.device).clamp_min(1.0)
        temperature = self.temperature(step)
        # Token weights in the precision the logit losses compute in, so float64 stays float64.
        ref = student.logits if student.logits is not None else student.last_hidden
        wdtype = torch.promote_types(ref.dtype, torch.float32) if ref is not None else torch.float32
        wdenom = denom if wdtype == torch.float32 else denom.to(wdtype)
        masked_teacher = MaskedTeacher(teacher, mask)
        cache = {"grad": torch.is_grad_enabled()}
        batch = {} if batch is None else batch
        inputs = LossInputs(student=student, teacher=masked_teacher, targets=targets, mask=mask,
                            temperature=temperature, step=step, token_weights=mask.to(wdtype) / wdenom,
                            batch=batch, cache=cache)
        total = torch.zeros((), dtype=torch.float32, device=targets.device)
        logs: dict[str, float] = {}
        tokens = None
        if self.token_weighting is not None:
            with torch.no_grad():
                tokens = torch.where(mask, self.token_weighting(inputs), 0.0)
            # sums over the step's micro-batches give the step's mean weight and kept fraction
            logs["tw_mean"] = tokens.sum() / denom
            logs["tw_kept"] = (tokens > 0).sum() / denom
            weighted_inputs = LossInputs(student=student, teacher=masked_teacher, targets=targets, mask=mask,
                                         temperature=temperature, step=step, token_weights=tokens.to(wdtype) / wdenom,
                                         batch=batch, cache=cache)
        for name, comp in self.components.items():
            weight = self.weights[name](step)
            logs[f"w_{name}"] = weight
            if weight == 0.0 and not measure_unweighted:
                continue
            scaled = name in self.weighted
            # A component switched off by its schedule is still measured, without building a graph.
            with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0.0):
                out = as_result(comp(weighted_inputs if scaled else inputs), f"'{name}' ({type(comp).__name__})")
                if isinstance(out, PerToken):
                    values = out.values * tokens if scaled else out.values
                    # torch.where (not multiply): the value at a masked position is dropped, not scaled
                    value = torch.where(mask, values, 0.0).sum() / denom
                    for key, extra in (out.logs or {}).items():
                        logs[f"{name}_{key}"] = torch.where(mask, extra.detach(), 0.0).sum() / denom
                    logs.update(route_logs(teacher, name, values, out.logs, mask, denom))
                else:
                    value = out.value
            if weight != 0.0:
                total = total + weight * value
            logs[name] = value.detach()
        if self.uses_temperature:
            logs["temperature"] = temperature
        logs.update(teacher_member_logs(student, teacher, mask, denom))
        return total, logs


def teacher_member_logs(student: StudentOutput, teacher: TeacherOutput, mask: torch.Tensor,
                        denom: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-member logs of a multi-teacher output (:mod:`distill.teachers.ensemble`), as step shares,
    and ``aligned``: the share of tokens a cross-tokenizer teacher has a row for.

    ``agree_<name>``: the fraction of the step's tokens where the student's argmax equals that
    teacher's (needs the student's logits); ``picked_<name>``: the fraction where that teacher was
    the one selected (selection modes). Both are ``sum / N_step`` per micro-batch, so they add up
    over a step's micro-batches to the step's fractions.
    """
    logs: dict[str, torch.Tensor] = {}
    top1 = getattr(teacher, "member_top1", None)
    if top1 and student.logits is not None:
        mine = student.logits.detach().argmax(-1)
        for name, ids in top1.items():
            logs[f"agree_{name}"] = ((mine == ids) & mask).sum() / denom
    for name, picked in (getattr(teacher, "member_picked", None) or {}).items():
        logs[f"picked_{name}"] = torch.where(mask, picked.float(), 0.0).sum() / denom
    positions = getattr(teacher, "positions", None)  # a cross-tokenizer teacher's aligned positions
    if positions is not None:
        logs["aligned"] = (positions & mask).sum() / denom
    return logs


def route_logs(teacher: TeacherOutput, name: str, values: torch.Tensor, extras: Mapping | None,
               mask: torch.Tensor, denom: torch.Tensor) -> dict[str, torch.Tensor]:
    """A routed teacher's per-member view of component ``name`` (:mod:`distill.teachers.routed`):
    ``route_<member>_share`` (its share of the step's tokens), ``route_<member>_rows`` (rows it
    scored), and the component's value and per-token logs on its rows only
    (``route_<member>_<name>[_<key>]``). All are ``sum / N_step`` (or counts), so they add up over
    micro-batches, and over members to the component's own line."""
    rows = getattr(teacher, "member_rows", None)
    if not rows:
        return {}
    logs: dict[str, torch.Tensor] = {}
    for member, picked in rows.items():
        mine = mask & picked.to(mask.device).unsqueeze(-1)
        logs[f"route_{member}_share"] = mine.sum() / denom
        logs[f"route_{member}_rows"] = picked.sum().float()
        logs[f"route_{member}_{name}"] = torch.where(mine, values.detach(), 0.0).sum() / denom
        for key, extra in (extras or {}).items():
            logs[f"route_{member}_{name}_{key}"] = torch.where(mine, extra.detach(), 0.0).sum() / denom
    return logs
