"""End to end: `experiment=smollm2_opd` and `experiment=smollm2_opd_reward` on tiny models through
the `distill-train` CLI, 2 steps each (the second reuses the first step's generation).

Tiny config-built Llamas on a ChatML BPE trained here stand in for SmolLM2, so the runs exercise
MBPP chat prompts, student sampling that stops at ``<|im_end|>``, the teacher's sampled-token
scores, old log-probs on the reused batch, and (reward) the unit tests in the sandbox child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MBPP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"
BIN = Path(sys.executable).parent


@pytest.mark.slow  # ~30 s each on 2 shared CPU cores (a distill-train subprocess)
@pytest.mark.skipif(not MBPP.is_file(), reason=f"no local MBPP at {MBPP}")
@pytest.mark.parametrize("experiment", ["smollm2_opd", "smollm2_opd_reward"])
def test_opd_experiment_runs_2_steps_on_tiny_models(tmp_path, experiment):
    from test_chat_prompts import chatml_tokenizer  # the tests' ChatML BPE (eos </s> != end of turn)

    rows = [json.loads(line) for line in MBPP.read_text().splitlines()[:200]]
    tok = chatml_tokenizer([r["text"] + "\n" + r["code"] + "\n" + "\n".join(r["test_list"]) for r in rows], 1000)
    tok.save_pretrained(tmp_path / "tok")
    run = tmp_path / "run"
    args = [f"experiment={experiment}", "student=tiny", "teacher=tiny_random", f"student.tokenizer={tmp_path / 'tok'}",
            "student.config.max_position_embeddings=1024", "teacher.model.config.max_position_embeddings=1024",
            "sequences.sampling.max_new_tokens=8", f"data.source.path={MBPP}", "data.source.max_examples=8",
            "data.max_val_examples=2", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "summary.enabled=false", "logger=csv",
            f"hydra.run.dir={run}"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    proc = subprocess.run([str(BIN / "distill-train"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    resolved = (run / "config_resolved.yaml").read_text()
    assert "OnPolicyDistillation" in resolved and "MBPPPrompts" in resolved
    metrics = next(run.rglob("metrics.csv")).read_text()
    header = metrics.splitlines()[0].split(",")
    for col in ("train/opd", "train/opd_kl", "train/generation_s", "train/reused"):
        assert col in header, col
    if experiment == "smollm2_opd_reward":
        assert "CodeReward" in resolved
        assert "train/reward_mean" in header and "train/reward_s" in header
