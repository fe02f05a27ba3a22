"""The end-of-run summary: teacher vs cached CE-only baseline vs distilled student."""

import json

import pytest

from distill.runs import read_metrics
from distill.summary import gap_closed, plot_summary
from distill import pipeline


def test_gap_closed_formula():
    assert gap_closed(student=4.1, baseline=4.3, teacher=3.3) == pytest.approx(0.2)
    assert gap_closed(student=4.0, baseline=3.9, teacher=4.0) is None  # teacher no better: nothing to close


def test_summary_trains_the_baseline_once_and_reports(tiny_cfg, tmp_path, capsys, distill_cache):
    cfg = tiny_cfg("summary.enabled=true", output_dir=tmp_path / "a")
    metrics = pipeline.run(cfg)
    out = capsys.readouterr().out
    assert "=== distill summary" in out and "student, CE only (baseline)" in out and "student, distilled" in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["baseline"]["loss"] == pytest.approx(metrics["summary/baseline_loss"])
    assert summary["student"]["loss"] == pytest.approx(metrics["val/loss"])
    assert summary["teacher"]["loss"] == pytest.approx(metrics["val/teacher_loss"])
    baselines = list((distill_cache / "baselines").glob("*/metrics.json"))
    assert len(baselines) == 1
    # the baseline keeps its curve, and the run draws both curves and the teacher level
    assert [r for r in read_metrics(baselines[0].parent) if "val/loss" in r]
    assert (tmp_path / "a" / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the random tiny teacher is worse than anything trained: the run says so
    assert "WARNING" in out

    # a second run with another loss reuses the cached baseline (no new baseline dir)
    pipeline.run(tiny_cfg("summary.enabled=true", "loss=jsd", output_dir=tmp_path / "b"))
    assert list((distill_cache / "baselines").glob("*/metrics.json")) == baselines


def test_summary_plot_with_a_baseline_that_kept_only_its_final_value(tiny_cfg, tmp_path):
    run_dir = tmp_path / "run"
    pipeline.run(tiny_cfg("loss=progressive", output_dir=run_dir))
    old_baseline = tmp_path / "old"
    old_baseline.mkdir()
    (old_baseline / "metrics.json").write_text(json.dumps({"val/loss": 7.0}))
    path = plot_summary(run_dir, old_baseline, teacher_loss=6.5, path=tmp_path / "s.png")
    assert path.stat().st_size > 10_000
    assert plot_summary(tmp_path / "empty", None, None, tmp_path / "none.png") is None  # nothing logged
