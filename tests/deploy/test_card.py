"""The model card: every field comes from the run's records (config, overrides, summary, evals)."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import ModelCard
from omegaconf import OmegaConf

from distill.config import compose_config
from distill.deploy.card import read_eval_summaries, run_command, write_model_card

OVERRIDES = ["loss=progressive", "trainer.max_steps=600", "data.batch_size=8"]


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "2026-01-01_12-00-00"
    cfg = compose_config("train", OVERRIDES, run)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(OVERRIDES))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"config_name": "train"}}}))
    (run / "summary.json").write_text(json.dumps({
        "teacher": {"loss": 2.1, "ppl": 8.17}, "baseline": {"loss": 3.0, "ppl": 20.1},
        "student": {"loss": 2.55, "ppl": 12.8, "agreement": 0.61}, "summary/gap_closed": 0.5}))
    return run


def test_card_carries_the_recipe_metrics_and_command(run_dir, tmp_path):
    ev = tmp_path / "eval" / "student"
    ev.mkdir(parents=True)
    (ev / "summary.json").write_text(json.dumps({
        "benchmark": "humaneval", "num_tasks": 164, "n": 10, "pass_at_k": {"pass@1": 0.125,
                                                                          "pass@10": 0.25}}))
    out = tmp_path / "student"
    out.mkdir()
    path = write_model_card(run_dir, out, steps=600, evals=read_eval_summaries([tmp_path / "eval"]),
                            exports={"onnx": {"greedy_tokens_equal": True}})
    card = ModelCard.load(path)
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"distill", "knowledge-distillation", "onnx"} <= set(meta["tags"])
    metrics = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics == {"loss": 2.55, "ppl": 12.8, "pass@1": 0.125, "pass@10": 0.25}
    text = card.text
    # teacher and student as configured
    assert "HFTeacher" in text and "4 layers x 256 wide" in text and "1200 steps" in text
    assert "2 layers x 96 wide" in text
    # every loss term with its weight schedule, and the temperature schedule
    assert "Linear(start=4.0, end=1.0, steps=600)" in text
    assert "`ce`: CrossEntropy, weight Cosine(start=0.5, end=0.0, steps=600)" in text
    assert "`kl`: ForwardKL, weight Warmup(value=1.0, steps=50)" in text
    assert "HiddenStateMatch" in text and "Step(milestones=[300" in text
    assert "StdlibCorpus" in text and "batch 8" in text and "600 optimizer steps" in text
    assert "distill-train loss=progressive trainer.max_steps=600 data.batch_size=8" in text
    assert "| student, distilled | 2.5500 | 12.8000 | 0.6100 |" in text
    assert "closed 50.0%" in text and "| humaneval | 164 | 10 | pass@1=0.125, pass@10=0.250" in text


def test_command_is_quoted_and_missing_records_are_said(tmp_path, run_dir):
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["data.source.path=a b"]))
    assert run_command(run_dir) == "distill-train 'data.source.path=a b'"
    (run_dir / ".hydra" / "overrides.yaml").unlink()
    (run_dir / "summary.json").unlink()
    text = ModelCard.load(write_model_card(run_dir, tmp_path)).text
    assert "not recorded" in text and "No `summary.json`" in text
    with pytest.raises(FileNotFoundError, match="config_resolved.yaml"):
        write_model_card(tmp_path / "nothing", tmp_path)
