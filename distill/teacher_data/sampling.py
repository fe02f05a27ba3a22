"""What to ask the teacher and how: sampling settings, the work keys, and one request's body.

Shared by the Messages path (:mod:`~distill.teacher_data.generate`) and the Message Batches path
(:mod:`~distill.teacher_data.batches`), which is why it lives below both: neither imports the other.

A unit of work is a :data:`Key` ``(prompt_id, sample_idx, model)``. With ``sampling.models`` set,
several teachers answer every prompt (multi-teacher data); each record names the model it came
from, and the filter later keeps the best answer per prompt across all of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from distill.teacher_data.promptset import Prompt

Key = tuple[str, int, str]


@dataclass
class Sampling:
    model: str = "claude-sonnet-4-5"
    max_tokens: int = 2048
    temperature: float | None = None  # None = the API default (sent only when set)
    n: int = 1
    system_prompt: str | None = None
    cache_system_prompt: bool = True
    extra_params: dict[str, Any] = field(default_factory=dict)  # e.g. {output_config: {effort: high}}
    models: list[str] | None = None  # several teachers answer every prompt; None = just ``model``

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Sampling":
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise KeyError(f"sampling: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        s = cls(**{k: v for k, v in dict(cfg).items() if v is not None or k != "extra_params"})
        if s.n < 1:
            raise ValueError(f"sampling.n must be >= 1, got {s.n}")
        if s.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens must be >= 1, got {s.max_tokens}")
        if s.models is not None:
            s.models = [str(m) for m in s.models]
            if not s.models or len(set(s.models)) != len(s.models):
                raise ValueError(f"sampling.models must be a non-empty list of distinct model names, got {s.models}")
        return s

    @property
    def teachers(self) -> list[str]:
        return list(self.models) if self.models else [self.model]

    def identity(self) -> dict[str, Any]:
        """The settings that change what the teacher answers (n is deliberately not among them)."""
        sys_hash = hashlib.sha256((self.system_prompt or "").encode()).hexdigest()[:16]
        who = {"model": self.model} if not self.models else {"models": self.teachers}
        return {**who, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "system_prompt_sha256": sys_hash, "extra_params": self.extra_params}

    def keys(self, prompt_ids) -> list[Key]:
        return [(pid, i, m) for pid in prompt_ids for m in self.teachers for i in range(self.n)]


def request_params(prompt: Prompt, s: Sampling, model: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"model": model or s.model, "max_tokens": s.max_tokens,
                              "messages": [{"role": "user", "content": prompt.text}]}
    if s.temperature is not None:
        params["temperature"] = s.temperature
    reserved = {"model", "max_tokens", "messages", "system"} & set(s.extra_params)
    if reserved:
        raise ValueError(f"sampling.extra_params may not set {sorted(reserved)}; use the sampling keys")
    params.update(s.extra_params)
    if s.system_prompt:
        if s.cache_system_prompt:
            # The shared system prompt is the one prefix every request repeats: mark it cacheable so
            # calls after the first pay the cache-read price (10% of input) for it.
            params["system"] = [{"type": "text", "text": s.system_prompt, "cache_control": {"type": "ephemeral"}}]
        else:
            params["system"] = s.system_prompt
    return params


def prompt_meta(p: Prompt) -> dict[str, Any]:
    d = p.to_dict()
    d.pop("text")
    d.pop("id")
    return d


def custom_id(key: Key) -> str:
    """A Message Batches ``custom_id`` (``^[a-zA-Z0-9_-]{1,64}$``): prompt, sample, model hash."""
    return f"{key[0]}-{key[1]}-{hashlib.sha1(key[2].encode()).hexdigest()[:8]}"
