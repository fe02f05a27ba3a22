"""The benchmark's own reference solutions as a completion source."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from distill.evaluation.settings import GenerationResult
from distill.evaluation.sources.base import CompletionSource, Role

if TYPE_CHECKING:
    from distill.evaluation.benchmarks.task import Benchmark


class ReferenceSource(CompletionSource):
    """The benchmark's reference solutions (``conf/eval/model/reference.yaml``): checks a
    benchmark and the sandbox end to end; expect 1.000 on HumanEval.

    Args:
        references: ``task_id -> completion``; None = the benchmark's, taken in :meth:`open`.
        name, role: as in :class:`CompletionSource`.
    """

    kind = "reference"
    style = "reference"
    fixed_style = True  # already completions of the prompt: no chat template, no post-processing

    def __init__(self, references: Mapping[str, str | None] | None = None,
                 name: str | None = "reference", role: Role = "model"):
        super().__init__(name, role)
        self.references = dict(references) if references is not None else None

    def open(self, benchmark: "Benchmark", work_dir: Path) -> None:
        if self.references is None:
            self.references = {t.task_id: t.reference for t in benchmark.tasks}

    def generate(self, requests, settings, stop, style: str = "reference", **kwargs
                 ) -> GenerationResult:
        texts = []
        for task_id, _ in requests:
            ref = (self.references or {}).get(task_id)
            if ref is None:
                raise KeyError(f"task {task_id} has no reference solution (eval/model=reference)")
            texts.append([ref] * int(settings.n))
        return GenerationResult(texts, [[0] * int(settings.n) for _ in texts], 0.0)
