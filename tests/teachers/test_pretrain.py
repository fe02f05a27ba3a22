"""The embedded default's teacher: pretrained once, cached as an HF folder, resumable, side-effect free."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from distill.config import instantiate
from distill.build import build_checked

# teacher=tiny_stdlib is the default run's teacher; shrink it so pretraining takes a second.
SMALL_TEACHER = ["teacher=tiny_stdlib", "teacher.pretrain.steps=6", "teacher.pretrain.save_every=2",
                 "teacher.pretrain.warmup=1", "teacher.pretrain.batch_size=4",
                 "teacher.model.config.hidden_size=32", "teacher.model.config.intermediate_size=64",
                 "teacher.model.config.num_hidden_layers=1", "teacher.model.config.num_attention_heads=4",
                 "teacher.model.config.num_key_value_heads=4"]


def _teacher_and_data(tiny_cfg, cache_dir, name: str = "run"):
    cfg = tiny_cfg(*SMALL_TEACHER, f"teacher.model.name_or_path={cache_dir}/{name}")
    checked = build_checked(cfg)
    datamodule = instantiate(cfg.data, "data").connect(checked.tokenizer)
    return checked.teacher, datamodule


def _weights(path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_pretrained_teacher_is_a_reloadable_hf_folder_and_is_reused(tiny_cfg, tmp_path, monkeypatch):
    teacher, datamodule = _teacher_and_data(tiny_cfg, tmp_path)
    teacher.prepare(datamodule)
    out = tmp_path / "run"
    record = json.loads((out / "distill_pretrain.json").read_text())
    assert record["steps"] == 6 and record["batch_size"] == 4
    assert 0 < record["heldout_loss"] < 2 * torch.log(torch.tensor(2048.0)).item()
    assert not (tmp_path / "run.partial").exists() and not (tmp_path / "run.tmp").exists()
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1
    assert (out / "tokenizer.json").exists()

    # A second run finds the folder and does not train again.
    import distill.teachers.pretrain as pretrain

    monkeypatch.setattr(pretrain, "_pretrain", lambda *a, **k: pytest.fail("pretrained a cached teacher"))
    teacher.prepare(datamodule)


def test_pretraining_leaves_the_callers_rng_and_threads_alone(tiny_cfg, tmp_path):
    # The student is built after the teacher: a first run (which pretrains) and a later run
    # (which loads) must initialise it identically.
    teacher, datamodule = _teacher_and_data(tiny_cfg, tmp_path)
    datamodule.setup("fit")
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    before = torch.get_rng_state()
    teacher.pretrain = {**teacher.pretrain, "threads": 1}
    teacher.prepare(datamodule)
    assert (tmp_path / "run" / "config.json").exists()
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads


def test_pretraining_resumes_after_a_crash_to_the_same_weights(tiny_cfg, tmp_path, monkeypatch):
    teacher, datamodule = _teacher_and_data(tiny_cfg, tmp_path, "straight")
    teacher.prepare(datamodule)

    teacher, datamodule = _teacher_and_data(tiny_cfg, tmp_path, "crashed")
    datamodule.setup("fit")
    collate, calls = datamodule._collate, []

    def crash_on_fifth_batch(examples):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated Ctrl-C at step 5")
        return collate(examples)

    monkeypatch.setattr(datamodule, "_collate", crash_on_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        teacher.prepare(datamodule)
    # Steps 1-4 were saved (every 2 steps); no finished folder may exist yet.
    assert not (tmp_path / "crashed").exists()
    assert torch.load(tmp_path / "crashed.partial" / "state.pt", weights_only=False)["step"] == 4

    monkeypatch.setattr(datamodule, "_collate", collate)
    teacher.prepare(datamodule)
    assert not (tmp_path / "crashed.partial").exists()
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6, msg=name)
