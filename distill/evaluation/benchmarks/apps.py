"""APPS (Hendrycks et al., 2021) and any JSONL in its schema: stdin/stdout and ``fn_name``
call-style problems, each test case judged as its own sandboxed program
(:mod:`distill.evaluation.stdio`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from distill.config import ConfigError
from distill.evaluation.benchmarks.task import Benchmark, BenchmarkSpec, Task, _require, read_benchmark_rows

log = logging.getLogger(__name__)

APPS_STOP = ['\n"""', "\n```", "\n<|", "\nQUESTION"]
APPS_CHAT = (
    "Solve this programming problem in Python 3. Reply with the complete program in one "
    "```python code block.\n\n{description}"
)
APPS_HF_ID = "codeparrot/apps"
# Six small problems written for the tests (four stdin, two call-style), in APPS's schema.
APPS_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "apps_sample.jsonl"
APPS_DIFFICULTIES = ("introductory", "interview", "competition")


def _json_field(value: Any, what: str, where: str) -> Any:
    """APPS stores ``solutions`` and ``input_output`` as JSON strings; a local JSONL may not."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: field {what!r} is not valid JSON ({exc.msg})") from None
    return value


def apps_prompt(question: str, starter_code: str, fn_name: str | None) -> str:
    """A completion-style prompt: the problem in a docstring; the whole program follows it.

    Starter code is shown inside the docstring rather than after it, so a reference solution
    (APPS's are complete programs) and a generated program both simply follow the prompt.
    """
    how = (f"Define `{fn_name}` (as a method of `class Solution` if the starter code has one); "
           f"it is called with each test's arguments." if fn_name else
           "Read the input from standard input and print the answer to standard output.")
    text = question.strip().replace("\\", "\\\\").replace('"""', "'''")
    starter = f"\n\nStarter code:\n{starter_code.rstrip()}" if starter_code.strip() else ""
    return f'"""\n{text}\n\n{how}{starter}\n"""\n'


def _apps_task(row: Mapping, where: str, max_cases: int | None,
               case_timeout: float | None) -> Task | None:
    _require(row, ("problem_id", "question", "input_output"), where)
    io = _json_field(row["input_output"], "input_output", where)
    if not io or not io.get("inputs"):
        return None  # APPS has problems without tests; they cannot be judged
    inputs, outputs = io["inputs"], io.get("outputs") or []
    if len(inputs) != len(outputs):
        raise ValueError(f"{where}: input_output has {len(inputs)} inputs and "
                         f"{len(outputs)} outputs")
    cases = [{"input": i, "output": o} for i, o in zip(inputs, outputs)]
    if max_cases:
        cases = cases[: int(max_cases)]
    fn_name = io.get("fn_name") or None
    solutions = _json_field(row.get("solutions"), "solutions", where) or []
    starter = row.get("starter_code") or ""
    prompt = apps_prompt(row["question"], starter, fn_name)
    how = prompt.strip().strip('"').strip()
    return Task(task_id=f"APPS/{row['problem_id']}", prompt=prompt, test="",
                entry_point=fn_name, reference=solutions[0] if solutions else None,
                description=how, cases=cases, fn_name=fn_name, case_timeout=case_timeout,
                meta={"difficulty": row.get("difficulty"), "url": row.get("url"),
                      "num_cases": len(inputs)})


def load_apps(source: str | Path = APPS_HF_ID, split: str = "test",
              difficulties: Sequence[str] | None = None, max_cases: int | None = None,
              case_timeout: float | None = None, chat_template: str | None = None,
              stop: Sequence[str] | None = None) -> Benchmark:
    """APPS (Hendrycks et al., 2021) or any JSONL in its schema: ``problem_id``, ``question``,
    ``input_output`` (JSON: ``inputs``, ``outputs``, optional ``fn_name``), ``solutions`` (JSON
    list), ``starter_code``, ``difficulty``.

    ``source`` is a local ``.jsonl``, ``sample`` (:data:`APPS_SAMPLE`) or a hub dataset id whose repo holds ``<split>.jsonl``
    (``codeparrot/apps``, read through ``datasets`` as JSON files: its loading script no longer
    runs with ``datasets`` >= 4). Problems without test cases are skipped. ``max_cases`` keeps
    the first cases of each problem (faster; the score is then not APPS's own).
    """
    path = APPS_SAMPLE if str(source) == "sample" else Path(str(source))
    if path.suffix == ".jsonl" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"benchmark.path: {path} does not exist")
        rows, origin = read_benchmark_rows(path), str(path)
    else:
        rows, origin = _load_apps_hf(str(source), split), f"{source} ({split})"
    wanted = set(difficulties or ())
    bad = sorted(wanted - set(APPS_DIFFICULTIES))
    if bad:
        raise ValueError(f"benchmark.difficulties: {bad} unknown; choose from {APPS_DIFFICULTIES}")
    tasks, skipped = [], 0
    for i, row in enumerate(rows):
        if wanted and row.get("difficulty") not in wanted:
            continue
        task = _apps_task(row, f"{origin} row {i}", max_cases, case_timeout)
        if task is None:
            skipped += 1
        else:
            tasks.append(task)
    if skipped:
        log.info("apps: skipped %d problem(s) without test cases", skipped)
    if not tasks:
        raise ValueError(f"benchmark: {origin} has no APPS problems with test cases"
                         + (f" of difficulty {sorted(wanted)}" if wanted else ""))
    return Benchmark("apps", tasks, list(stop) if stop is not None else list(APPS_STOP),
                     chat_template or APPS_CHAT, origin)


