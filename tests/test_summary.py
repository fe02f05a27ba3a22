"""The end-of-run summary: teacher vs cached CE-only baseline vs distilled student."""

import json

import pytest

from distill.summary import gap_closed
from distill.train import train


def test_gap_closed_formula():
    assert gap_closed(student=4.1, baseline=4.3, teacher=3.3) == pytest.approx(0.2)
    assert gap_closed(student=4.0, baseline=3.9, teacher=4.0) is None  # teacher no better: nothing to close


def test_summary_trains_the_baseline_once_and_reports(tiny_cfg, tmp_path, capsys, distill_cache):
    cfg = tiny_cfg("summary.enabled=true", output_dir=tmp_path / "a")
    metrics = train(cfg)
    out = capsys.readouterr().out
    assert "=== distill summary" in out and "student, CE only (baseline)" in out and "student, distilled" in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["baseline"]["loss"] == pytest.approx(metrics["summary/baseline_loss"])
    assert summary["student"]["loss"] == pytest.approx(metrics["val/loss"])
    assert summary["teacher"]["loss"] == pytest.approx(metrics["val/teacher_loss"])
    baselines = list((distill_cache / "baselines").glob("*/metrics.json"))
    assert len(baselines) == 1
    # the random tiny teacher is worse than anything trained: the run says so
    assert "WARNING" in out

    # a second run with another loss reuses the cached baseline (no new baseline dir)
    train(tiny_cfg("summary.enabled=true", "loss=jsd", output_dir=tmp_path / "b"))
    assert list((distill_cache / "baselines").glob("*/metrics.json")) == baselines
