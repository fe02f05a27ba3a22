"""APPS-style judging: stdin/stdout and fn_name call-style cases, one sandboxed program per case."""

from __future__ import annotations

import json

import pytest

from distill.evaluation.benchmarks import APPS_SAMPLE, Benchmark, Task, load_apps, load_benchmark
from distill.evaluation.runner import evaluate_model
from distill.evaluation.settings import GenerationResult, GenerationSettings
from distill.evaluation.sources import CompletionSource, ReferenceSource
from distill.evaluation.stdio import case_program, outputs_match


class Fixed(CompletionSource):
    """A source that answers every task with the same program."""

    kind, style, fixed_style = "fixed", "reference", True

    def __init__(self, program: str):
        super().__init__()
        self.program = program

    def generate(self, requests, settings, stop, style="reference", **kwargs):
        n = int(settings.n)
        return GenerationResult([[self.program] * n for _ in requests], [[0] * n for _ in requests],
                                0.0)


def run(bench, source, sandbox, tmp_path, name="m"):
    source.name = name
    return evaluate_model(source, bench,
                          GenerationSettings(), sandbox, tmp_path / name, ks=[1])


def test_outputs_match_normalises_like_apps():
    assert outputs_match("3  \n\n", "3\n")                 # trailing whitespace, blank lines
    assert outputs_match("1 2\n3", "1\n2 3\n")              # same tokens, other line breaks
    assert outputs_match("2.3333333\n", "2.333333")         # numbers within tolerance
    assert outputs_match("1.0", "1")
    assert not outputs_match("3\n", "4\n")
    assert not outputs_match("1 2", "1 2 3")
    assert not outputs_match("abc", "abd")


def test_shipped_problems_load_in_both_styles():
    bench = load_benchmark({"_target_": "distill.evaluation.benchmarks.APPS", "path": "sample"})
    assert len(bench) == 6 and bench.name == "apps"
    styles = {t.task_id: t.fn_name for t in bench.tasks}
    assert styles["APPS/s1"] is None and styles["APPS/c1"] == "fib"
    assert all(t.reference and t.cases for t in bench.tasks)
    assert load_benchmark({"_target_": "distill.evaluation.benchmarks.APPS", "path": "sample", "difficulties": ["competition"]}
                          ).tasks[0].task_id == "APPS/c2"
    with pytest.raises(ValueError, match="difficulties"):
        load_apps("sample", difficulties=["easy"])


def test_reference_solutions_score_one(sandbox, tmp_path):
    bench = load_apps("sample")
    s = run(bench, ReferenceSource({t.task_id: t.reference for t in bench.tasks}), sandbox,
            tmp_path, "reference")
    assert s["pass@1"] == 1.0 and s["strict_accuracy"] == 1.0 and s["test_case_average"] == 1.0
    assert s["outcomes"] == {"passed": 6}


def test_wrong_programs_score_zero(sandbox, tmp_path):
    bench = load_apps("sample")
    s = run(bench, Fixed("print(42)\n"), sandbox, tmp_path, "wrong")
    assert s["pass@1"] == 0.0 and s["strict_accuracy"] == 0.0 and s["test_case_average"] == 0.0


def _task(code_cases, fn_name=None, timeout=None):
    return Task(task_id="T/0", prompt="", test="", cases=code_cases, fn_name=fn_name,
                case_timeout=timeout)


