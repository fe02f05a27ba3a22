"""Any JSONL of prompts with tests as a benchmark (``conf/eval/benchmark/jsonl.yaml``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from distill.evaluation.benchmarks.task import Benchmark, BenchmarkSpec, Task, read_benchmark_rows


def load_jsonl_benchmark(path: str | Path, name: str | None = None,
                         fields: Mapping[str, str] | None = None, call_check: bool | None = None,
                         chat_template: str | None = None, stop: Sequence[str] | None = None
                         ) -> Benchmark:
    """Any JSONL of prompts with tests.

    Each row needs ``task_id``, ``prompt`` and tests as ``test`` (code) or ``tests`` (a list of
    assert lines); optional: ``entry_point``, ``setup``, ``reference`` (or
    ``canonical_solution``), ``description``. ``fields`` renames, e.g. ``{"prompt": "question"}``.
    ``call_check`` (default: whenever the test code defines ``check``) appends
    ``check(entry_point)``.
    """
    fields = dict(fields or {})

    def get(row, key, default=None):
        return row.get(fields.get(key, key), default)

    tasks = []
    path = Path(path)
    for i, row in enumerate(read_benchmark_rows(path)):
        where = f"{path} row {i}"
        for key in ("task_id", "prompt"):
            if get(row, key) is None:
                raise KeyError(f"{where}: missing field {fields.get(key, key)!r}")
        test = get(row, "test")
        tests = get(row, "tests")
        if test is None and tests is None:
            raise KeyError(f"{where}: needs {fields.get('test', 'test')!r} (code) or "
                           f"{fields.get('tests', 'tests')!r} (list of asserts)")
        if test is None:
            test = "\n".join(tests) if isinstance(tests, list) else str(tests)
        entry = get(row, "entry_point")
        check = call_check if call_check is not None else bool(
            entry and re.search(r"^def\s+check\s*\(", test, re.M))
        tasks.append(Task(
            task_id=str(get(row, "task_id")), prompt=get(row, "prompt"), test=test,
            entry_point=entry, setup=get(row, "setup", "") or "",
            reference=get(row, "reference", row.get("canonical_solution")),
            description=get(row, "description", "") or get(row, "prompt"),
            tests_shown=list(tests) if isinstance(tests, list) else [], call_check=check,
        ))
    if not tasks:
        raise ValueError(f"benchmark: {path} has no rows")
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"benchmark: {path} repeats task_id(s) {dup}")
    return Benchmark(name or path.stem, tasks, list(stop or []), chat_template or "{prompt}",
                     str(path))


class JsonlBenchmark(BenchmarkSpec):
    """``conf/eval/benchmark/jsonl.yaml``.

    Args:
        path: the JSONL file (required).
        fields: renames, e.g. ``{prompt: question, tests: asserts}``.
        call_check: append ``check(entry_point)``; None = when the test code defines ``check``.
        name: output folder and report name; None = the file's stem.
        limit, task_ids, stop, chat_template: as in :class:`BenchmarkSpec`.
    """

    def __init__(self, path: str, fields: Mapping[str, str] | None = None,
                 call_check: bool | None = None, name: str | None = None,
                 limit: int | None = None, task_ids: Sequence[str | int] | None = None,
                 stop: Sequence[str] | None = None, chat_template: str | None = None):
        super().__init__(name, limit, task_ids, stop, chat_template)
        self.path, self.fields, self.call_check = path, dict(fields or {}), call_check

    def read(self) -> Benchmark:
        return load_jsonl_benchmark(self.path, self.name, self.fields, self.call_check,
                                    self.chat_template, self.stop)
