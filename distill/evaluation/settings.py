"""The generation contract: the settings of one generation pass and what a source returns (every
completion source derives from :class:`distill.evaluation.sources.base.CompletionSource`).

A request is ``(task_id, text)``; ``generate(requests, settings, stop) -> GenerationResult``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from distill.structured import from_mapping


DEFAULT_MAX_NEW_TOKENS = 512


@dataclass
class GenerationSettings:
    """Keys of ``conf/eval/generation/*.yaml``.

    Attributes:
        n: samples per task; pass@k is reported for every configured k <= n.
        temperature: 0 = greedy (then n > 1 repeats the same sample; use sampling for pass@k>1).
        top_p: nucleus sampling mass (only when temperature > 0).
        max_new_tokens: generation budget per sample; None = 512 (:data:`DEFAULT_MAX_NEW_TOKENS`), or
            half the model's context when that is shorter (no warning: the user asked for no number).
        batch_size: sequences per forward pass (local models).
        stop: stop strings for completion-style prompts; null = the benchmark's default list.
        style: ``completion`` (continue the code prompt), ``chat`` (chat template + extract the
            fenced code), ``auto`` = chat when the tokenizer has a chat template.
        seed: torch seed set before each generation call (reproducible sampling).
        max_prompt_tokens: prompts longer than this are cut from the left (null = model limit).
    """

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int | None = None
    batch_size: int = 8
    stop: list[str] | None = None
    style: str = "auto"
    seed: int = 1234
    max_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"generation.{key}: {why} (got {getattr(self, key)!r})")

        if int(self.n) < 1:
            raise bad("n", "must be >= 1")
        if float(self.temperature) < 0:
            raise bad("temperature", "must be >= 0")
        if not 0 < float(self.top_p) <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if self.max_new_tokens is not None and int(self.max_new_tokens) < 1:
            raise bad("max_new_tokens", "must be >= 1")
        if int(self.batch_size) < 1:
            raise bad("batch_size", "must be >= 1")
        if self.style not in ("auto", "completion", "chat"):
            raise bad("style", "must be auto, completion or chat")
        if self.stop is not None:
            self.stop = [str(s) for s in self.stop]

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "GenerationSettings":
        cfg = dict(cfg or {})
        if cfg.get("stop") is not None:
            cfg["stop"] = list(cfg["stop"])
        return from_mapping(cls, cfg, "generation")

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0


@dataclass
class GenerationResult:
    """``texts[i]`` holds the samples for request ``i``; token counts exclude padding."""

    texts: list[list[str]]
    new_tokens: list[list[int]]
    seconds: float

    @property
    def total_tokens(self) -> int:
        return sum(sum(t) for t in self.new_tokens)