def _load_apps_hf(dataset_id: str, split: str) -> list[dict]:
    try:
        from datasets import load_dataset

        ds = load_dataset("json", data_files=f"hf://datasets/{dataset_id}/{split}.jsonl",
                          split="train")
    except Exception as exc:  # offline, unknown id, missing split
        raise RuntimeError(
            f"benchmark: cannot load {dataset_id!r} split {split!r} from the hub ({exc}); "
            f"download {split}.jsonl from https://huggingface.co/datasets/{dataset_id} and set "
            f"benchmark.path=<file>") from exc
    return [dict(r) for r in ds]


class APPS(BenchmarkSpec):
    """``conf/eval/benchmark/apps.yaml`` and ``apps_sample.yaml``.

    Args:
        path: a hub dataset id whose repo holds ``<split>.jsonl``, a local ``.jsonl``, or
            ``sample`` (the six problems shipped for the tests).
        split: ``test`` or ``train`` (hub only).
        difficulties: keep these (``introductory``, ``interview``, ``competition``); None = all.
        max_cases: keep the first N cases per problem (faster; no longer APPS's score).
        case_timeout: seconds per test case; None = ``sandbox.timeout``.
        name, limit, task_ids, stop, chat_template: as in :class:`BenchmarkSpec`.
    """

    def __init__(self, path: str | None = APPS_HF_ID, split: str = "test",
                 difficulties: Sequence[str] | None = None, max_cases: int | None = None,
                 case_timeout: float | None = None, name: str | None = "apps",
                 limit: int | None = None, task_ids: Sequence[str | int] | None = None,
                 stop: Sequence[str] | None = None, chat_template: str | None = None):
        super().__init__(name, limit, task_ids, stop, chat_template)
        bad = sorted(set(difficulties or ()) - set(APPS_DIFFICULTIES))
        if bad:
            raise ConfigError(f"benchmark.difficulties: {bad} unknown; choose from "
                              f"{APPS_DIFFICULTIES}")
        self.path, self.split = path or APPS_HF_ID, split
        self.difficulties = list(difficulties) if difficulties else None
        self.max_cases, self.case_timeout = max_cases, case_timeout

    def read(self) -> Benchmark:
        return load_apps(self.path, self.split, self.difficulties, self.max_cases,
                         self.case_timeout, self.chat_template, self.stop)
