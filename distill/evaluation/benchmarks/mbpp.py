"""MBPP (Austin et al., 2021): 974 crowd-sourced Python problems with assert tests, full or the
hand-verified sanitized subset, from a local ``mbpp.jsonl`` or the Hugging Face hub."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

from distill.config import ConfigError
from distill.evaluation.benchmarks.task import Benchmark, BenchmarkSpec, Task, _require, read_benchmark_rows

# Stop sequences for completion-style (base) models: the bigcode-evaluation-harness list (no
# "\ndef": MBPP solutions may define helpers).
MBPP_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```", "\n<|"]
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
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
MBPP_HF_IDS = ("mbpp", "google-research-datasets/mbpp")


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
            rows = read_benchmark_rows(path)
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


class MBPP(BenchmarkSpec):
    """``conf/eval/benchmark/mbpp.yaml`` and ``mbpp_sanitized.yaml``.

    Args:
        path: a local ``mbpp.jsonl`` (or sanitized ``.json``), or a hub id (``mbpp``,
            ``google-research-datasets/mbpp``).
        subset: ``full`` or ``sanitized``.
        split: ``test``, ``validation``, ``train``, ``prompt`` or ``all``.
        challenge_tests: also run ``challenge_test_list``.
        name, limit, task_ids, stop, chat_template: as in :class:`BenchmarkSpec`.
    """

    def __init__(self, path: str | None = MBPP_HF_IDS[1], subset: str = "full",
                 split: str = "test", challenge_tests: bool = False, name: str | None = "mbpp",
                 limit: int | None = None, task_ids: Sequence[str | int] | None = None,
                 stop: Sequence[str] | None = None, chat_template: str | None = None):
        super().__init__(name, limit, task_ids, stop, chat_template)
        if subset not in ("full", "sanitized"):
            raise ConfigError(f"benchmark.subset must be 'full' or 'sanitized', got {subset!r}")
        if split not in (*MBPP_SPLITS, "all"):
            raise ConfigError(f"benchmark.split must be one of {[*MBPP_SPLITS, 'all']}, "
                              f"got {split!r}")
        self.path = path or MBPP_HF_IDS[1]
        self.subset, self.split, self.challenge_tests = subset, split, bool(challenge_tests)

    def read(self) -> Benchmark:
        return load_mbpp(self.path, self.subset, self.split, self.challenge_tests,
                         self.chat_template, self.stop)
