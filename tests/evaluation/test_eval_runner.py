"""Runner: per-task JSONL + summary JSON, pass@k from executed samples, resume, settings guard."""

from __future__ import annotations

import json

import pytest

from distill.evaluation.benchmarks import load_humaneval
from distill.evaluation.settings import GenerationResult, GenerationSettings
from distill.evaluation.sources import CompletionSource, ReferenceSource
from distill.evaluation.runner import SettingsChanged, evaluate_model


class Counting(CompletionSource):
    """A source that answers from a function and counts what it was asked."""

    kind = "fake"
    style = "completion"

    def __init__(self, answer, name="m"):
        super().__init__(name)
        self.answer = answer
        self.asked: list[str] = []

    def generate(self, requests, settings, stop, style="completion", **kwargs):
        self.asked += [tid for tid, _ in requests]
        texts = [[self.answer(tid, j) for j in range(settings.n)] for tid, _ in requests]
        return GenerationResult(texts, [[5] * settings.n for _ in requests], 0.01 * len(requests))


@pytest.fixture(scope="module")
def bench():
    return load_humaneval().select(limit=5)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_reference_solutions_score_one_and_files_are_written(bench, sandbox, tmp_path):
    refs = {t.task_id: t.reference for t in bench.tasks}
    s = evaluate_model(ReferenceSource(refs, name="ref"), bench, GenerationSettings(), sandbox,
                       tmp_path, ks=[1, 10])
    assert s["pass@1"] == 1.0 and "pass@10" not in s and s["outcomes"] == {"passed": 5}
    rows = lines(tmp_path / "results.jsonl")
    assert [r["task_id"] for r in rows] == [t.task_id for t in bench.tasks]
    r0 = rows[0]
    assert r0["prompt"] == bench.tasks[0].prompt and r0["n"] == 1 and r0["c"] == 1
    assert r0["samples"][0]["outcome"] == "passed"
    assert r0["samples"][0]["completion"] == bench.tasks[0].reference
    assert json.loads((tmp_path / "summary.json").read_text())["pass@1"] == 1.0


def test_wrong_solutions_score_zero(bench, sandbox, tmp_path):
    src = Counting(lambda tid, j: "    return None\n", name="wrong")
    s = evaluate_model(src, bench, GenerationSettings(),
                       sandbox, tmp_path)
    assert s["pass@1"] == 0.0 and s["passed_tasks"] == 0
    assert s["generation"]["tokens"] == 25 and s["generation"]["tokens_per_s"] > 0


def test_pass_at_k_from_mixed_samples(bench, sandbox, tmp_path):
    refs = {t.task_id: t.reference for t in bench.tasks}
    # samples 0 and 2 right, 1 and 3 wrong: c = 2 of n = 4 on every task
    src = Counting(lambda tid, j: refs[tid] if j % 2 == 0 else "    return None\n", name="mix")
    settings = GenerationSettings(n=4, temperature=0.8)
    s = evaluate_model(src, bench, settings, sandbox,
                       tmp_path, ks=[1, 2, 4, 5])
    assert s["pass@1"] == pytest.approx(0.5)
    assert s["pass@2"] == pytest.approx(1 - 1 / 6)   # 1 - C(2,2)/C(4,2)
    assert s["pass@4"] == 1.0 and "pass@5" not in s
    assert all(r["c"] == 2 for r in lines(tmp_path / "results.jsonl"))


def test_resume_after_interruption(bench, sandbox, tmp_path):
    refs = {t.task_id: t.reference for t in bench.tasks}
    settings = GenerationSettings()
    first = Counting(lambda tid, j: refs[tid])
    evaluate_model(first, bench, settings, sandbox, tmp_path)
    assert len(first.asked) == 5

    # simulate a crash: the last two tasks' results were never written, the last line is torn
    res = tmp_path / "results.jsonl"
    kept = res.read_text().splitlines()[:3]
    res.write_text("\n".join(kept) + '\n{"task_id": "HumanEval/3", "prom')
    second = Counting(lambda tid, j: refs[tid])
    s = evaluate_model(second, bench, settings, sandbox, tmp_path)
    assert second.asked == []            # generations were on disk: nothing generated again
    assert s["this_run"]["resumed_tasks"] == 3 and s["pass@1"] == 1.0
    assert sorted(r["task_id"] for r in lines_ok(res)) == sorted(t.task_id for t in bench.tasks)

    # a bigger task list resumes too: only the new tasks are generated
    more = load_humaneval().select(limit=7)
    third = Counting(lambda tid, j: "    return None\n")
    s = evaluate_model(third, more, settings, sandbox, tmp_path)
    assert third.asked == ["HumanEval/5", "HumanEval/6"]
    assert s["num_tasks"] == 7 and s["pass@1"] == pytest.approx(5 / 7)


def lines_ok(path):
    out = []
    for x in path.read_text().splitlines():
        try:
            out.append(json.loads(x))
        except json.JSONDecodeError:
            pass
    return out


def test_changed_settings_are_refused_then_overwritten(bench, sandbox, tmp_path):
    refs = {t.task_id: t.reference for t in bench.tasks}
    src = Counting(lambda tid, j: refs[tid])
    evaluate_model(src, bench, GenerationSettings(max_new_tokens=64), sandbox, tmp_path)
    with pytest.raises(SettingsChanged, match="generation.max_new_tokens: 64 -> 128"):
        evaluate_model(src, bench, GenerationSettings(max_new_tokens=128), sandbox,
                       tmp_path)
    s = evaluate_model(src, bench, GenerationSettings(max_new_tokens=128), sandbox,
                       tmp_path, overwrite=True)
    assert s["this_run"]["resumed_tasks"] == 0 and len(lines(tmp_path / "results.jsonl")) == 5
