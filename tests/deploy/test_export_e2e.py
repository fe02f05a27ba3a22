"""End to end on a tiny run: train -> distill-eval -> distill-export --onnx -> the shipped folder.

The run is made in-process (``distill.pipeline.run``, what ``distill-train`` calls) and its
``.hydra/`` files are written as Hydra writes them, so the card's command can be checked.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

import torch  # noqa: E402
import yaml  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from distill.export import load_student, main as export_main  # noqa: E402
from distill.pipeline import run  # noqa: E402

OVERRIDES = ["debug=tiny", "summary.enabled=true", "summary.baseline=false"]


def _eval_cfg(*overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from distill.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def test_train_eval_export_card_and_onnx(tiny_cfg, tmp_path):
    from distill.evaluation.cli import run_eval

    run_dir = tmp_path / "run"
    cfg = tiny_cfg(*OVERRIDES[1:], output_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(OVERRIDES))
    run(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())

    ev = _eval_cfg("eval/benchmark=apps_sample", f"model.path={run_dir / 'student'}",
                   "generation.max_new_tokens=8", f"output_dir={tmp_path / 'eval'}")
    evaluated = run_eval(ev)["models"][0]

    out = tmp_path / "shipped"
    export_main([str(run_dir), "--out", str(out), "--onnx", "--eval", str(tmp_path / "eval")])

    # the HF folder round-trips and equals the checkpoint's student
    from transformers import AutoModelForCausalLM

    student, tok, step = load_student(run_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([tok("def add(a, b):\n    return a + b\n")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, student(ids).logits)

    # ONNX: logits within tolerance, greedy tokens equal, int8 quality reported
    checks = json.loads((out / "deploy_checks.json").read_text())["onnx"]
    assert checks["ok"] and checks["greedy_equal"]
    assert checks["logits_max_abs_diff"] <= checks["atol"]
    assert (out / "onnx" / "model.onnx").exists() and (out / "onnx" / "model_int8.onnx").exists()
    assert "int8_ce_change" in checks

    # the card: recipe, steps, held-out metrics, pass@k, command
    card = ModelCard.load(out / "README.md")
    text = card.text
    assert card.data.library_name == "transformers" and "onnx" in card.data.tags
    assert f"| {step} optimizer steps" in text and step == 4
    assert "ForwardKL, weight 1.0" in text and "`ce`: CrossEntropy, weight 0.0" in text
    assert f"| student, distilled | {summary['student']['loss']:.4f} |" in text
    assert f"| apps_sample | 6 | 1 | pass@1={evaluated['pass@1']:.3f}" in text
    assert "distill-train debug=tiny summary.enabled=true summary.baseline=false" in text
    assert "greedy_tokens_equal: True" in text
