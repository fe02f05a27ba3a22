"""End to end: train a tiny student a few steps, evaluate teacher / base / distilled on a
handful of MBPP tasks with held-out metrics, and check the report and its chart."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hydra.utils import instantiate

from distill.build import build_checked
from distill.evaluation.cli import run_eval
from distill import pipeline


def test_train_then_compare(tiny_cfg, eval_cfg, mbpp_path, tmp_path):
    # a fixed teacher and the untrained student, saved as HF folders
    cfg = tiny_cfg("logger=none", output_dir=tmp_path / "run")
    tok = build_checked(cfg).tokenizer  # the run's own tokenizer (trained on its data)
    for name, node, seed in (("teacher", cfg.teacher.model, 1), ("base", cfg.student, 0)):
        torch.manual_seed(seed)
        instantiate(node).build().save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)

    cfg = tiny_cfg("logger=none", f"++teacher.model.name_or_path={tmp_path / 'teacher'}",
                   output_dir=tmp_path / "run")
    metrics = pipeline.run(cfg)
    assert "val/loss" in metrics and (tmp_path / "run" / "student" / "config.json").exists()

    out_dir = tmp_path / "eval"
    ecfg = eval_cfg(
        "+eval/compare=teacher_base_distilled",
        f"models.teacher.path={tmp_path / 'teacher'}",
        f"models.base.path={tmp_path / 'base'}",
        f"models.distilled.checkpoint={tmp_path / 'run'}",
        "eval/benchmark=mbpp", f"benchmark.path={mbpp_path}", "benchmark.limit=3",
        "generation.max_new_tokens=16", "generation.batch_size=3",
        "eval/heldout=stdlib", "heldout.max_tokens=1024", "heldout.max_length=64",
        "sandbox.timeout=2", "sandbox.workers=2",
        output_dir=out_dir)
    result = run_eval(ecfg)

    summaries = {s["role"]: s for s in result["models"]}
    assert set(summaries) == {"teacher", "base", "distilled"}
    for role, s in summaries.items():
        d = out_dir / s["model"]
        assert (d / "results.jsonl").exists() and (d / "summary.json").exists()
        rows = [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]
        assert [r["task_id"] for r in rows] == ["Mbpp/11", "Mbpp/12", "Mbpp/13"]
        assert all({"prompt", "samples"} <= set(r) for r in rows)
        assert all({"completion", "outcome"} <= set(r["samples"][0]) for r in rows)
        assert 0.0 <= s["pass@1"] <= 1.0 and s["generation"]["tokens_per_s"] > 0
        h = s["heldout"]
        assert h["ppl"] > 1 and h["tokens"] > 100
        if role != "teacher":
            assert 0.0 <= h["agreement"] <= 1.0 and h["kl"] >= 0.0
    # the distilled student is the exported one from the run
    assert summaries["distilled"]["kind"] == "checkpoint"

    report = Path(result["report"]["report"])
    chart = Path(result["report"]["chart"])
    assert report == out_dir / "report.md" and chart == out_dir / "report.png"
    md = report.read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    for col in ("pass@1", "Top-1 agreement", "Perplexity", "Tokens/s"):
        assert col in header
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert [r.split("|")[2].strip() for r in rows[:3]] == ["teacher", "base", "distilled"]
    assert "## Distillation effect" in md and "## Side-by-side samples" in md
    assert "remove first and last occurrence" in md      # an MBPP prompt, shown side by side
    assert md.count("**teacher** (teacher)") == 3          # every sample shows every model
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    comparison = json.loads((out_dir / "comparison.json").read_text())
    assert [c["role"] for c in comparison] == ["teacher", "base", "distilled"]
