"""End to end: `experiment=smollm2_mbpp_on_policy` with tiny models, through the `distill-train` CLI.

The student and teacher are tiny config-built Llamas on a BPE trained here with a ChatML template,
so the run exercises MBPP chat prompts, on-policy generation that stops at ``<|im_end|>``, and the
loss on generated answers in a couple of CPU seconds per step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MBPP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"
BIN = Path(sys.executable).parent


@pytest.mark.skipif(not MBPP.is_file(), reason=f"no local MBPP at {MBPP}")
@pytest.mark.parametrize("sequences", ["student", "seqkd"])
def test_mbpp_chat_prompts_on_policy_run_exits_0(tmp_path, sequences):
    from test_chat_prompts import chatml_tokenizer  # the tests' ChatML BPE (eos </s> != end of turn)

    rows = [json.loads(line) for line in MBPP.read_text().splitlines()[:200]]
    tok = chatml_tokenizer([r["text"] + "\n" + r["code"] + "\n" + "\n".join(r["test_list"]) for r in rows], 1000)
    tok.save_pretrained(tmp_path / "tok")
    run = tmp_path / "run"
    args = ["experiment=smollm2_mbpp_on_policy", "student=tiny", "teacher=tiny_random",
            f"student.tokenizer={tmp_path / 'tok'}", "student.config.max_position_embeddings=1024",
            "teacher.model.config.max_position_embeddings=1024", f"sequences={sequences}",
            "sequences.sampling.max_new_tokens=8", f"data.source.path={MBPP}", "data.source.max_examples=8",
            "data.seq_len=384", "data.batch_size=4", "data.max_val_examples=4", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "summary.enabled=false",
            "logger=csv", f"hydra.run.dir={run}"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    proc = subprocess.run([str(BIN / "distill-train"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    resolved = (run / "config_resolved.yaml").read_text()
    assert "MBPPPrompts" in resolved and "SequenceSource" in resolved
    metrics = (next(run.rglob("metrics.csv"))).read_text()
    assert "train/generated_tokens" in metrics  # the student (or, seqkd, the teacher) wrote the answers
    assert (run / "student" / "tokenizer_config.json").is_file()