def test_partial_credit_loop_crash_and_whitespace_per_case(sandbox, tmp_path):
    # Case 1 passes with trailing spaces and an extra blank line; case 2 loops forever; case 3
    # crashes; case 4 prints a wrong answer. Each case gets its own outcome and timeout.
    program = ("n = int(input())\n"
               "if n == 2:\n    while True: pass\n"
               "if n == 3:\n    raise ZeroDivisionError('boom')\n"
               "print(n * 10, '  ')\nprint()\n")
    cases = [{"input": f"{i}\n", "output": f"{i * 10}\n"} for i in (1, 2, 3)]
    cases.append({"input": "4\n", "output": "41\n"})
    bench = Benchmark("t", [_task(cases, timeout=1.0)])
    s = run(bench, Fixed(program), sandbox, tmp_path)
    row = json.loads((tmp_path / "m" / "results.jsonl").read_text().splitlines()[0])
    sample = row["samples"][0]
    assert sample["case_outcomes"] == ["passed", "timeout", "error", "failed"]
    assert sample["cases_passed"] == 1 and sample["outcome"] == "timeout"  # the first failure
    assert s["pass@1"] == 0.0 and s["test_case_average"] == 0.25 and s["strict_accuracy"] == 0.0


def test_call_style_function_and_solution_method(sandbox):
    func = "def pair(a, b):\n    return a, b\n"          # a tuple compares equal to a list
    method = "class Solution:\n    def pair(self, a, b):\n        return [a, b]\n"
    wrapped = {"input": [1, 2], "output": [[1, 2]]}      # APPS's [x] wrapping of outputs
    plain = {"input": [1, 2], "output": [1, 2]}
    wrong = {"input": [1, 2], "output": [2, 1]}
    progs = [case_program(src, c, "pair") for src in (func, method) for c in (wrapped, plain)]
    progs.append(case_program(func, wrong, "pair"))
    progs.append(case_program("def other():\n    pass\n", plain, "pair"))
    out = [r.outcome for r in sandbox.map(progs)]
    assert out == ["passed"] * 4 + ["failed", "error"]


def test_stdin_buffer_and_sys_exit(sandbox):
    src = "import sys\ndata = sys.stdin.buffer.read().split()\nprint(sum(map(int, data)))\nsys.exit(0)\n"
    ok = case_program(src, {"input": "1 2\n3\n", "output": "6"})
    bad = case_program(src, {"input": "1 2\n3\n", "output": "7"})
    assert [r.outcome for r in sandbox.map([ok, bad])] == ["passed", "failed"]


def test_local_jsonl_with_parsed_fields_and_errors(tmp_path):
    path = tmp_path / "apps.jsonl"
    rows = [{"problem_id": 7, "question": "Echo.", "solutions": ["print(input())"],
             "input_output": {"inputs": ["a\n"], "outputs": ["a\n"]}},
            {"problem_id": 8, "question": "No tests.", "solutions": "[]", "input_output": ""}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    bench = load_apps(path, max_cases=1)
    assert [t.task_id for t in bench.tasks] == ["APPS/7"]  # problems without tests are skipped
    path.write_text(json.dumps({"problem_id": 1, "question": "q",
                                "input_output": {"inputs": ["1"], "outputs": []}}) + "\n")
    with pytest.raises(ValueError, match="1 inputs and 0 outputs"):
        load_apps(path)
    with pytest.raises(FileNotFoundError, match="benchmark.path"):
        load_apps(tmp_path / "missing.jsonl")


def test_hub_copy_is_read_through_datasets(monkeypatch):
    import datasets

    seen = {}

    def fake_load(builder, data_files=None, split=None):
        seen.update(builder=builder, data_files=data_files, split=split)
        return [json.loads(line) for line in APPS_SAMPLE.read_text().splitlines()]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    bench = load_apps("codeparrot/apps", split="test")
    assert seen == {"builder": "json", "data_files": "hf://datasets/codeparrot/apps/test.jsonl",
                    "split": "train"}
    assert len(bench) == 6 and bench.source == "codeparrot/apps (test)"


def test_eval_config_runs_the_sample_end_to_end(eval_cfg, tmp_path):
    from distill.evaluation.cli import run_eval

    cfg = eval_cfg("eval/benchmark=apps_sample", "eval/model=reference", "sandbox.workers=2")
    out = run_eval(cfg)["models"][0]
    assert out["benchmark"] == "apps_sample" and out["pass@1"] == 1.0
    assert out["strict_accuracy"] == 1.0
