"""The evaluation-side model description: ``conf/eval/model/*.yaml`` as a typed, validated object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass
class EvalModelConfig:
    """Which model to evaluate and how to load it: one node of ``models:`` / ``model:`` in
    ``conf/eval.yaml`` (``conf/eval/model/*.yaml``).

    Not to be confused with :class:`distill.models.ModelSpec`, which builds a model for training;
    this one only names weights (or recorded answers, or an API) for ``distill-eval``.

    ``kind: auto`` infers the kind from the fields that are set: ``answers`` -> answers,
    ``api`` -> api, ``adapter`` -> lora, ``checkpoint`` -> checkpoint, ``path`` -> hf (or lora
    when the folder holds ``adapter_config.json``).
    """

    name: str = "model"
    role: str = "model"  # teacher | base | distilled | model
    kind: str = "auto"  # hf | lora | checkpoint | answers | api | reference
    path: str | None = None
    adapter: str | None = None
    checkpoint: str | None = None
    tokenizer: str | None = None
    answers: str | None = None
    answers_fields: dict[str, str] = field(default_factory=dict)
    api: Any = None
    dtype: str = "auto"
    device: str = "auto"
    chat: Any = "auto"
    trust_remote_code: bool = False
    merge_lora: bool = True

    ROLES = ("teacher", "base", "distilled", "model")
    KINDS = ("hf", "lora", "checkpoint", "answers", "api", "reference")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], name: str, where: str) -> "EvalModelConfig":
        cfg = dict(cfg or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        cfg.setdefault("name", None)
        cfg["name"] = cfg["name"] or name
        if cfg.get("answers_fields") is None:
            cfg["answers_fields"] = {}
        spec = cls(**cfg)
        spec.answers_fields = dict(spec.answers_fields)
        if spec.role not in cls.ROLES:
            raise ValueError(f"{where}.role must be one of {cls.ROLES}, got {spec.role!r}")
        kind = spec.resolved_kind(where)
        if kind in ("hf", "lora") and not (spec.path or spec.adapter):
            raise ValueError(f"{where}.path: required for kind={kind}")
        return spec

    def resolved_kind(self, where: str = "model") -> str:
        if self.kind != "auto":
            if self.kind not in self.KINDS:
                raise ValueError(f"{where}.kind must be auto or one of {self.KINDS}, "
                                 f"got {self.kind!r}")
            return self.kind
        if self.answers:
            return "answers"
        if self.api:
            return "api"
        if self.adapter:
            return "lora"
        if self.checkpoint:
            return "checkpoint"
        if self.path:
            if Path(self.path, "adapter_config.json").exists():
                return "lora"
            return "hf"
        raise ValueError(f"{where}: set one of path, adapter, checkpoint, answers, api "
                         f"(or kind: reference)")

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model's outputs (for resume checks)."""
        d = dataclasses.asdict(self)
        d.pop("role", None)
        d.pop("device", None)
        d["kind"] = self.resolved_kind()
        return d
