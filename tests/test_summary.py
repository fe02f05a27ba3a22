"""The end-of-run summary: teacher vs cached CE-only baseline vs distilled student."""

import json

import pytest

from distill.runs import read_metrics
from distill.summary import gap_closed, plot_summary
from distill import pipeline


def test_gap_closed_formula():
    assert gap_closed(student=4.1, baseline=4.3, teacher=3.3) == pytest.approx(0.2)
    assert gap_closed(student=4.0, baseline=3.9, teacher=4.0) is None  # teacher no better: nothing to close


def test_summary_trains_the_baseline_once_and_reports(tiny_cfg, tmp_path, capsys, caplog, distill_cache):
    # a seed no other test uses: CE-only baselines are keyed without the teacher, so another tiny run
    # of the session may already have trained the default seed's one
    before = set((distill_cache / "baselines").glob("*/metrics.json"))
    cfg = tiny_cfg("summary.enabled=true", "seed=11", output_dir=tmp_path / "a")
    with caplog.at_level("WARNING", logger="distill.baseline"):
        metrics = pipeline.run(cfg)
    out = capsys.readouterr().out
    # a new baseline is announced before it trains, with its expected time and how to skip it
    notice = [r.getMessage() for r in caplog.records if r.name == "distill.baseline"]
    assert notice and "summary.baseline=false" in notice[0] and "expect at most about" in notice[0]
    assert "=== distill summary" in out and "student, CE only (baseline)" in out and "student, distilled" in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["baseline"]["loss"] == pytest.approx(metrics["summary/baseline_loss"])
    assert summary["student"]["loss"] == pytest.approx(metrics["val/loss"])
    assert summary["teacher"]["loss"] == pytest.approx(metrics["val/teacher_loss"])
    # exactly one baseline trained by this run (the session cache holds other tests' baselines too)
    baselines = sorted(set((distill_cache / "baselines").glob("*/metrics.json")) - before)
    assert len(baselines) == 1
    # the baseline keeps its curve, and the run draws both curves and the teacher level
    assert [r for r in read_metrics(baselines[0].parent) if "val/loss" in r]
    assert (tmp_path / "a" / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the random tiny teacher is worse than anything trained: the run says so
    assert "WARNING" in out

    # a second run with another loss reuses the cached baseline (no new baseline dir)
    pipeline.run(tiny_cfg("summary.enabled=true", "seed=11", "loss=jsd", output_dir=tmp_path / "b"))
    assert sorted(set((distill_cache / "baselines").glob("*/metrics.json")) - before) == baselines


def test_summary_plot_with_a_baseline_that_kept_only_its_final_value(tiny_cfg, tmp_path):
    run_dir = tmp_path / "run"
    pipeline.run(tiny_cfg("loss=progressive", output_dir=run_dir))
    old_baseline = tmp_path / "old"
    old_baseline.mkdir()
    (old_baseline / "metrics.json").write_text(json.dumps({"val/loss": 7.0}))
    path = plot_summary(run_dir, old_baseline, teacher_loss=6.5, path=tmp_path / "s.png")
    assert path.stat().st_size > 10_000
    assert plot_summary(tmp_path / "empty", None, None, tmp_path / "none.png") is None  # nothing logged


def _m(loss, teacher=None):
    m = {"val/loss": loss, "val/ppl": 2.0 ** loss, "val/agreement": 0.5, "val/kl": 0.1}
    if teacher is not None:
        m.update({"val/teacher_loss": teacher, "val/teacher_ppl": 2.0 ** teacher})
    return m


def test_the_verdict_follows_from_what_was_measured():
    from distill.summary import summarize

    # the teacher is worse than the CE-only student, yet distillation helped (a small, overfit corpus)
    s = summarize(_m(5.9, teacher=6.3), _m(6.1), steps=600)
    assert "summary/gap_closed" not in s.values and s.values["summary/vs_baseline"] == pytest.approx(0.2)
    assert "distilled vs CE-only: -0.200" in s.text and "gap closed: undefined" in s.text
    assert "Distillation still helped" in s.text and "nothing to teach" not in s.text
    # ... and when it did not help either, the run says the teacher has nothing to teach
    s = summarize(_m(6.2, teacher=6.3), _m(6.1), steps=600)
    assert "WARNING: the teacher has nothing to teach" in s.text


def test_a_negative_gap_closure_prints_a_warning():
    from distill.summary import summarize

    s = summarize(_m(6.198, teacher=5.775), _m(6.120), steps=600)
    assert s.values["summary/gap_closed"] == pytest.approx(-0.078 / 0.345)
    assert "distillation closed -22.6% of the CE-student-to-teacher gap" in s.text
    assert "WARNING: distillation made the student worse than training on labels alone (0.078 nats)" in s.text
    good = summarize(_m(3.730, teacher=3.379), _m(4.036), steps=600)
    assert "WARNING" not in good.text and "distillation closed 46.6%" in good.text


def test_table_columns_stay_apart_for_huge_perplexities():
    import math

    from distill.summary import format_table

    rows = [("student at initialisation", {"loss": 14.755, "ppl": math.exp(14.755)}),
            ("teacher", {"loss": 2.1, "ppl": math.exp(2.1), "agreement": 1.0, "kl": 0.0})]
    lines = format_table(rows).splitlines()
    header = lines[0]
    for line in lines[2:]:
        cells = line[28:].split()
        assert len(cells) == 4, line  # CE, ppl, agreement, KL: never run together
        assert len(line) == len(header)
    assert "2.56e+06" in lines[2] and "8.2" in lines[3]
