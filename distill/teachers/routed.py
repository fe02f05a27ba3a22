"""``teacher=routed``: each example goes to one of several teachers, picked by a field of its prompt.

Multi-teacher on-policy distillation: a code teacher for code prompts, a math teacher for math,
one per language. Every example of a prompt source carries ``meta`` (the chat prompt sets of
:mod:`distill.onpolicy.prompt_sets` keep ``task_id``, ``benchmark``, ...; a JSONL prompt source
keeps its extra fields); the routed teacher reads ``meta[route_by]`` of each row, looks it up in
``routes`` (value -> member name; ``default`` for the values not listed) and hands each member
only its rows. The members' outputs are put back in row order, so the loss sees one
:class:`~distill.types.TeacherOutput` as from a single teacher.

* ``meta`` reaches the batches through a :class:`~distill.data.datamodule.BatchHook` this teacher
  adds in :meth:`RoutedTeacher.prepare` (the DataModule's collate leaves it out); the on-policy
  sequence source keeps it on the batches it writes.
* With ``loss=opd`` only ``sampled_logprobs (B, L)`` are assembled, so members may be of any kind
  (a local model, a served one, a teacher with another tokenizer through ``teacher=cross_tokenizer``):
  each fills the log-prob of the student's tokens its own way. Full-distribution losses need
  members of one kind and shape (their logits or top-k rows are stacked); mixing kinds makes the
  routed teacher's kind ``none``, which such losses refuse before training.
* The output's ``member_rows`` (``{member: (B,) bool}``) has the combiner log, per member,
  ``train/route_<name>_share`` (its share of the step's loss tokens), ``train/route_<name>_rows``
  (rows it scored) and each per-token loss term restricted to its rows (``train/route_<name>_opd_kl``:
  its tokens' share of ``train/opd_kl``; divide by the share for its own mean).

Hidden-state and attention matching, SeqKD and speculative KD (which sample from one model) are
refused: they need a single teacher.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from distill.teachers.base import Teacher
from distill.types import ModelInfo, Need, TeacherKind, TeacherOutput

log = logging.getLogger(__name__)

#: the TeacherOutput fields with one row per example that are put back in row order
ROW_FIELDS = ("logits", "topk_ids", "topk_logprobs", "tail", "sampled_logprobs", "positions")


class MetaFields:
    """A :class:`~distill.data.datamodule.BatchHook` that hands each batch its examples' ``meta``
    (one dict per row), unless another hook already did."""

    def example(self, split: str, index: int, example: dict) -> dict:
        return example

    def batch(self, examples: list[dict], batch: dict) -> dict:
        if "meta" in batch:
            return batch
        return {**batch, "meta": [dict(e.get("meta") or {}) for e in examples]}


def rows_of(batch: dict, idx: list[int]) -> dict:
    """The sub-batch of rows ``idx``: tensors and lists with one entry per row are indexed, the rest kept."""
    size = batch["input_ids"].shape[0]
    index = torch.as_tensor(idx, dtype=torch.long, device=batch["input_ids"].device)
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size:
            out[k] = v.index_select(0, index.to(v.device))
        elif isinstance(v, (list, tuple)) and len(v) == size:
            out[k] = [v[i] for i in idx]
        else:
            out[k] = v
    return out


class RoutedTeacher(Teacher):
    """Routes each example to one member teacher by ``meta[route_by]`` (see the module docstring).

    Args:
        members: name -> teacher (names become log keys).
        route_by: the ``meta`` field to read (e.g. ``benchmark``, ``language``, ``task``).
        routes: field value -> member name (values compared as strings).
        default: the member for values not in ``routes`` (and rows without the field); None: such
            a row is an error naming the value.
    """

    def __init__(self, members: Mapping[str, Teacher], route_by: str, routes: Mapping, default: str | None = None):
        members = dict(members)
        if not members:
            raise ValueError("teacher.members is empty: name the teachers to route to")
        for name, t in members.items():
            if not isinstance(t, Teacher):
                raise TypeError(f"teacher.members.{name} is a {type(t).__name__}, not a distill Teacher")
            if t.kind == TeacherKind.NONE:
                raise ValueError(f"teacher.members.{name} gives no teacher signal (kind 'none')")
        self.routes = {str(k): str(v) for k, v in dict(routes).items()}
        unknown = sorted({v for v in self.routes.values() if v not in members} |
                         ({default} if default is not None and default not in members else set()))
        if unknown:
            raise ValueError(f"teacher.routes / teacher.default name {unknown}, which are not in teacher.members "
                             f"{sorted(members)}")
        unused = sorted(set(members) - set(self.routes.values()) - {default})
        if unused:
            raise ValueError(f"teacher.members {unused} receive no route: add them to teacher.routes or remove them")
        # members reading the student's ids must share its tokenizer; a member that aligns
        # tokenizers itself (teacher=cross_tokenizer) may have its own
        toks = {t.tokenizer for t in members.values() if t.tokenizer and not t.aligns_tokenizers}
        if len(toks) > 1:
            raise ValueError(f"teacher.members use different tokenizers {sorted(toks)} on the student's token ids; "
                             "give a member with its own tokenizer through teacher=cross_tokenizer")
        self.members = members
        self.route_by, self.default = str(route_by), default
        kinds = {t.kind for t in members.values()}
        # one kind: its outputs stack row by row; mixed: only sampled log-probs (loss=opd) assemble
        self.kind = kinds.pop() if len(kinds) == 1 else TeacherKind.NONE
        self.aligns_tokenizers = all(t.aligns_tokenizers for t in members.values())
        self._vocab: int | None = None

    # ------------------------------------------------------------------ declarations
    def info(self) -> ModelInfo | None:
        infos = [i for i in (t.info() for t in self.members.values()) if i is not None]
        if not infos:
            return None
        return ModelInfo(infos[0].hidden_size, infos[0].num_layers, infos[0].num_heads,
                         min(i.vocab_size for i in infos))

    @property
    def tokenizer(self) -> str | None:
        same = [t.tokenizer for t in self.members.values() if t.tokenizer and not t.aligns_tokenizers]
        return same[0] if same else next((t.tokenizer for t in self.members.values() if t.tokenizer), None)

    def scoring_limit(self) -> str | None:
        return next((f"teacher.members.{name}: {why}" for name, t in self.members.items()
                     if (why := t.scoring_limit()) is not None), None)

    def covers(self, batch: dict) -> bool:
        if "meta" not in batch:
            return False
        return all(t.covers(rows_of(batch, idx)) for t, idx in self._split(batch))

    def heldout_output(self, batch: dict) -> TeacherOutput:
        if self.kind == TeacherKind.NONE or "meta" not in batch:
            return TeacherOutput.none()
        parts = [(name, idx, self.members[name].heldout_output(rows_of(batch, idx)))
                 for name, idx in self.route(batch).items()]
        if any(out.kind != self.kind for _, _, out in parts):
            return TeacherOutput.none()  # a member has nothing comparable on its rows
        return self._assemble(parts, batch, frozenset({Need.TEACHER_LOGITS}))

    # ------------------------------------------------------------------ set-up
    def prepare(self, datamodule) -> None:
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            self._vocab = len(tokenizer)
        if not any(isinstance(h, MetaFields) for h in datamodule.hooks):
            datamodule.add_hook(MetaFields())
        for name, t in self.members.items():
            log.info("teacher=routed: preparing member %r (%s)", name, type(t).__name__)
            t.prepare(datamodule)

    def load(self, attn_implementation: str | None = None) -> None:
        for t in self.members.values():
            t.load(attn_implementation)

    def to(self, device: torch.device) -> "RoutedTeacher":
        for t in self.members.values():
            t.to(device)
        return self

    # ------------------------------------------------------------------ routing
    def route(self, batch: dict) -> dict[str, list[int]]:
        """Member name -> the rows it scores (in row order; members without rows left out)."""
        meta = batch.get("meta")
        size = batch["input_ids"].shape[0]
        if meta is None or len(meta) != size:
            raise RuntimeError(f"teacher=routed reads meta[{self.route_by!r}] of each row, but the batch has "
                               f"{'no meta' if meta is None else f'{len(meta)} meta for {size} rows'}: train on a "
                               "prompt source whose examples carry meta (+prompts=...), through distill-train "
                               "(prepare(datamodule) adds the hook that puts meta on the batches)")
        out: dict[str, list[int]] = {}
        for i, m in enumerate(meta):
            value = (m or {}).get(self.route_by)
            name = self.routes.get(str(value)) if value is not None else None
            if name is None:
                if self.default is None:
                    raise ValueError(f"teacher=routed: row {i} has meta[{self.route_by!r}]={value!r}, which "
                                     f"teacher.routes does not list ({sorted(self.routes)}); add it or set "
                                     "teacher.default")
                name = self.default
            out.setdefault(name, []).append(i)
        return out

    def _split(self, batch: dict) -> list[tuple[Teacher, list[int]]]:
        return [(self.members[name], idx) for name, idx in self.route(batch).items()]

    @torch.no_grad()
    def __call__(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        if Need.TEACHER_HIDDEN in needs or Need.TEACHER_ATTN in needs:
            raise ValueError("teacher=routed: hidden-state and attention matching compare with one model's layers; "
                             "use a single teacher for them")
        if Need.TEACHER_LAST_HIDDEN in needs:
            # members' heads differ, so a fused loss gets stacked logits instead (it accepts either)
            needs = (needs - {Need.TEACHER_LAST_HIDDEN}) | {Need.TEACHER_LOGITS}
        parts = []
        for name, idx in self.route(batch).items():
            sub = rows_of(batch, idx)
            out = self.members[name](sub, needs)
            if Need.TEACHER_SAMPLED_LOGPROB in needs and out.sampled_logprobs is None:
                # a member that answered with logits / a top-k support: read its sampled tokens now,
                # so every row carries the same field
                from distill.losses.functional import next_token_targets
                from distill.losses.opd import sampled_token_logprobs

                out.sampled_logprobs = sampled_token_logprobs(out, next_token_targets(sub["labels"]), vocab=self._vocab)
            parts.append((name, idx, out))
        return self._assemble(parts, batch, needs)

    def _assemble(self, parts: list[tuple[str, list[int], TeacherOutput]], batch: dict,
                  needs: frozenset[str]) -> TeacherOutput:
        """The members' outputs back in row order, with ``member_rows``."""
        size = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        result = TeacherOutput()
        distribution = bool(needs & {Need.TEACHER_LOGITS})
        fields = [f for f in ROW_FIELDS if f == "sampled_logprobs" or distribution]
        for field in fields:
            values = [getattr(out, field) for _, _, out in parts]
            if all(v is None for v in values):
                continue
            if field == "positions":  # a member without an alignment mask has every position
                values = [torch.ones(out_rows(batch, idx), dtype=torch.bool, device=device) if v is None else v
                          for (_, idx, _), v in zip(parts, values)]
            if field == "tail" and any(v is None for v in values):
                values = [(-torch.expm1(out.topk_logprobs.float().logsumexp(-1).clamp_max(0.0)) if v is None else v)
                          for (_, _, out), v in zip(parts, values)]
            if any(v is None for v in values):
                names = [name for (name, _, _), v in zip(parts, values) if v is None]
                raise ValueError(f"teacher=routed: members {names} give no {field} while others do; full-distribution "
                                 "losses need members of one kind (loss=opd reads only sampled log-probs)")
            if field == "logits":  # members padded to different vocabularies line up on the shared ids
                width = min(v.shape[-1] for v in values)
                values = [v[..., :width] for v in values]
            shapes = {tuple(v.shape[1:]) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"teacher=routed: members give {field} of different shapes {sorted(shapes)}; "
                                 "stack only members of one shape (loss=opd reads only sampled log-probs)")
            full = values[0].new_zeros((size, *values[0].shape[1:]))
            for (_, idx, _), v in zip(parts, values):
                full[torch.as_tensor(idx, device=full.device)] = v.to(full.device)
            setattr(result, field, full)
        sampled = {out.sampled for _, _, out in parts if out.topk_logprobs is not None}
        if len(sampled) > 1:
            raise ValueError("teacher=routed: some members give importance-sampled supports and others top-k ones; "
                             "their rows cannot share one batch")
        result.sampled = sampled == {True}
        rows = {}
        for name in self.members:
            mask = torch.zeros(size, dtype=torch.bool, device=device)
            for n, idx, _ in parts:
                if n == name:
                    mask[torch.as_tensor(idx, device=device)] = True
            rows[name] = mask
        result.member_rows = rows
        return result


def out_rows(batch: dict, idx: list[int]) -> tuple[int, int]:
    """``(rows, length)`` of a member's part of ``batch``."""
    return len(idx), batch["input_ids"].shape[1]
