"""The embedded default's teacher: pretrained once, kept in a folder keyed by everything that
determines it, reloadable, resumable, side-effect free, early-stopped on held-out loss."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from distill.build import build_checked

# teacher=tiny_stdlib is the default run's teacher; shrink it so pretraining takes a second.
SMALL_TEACHER = ["teacher=tiny_stdlib", "teacher.pretrain.steps=6", "teacher.pretrain.save_every=2",
                 "teacher.pretrain.eval_every=2", "teacher.pretrain.warmup=1", "teacher.pretrain.batch_size=4",
                 "teacher.model.config.hidden_size=32", "teacher.model.config.intermediate_size=64",
                 "teacher.model.config.num_hidden_layers=1", "teacher.model.config.num_attention_heads=4",
                 "teacher.model.config.num_key_value_heads=4"]


def _teacher_and_data(tiny_cfg, cache_dir, name: str = "run", *overrides: str):
    cfg = tiny_cfg(*SMALL_TEACHER, f"teacher.pretrain.dir={cache_dir}", f"teacher.pretrain.name={name}", *overrides)
    checked = build_checked(cfg)
    return checked.teacher, checked.datamodule


def _folder(teacher) -> Path:
    return Path(teacher.spec.name_or_path)


def _weights(path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_pretrained_teacher_is_a_reloadable_hf_folder_and_is_reused(tiny_cfg, tmp_path, monkeypatch):
    teacher, datamodule = _teacher_and_data(tiny_cfg, tmp_path)
    teacher.prepare(datamodule)
    out = _folder(teacher)
    assert out.parent == tmp_path and out.name.startswith("run-s6-")
    record = json.loads((out / "distill_pretrain.json").read_text())
    assert record["steps"] == 6 and record["batch_size"] == 4 and [s for s, _ in record["heldout_history"]] == [2, 4, 6]
    assert 0 < record["heldout_loss"] < 2 * torch.log(torch.tensor(2048.0)).item()
    assert not out.with_name(out.name + ".partial").exists() and not out.with_name(out.name + ".tmp").exists()
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1
    assert (out / "tokenizer.json").exists()

    # A second run with the same data and recipe finds the folder and does not train again.
    import distill.teachers.pretrain as pretrain

    monkeypatch.setattr(pretrain, "_pretrain", lambda *a, **k: pytest.fail("pretrained a cached teacher"))
    again, datamodule = _teacher_and_data(tiny_cfg, tmp_path)
    again.prepare(datamodule)
    assert _folder(again) == out


def test_a_teacher_trained_on_other_data_is_never_loaded_for_the_default(tiny_cfg, tmp_path):
    """Bug: the folder was named by its steps only, so a first run on another repo's code stored
    its teacher under the stdlib name and every later default run loaded it silently."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for i in range(30):
        (repo / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * 40)
    other, data = _teacher_and_data(tiny_cfg, tmp_path / "t", "run", "data=text", f"data.source.train={repo}",
                                    "data.source.val_fraction=0.2")
    other.prepare(data)
    default, data = _teacher_and_data(tiny_cfg, tmp_path / "t")
    default.prepare(data)
    assert _folder(default) != _folder(other) and _folder(default).exists() and _folder(other).exists()
    # the tiny student's tokenizer follows the run's data too
    tok_other = build_checked(tiny_cfg("data=text", f"data.source.train={repo}", "data.source.val_fraction=0.2")).tokenizer
    tok_default = build_checked(tiny_cfg()).tokenizer
    assert tok_other.name_or_path != tok_default.name_or_path
    # and so does a change of recipe
    longer, data = _teacher_and_data(tiny_cfg, tmp_path / "t", "run", "teacher.pretrain.steps=4")
    longer.prepare(data)
    assert _folder(longer) not in (_folder(default), _folder(other))


def test_pretraining_keeps_the_best_heldout_weights_and_warns_when_heldout_rises(tiny_cfg, tmp_path, caplog):
    """Bug: on a small corpus the fixed step budget made many passes and overfit, and the last
    (worse) weights were kept. Early stopping keeps the best evaluation and says so."""
    repo = tmp_path / "small"
    repo.mkdir()
    (repo / "a.py").write_text("".join(f"def g{i}(a, b):\n    return a * {i} - b\n" for i in range(60)))
    (repo / "val.py").write_text("class Q:\n    def run(self):\n        return [x ** 3 for x in range(9)]\n" * 30)
    teacher, data = _teacher_and_data(
        tiny_cfg, tmp_path, "run", "data=text", f"data.source.train={repo / 'a.py'}", f"data.source.val={repo / 'val.py'}",
        "teacher.pretrain.steps=60", "teacher.pretrain.eval_every=5", "teacher.pretrain.warmup=2",
        "teacher.pretrain.lr=1e-2", "teacher.pretrain.save_every=0")
    with caplog.at_level(logging.WARNING, logger="distill.teachers.pretrain"):
        teacher.prepare(data)
    record = json.loads((_folder(teacher) / "distill_pretrain.json").read_text())
    history = dict((int(s), v) for s, v in record["heldout_history"])
    assert record["epochs"] > 5  # a tiny corpus: many passes
    assert record["kept_step"] == min(history, key=history.get) < 60
    assert record["heldout_loss"] == pytest.approx(history[record["kept_step"]])
    assert history[60] > record["heldout_loss"]
    assert any("held-out loss rose" in r.getMessage() for r in caplog.records)
    # the saved weights are the kept ones: their held-out loss is the recorded best
    from distill.teachers.pretrain import heldout_loss

    model = AutoModelForCausalLM.from_pretrained(_folder(teacher))
    assert heldout_loss(model, data.val_dataloader()) == pytest.approx(record["heldout_loss"], abs=1e-5)


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
    assert (_folder(teacher) / "config.json").exists()
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads


def test_pretraining_resumes_after_a_crash_to_the_same_weights(tiny_cfg, tmp_path, monkeypatch):
    # evaluation at the end only, so that every collate call below is a training batch
    no_eval = "teacher.pretrain.eval_every=0"
    teacher, datamodule = _teacher_and_data(tiny_cfg, tmp_path / "straight", "run", no_eval)
    teacher.prepare(datamodule)

    teacher, datamodule = _teacher_and_data(tiny_cfg, tmp_path / "crashed", "run", no_eval)
    datamodule.setup("fit")
    collate, calls = datamodule.collate, []

    def crash_on_fifth_batch(examples):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated Ctrl-C at step 5")
        return collate(examples)

    monkeypatch.setattr(datamodule, "collate", crash_on_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        teacher.prepare(datamodule)
    # Steps 1-4 were saved (every 2 steps); no finished folder may exist yet.
    out = _folder(teacher)
    assert not out.exists()
    assert torch.load(out.with_name(out.name + ".partial") / "state.pt", weights_only=False)["step"] == 4

    monkeypatch.setattr(datamodule, "collate", collate)
    teacher.prepare(datamodule)
    assert not out.with_name(out.name + ".partial").exists()
    straight, resumed = _weights(next((tmp_path / "straight").glob("run-s6-*"))), _weights(out)
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6, msg=name)


def test_the_preset_that_pretrains_refuses_a_folder_of_your_own(tiny_cfg, tmp_path):
    from distill.config import ConfigError

    with pytest.raises(ConfigError, match="teacher=hf"):
        build_checked(tiny_cfg("teacher=tiny_stdlib", f"teacher.model.name_or_path={tmp_path}"))
