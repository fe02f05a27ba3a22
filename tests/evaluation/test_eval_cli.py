"""distill-eval: configs compose, run_eval on reference solutions, answers teacher, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill.config import ConfigError
from distill.evaluation.cli import CONF_DIR, model_sources, run_eval

GROUPS = sorted(p for p in (Path(CONF_DIR) / "eval").rglob("*.yaml"))


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_every_eval_preset_composes(eval_cfg, path):
    group = str(path.parent.relative_to(CONF_DIR))
    prefix = "+" if group == "eval/compare" else ""
    cfg = eval_cfg(f"{prefix}{group}={path.stem}")
    assert cfg.benchmark._target_ and cfg.model._target_  # chosen by class, not by a kind string
    assert cfg.generation.n >= 1 and cfg.sandbox.timeout > 0


def test_reference_run_and_resume(eval_cfg, tmp_path):
    cfg = eval_cfg("eval/model=reference", "benchmark.limit=4", "sandbox.workers=2")
    out = run_eval(cfg)
    (s,) = out["models"]
    assert s["pass@1"] == 1.0 and s["num_tasks"] == 4 and out["report"] == {}
    summary = json.loads((tmp_path / "eval" / "reference" / "summary.json").read_text())
    assert summary["pass@1"] == 1.0 and summary["sandbox"]["subreaper"] in (True, False)
    again = run_eval(cfg)["models"][0]
    assert again["this_run"]["resumed_tasks"] == 4


def test_api_teacher_from_its_dataset_vs_reference(eval_cfg, tmp_path, mbpp_path):
    # the teacher's answers come from a generated dataset (chat style, fenced code)
    from distill.evaluation.benchmarks import load_mbpp

    tasks = load_mbpp(mbpp_path).tasks[:3]
    answers = tmp_path / "teacher.jsonl"
    answers.write_text("\n".join(json.dumps({
        "task_id": t.task_id,
        "response": f"Here:\n```python\n{t.reference}\n```" if i else "I don't know."})
        for i, t in enumerate(tasks)) + "\n")
    cfg = eval_cfg("eval/benchmark=mbpp", f"benchmark.path={mbpp_path}", "benchmark.limit=3",
                   "+eval/model@models.teacher=answers", f"models.teacher.answers={answers}",
                   "+eval/model@models.ref=reference", "models.ref.name=ref")
    out = run_eval(cfg)
    by_name = {s["model"]: s for s in out["models"]}
    assert by_name["teacher"]["pass@1"] == pytest.approx(2 / 3)
    assert by_name["teacher"]["style"] == "chat" and by_name["ref"]["pass@1"] == 1.0
    md = Path(out["report"]["report"]).read_text()   # report: auto with two models
    assert "| `teacher` | teacher | 0.667 |" in md and Path(out["report"]["chart"]).exists()


def test_config_errors_name_the_key(eval_cfg):
    with pytest.raises(ConfigError, match="`model`.*set one of path"):
        model_sources(eval_cfg())
    with pytest.raises(ConfigError, match="`models.teacher`.*set one of path"):
        model_sources(eval_cfg("+eval/compare=teacher_base_distilled"))
    with pytest.raises(ConfigError, match="models.x.pth: unknown key"):
        model_sources(eval_cfg("+models.x={_target_: distill.evaluation.sources.LocalModel, pth: p}"))
    with pytest.raises(ConfigError, match="role must be one of"):
        model_sources(eval_cfg("model.path=p", "model.role=boss"))
    with pytest.raises(ValueError, match="ks"):
        run_eval(eval_cfg("eval/model=reference", "ks=[0]", "benchmark.limit=1"))
    with pytest.raises(ValueError, match="sandbox.timeout"):
        run_eval(eval_cfg("eval/model=reference", "sandbox.timeout=-1", "benchmark.limit=1"))
    with pytest.raises(FileNotFoundError, match="benchmark.path"):
        run_eval(eval_cfg("eval/model=reference", "eval/benchmark=mbpp",
                          "benchmark.path=/nonexistent/mbpp.jsonl"))


def test_console_entry_point(tmp_path):
    """The Hydra app behind `distill-eval` (run as a module: the script needs an install)."""
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "distill.evaluation.cli", "eval/model=reference",
         "benchmark.limit=2", f"output_dir={out}", "sandbox.workers=1"],
        capture_output=True, text=True, timeout=120, cwd=Path(CONF_DIR).parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "reference" / "summary.json").read_text())["pass@1"] == 1.0
