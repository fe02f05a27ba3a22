"""The benchmark's own reference solutions as a completion source."""

from __future__ import annotations

from typing import Mapping

from distill.evaluation.settings import GenerationResult


class ReferenceSource:
    """The benchmark's own reference solutions (checks a benchmark + sandbox end to end)."""

    kind = "reference"
    style = "reference"

    def __init__(self, references: Mapping[str, str | None]):
        self.references = references

    def generate(self, requests, settings, stop, style: str = "reference") -> GenerationResult:
        texts = []
        for task_id, _ in requests:
            ref = self.references.get(task_id)
            if ref is None:
                raise KeyError(f"task {task_id} has no reference solution (kind: reference)")
            texts.append([ref] * int(settings.n))
        return GenerationResult(texts, [[0] * int(settings.n) for _ in texts], 0.0)

    def close(self) -> None:
        pass
