"""The comparison report: Markdown table, distillation effect, side-by-side samples, PNG chart."""

from __future__ import annotations

import json

import pytest

from distill.evaluation.report import gap_closed, write_report


def fake_model(tmp_path, name, role, passes, heldout=None, tps=100.0):
    """A summary + results.jsonl as evaluate_model writes them, for tasks T0..T3."""
    d = tmp_path / name
    d.mkdir()
    rows = []
    for i, ok in enumerate(passes):
        rows.append({"task_id": f"T{i}", "prompt": f"def f{i}(x):\n", "n": 1, "c": int(ok),
                     "pass@1": float(ok), "samples": [{
                         "sample": 0, "completion": f"    return {name}_{i}\n",
                         "outcome": "passed" if ok else "failed",
                         "error_type": None if ok else "AssertionError",
                         "message": "" if ok else f"wrong answer {i}"}]})
    (d / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    p1 = sum(passes) / len(passes)
    return {"model": name, "role": role, "benchmark": "mbpp", "num_tasks": len(passes), "n": 1,
            "pass@1": p1, "pass_at_k": {"pass@1": p1}, "passed_tasks": sum(passes),
            "outcomes": {"passed": sum(passes), "failed": len(passes) - sum(passes)},
            "error_types": {}, "generation": {"tokens_per_s": tps},
            "files": {"results": str(d / "results.jsonl")}, "heldout": heldout}


def test_report_contents(tmp_path):
    entries = [
        fake_model(tmp_path, "student-ft", "distilled", [1, 1, 0, 0],
                   {"ppl": 5.5, "agreement": 0.61, "kl": 0.40}, tps=250.0),
        fake_model(tmp_path, "big", "teacher", [1, 1, 1, 0], {"ppl": 3.2, "loss": 1.16}, 40.0),
        fake_model(tmp_path, "student", "base", [1, 0, 0, 0],
                   {"ppl": 7.1, "agreement": 0.52, "kl": 0.71}, tps=260.0),
    ]
    paths = write_report(entries, tmp_path / "out", samples=2)
    md = paths["report"].read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Model"))
    for col in ("pass@1", "Top-1 agreement", "KL(T‖S)", "Perplexity", "Tokens/s"):
        assert col in header
    table = [line for line in lines if line.startswith("| `")][:3]
    # teacher, base, distilled order regardless of input order
    assert [row.split("|")[2].strip() for row in table] == ["teacher", "base", "distilled"]
    assert "| `student-ft` | distilled | 0.500 | 0.610 | 0.400 | 5.50 | 250.0 | 2/4 |" in md
    assert "| `big` | teacher | 0.750 | — | — | 3.20 | 40.0 | 3/4 |" in md
    assert "gap closed: 50%" in md               # (0.5 - 0.25) / (0.75 - 0.25)
    assert "distilled 0.610 vs base 0.520" in md
    # side by side: T1 first (distilled passes where base fails), every model's completion shown
    samples = md[md.index("## Side-by-side samples"):]
    assert samples.index("### T1") == samples.index("### T")
    for name in ("big", "student", "student-ft"):
        assert f"return {name}_1" in samples
    assert "wrong answer 1" in samples           # the base model's failure message
    assert "![pass@k per model](report.png)" in md
    png = paths["chart"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    comparison = json.loads(paths["comparison"].read_text())
    assert [c["role"] for c in comparison] == ["teacher", "base", "distilled"]


def test_report_refuses_mixed_benchmarks(tmp_path):
    a = fake_model(tmp_path, "a", "base", [1])
    b = dict(fake_model(tmp_path, "b", "distilled", [0]), benchmark="humaneval")
    with pytest.raises(ValueError, match="different benchmarks"):
        write_report([a, b], tmp_path / "out")


def test_gap_closed():
    assert gap_closed(0.5, 0.25, 0.75, higher_is_better=True) == pytest.approx(0.5)
    assert gap_closed(0.5, 0.75, 0.25, higher_is_better=True) is None  # a teacher below the base: no gap
    assert gap_closed(0.5, 0.5, 0.5, higher_is_better=True) is None
    assert gap_closed(None, 0.1, 0.2) is None
