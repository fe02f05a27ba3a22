"""Bad input fails before any training step, with a message naming the key or file and the fix."""

from __future__ import annotations

import pytest

from distill.data.tokenizer import train_bpe_tokenizer
from distill import pipeline


def fails(cfg, exc, match):
    with pytest.raises(exc, match=match):
        pipeline.run(cfg)
    assert not (cfg.paths.output_dir and __import__("pathlib").Path(cfg.paths.output_dir, "checkpoints").exists())


def test_missing_model_path_names_the_key(tiny_cfg):
    cfg = tiny_cfg("student.config=null", "student.name_or_path=/nonexistent/model")
    fails(cfg, FileNotFoundError, r"student.name_or_path='/nonexistent/model'")


def test_missing_teacher_path_names_the_key(tiny_cfg):
    cfg = tiny_cfg("teacher=qwen2.5-coder-7b", "teacher.model.name_or_path=/nonexistent/teacher")
    fails(cfg, FileNotFoundError, r"teacher.name_or_path='/nonexistent/teacher'")


def test_unset_mandatory_value_names_the_key_behind_an_interpolation(tiny_cfg):
    # teacher=cross_tokenizer leaves the teacher folder `???`, and its `tokenizer` interpolates to it:
    # the message names the `???` key itself (not the interpolating one) and how to set it
    from distill.config import ConfigError

    cfg = tiny_cfg("teacher=cross_tokenizer", "loss=uld")
    fails(cfg, ConfigError, r"teacher\.teacher\.model\.name_or_path must be set .* "
                            r"teacher\.teacher\.model\.name_or_path=<value>")


def test_empty_dataset(tiny_cfg, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = tiny_cfg("data=text", f"data.source.train={tmp_path / 'empty'}", "data.seq_len=32", "data.batch_size=4")
    # the tokenizer for the tiny student is trained on the run's data, so the empty source is named there
    fails(cfg, ValueError, r"data: source TextFiles gave 0 training examples .* fewer than one batch")


def test_too_short_dataset(tiny_cfg, tmp_path):
    (tmp_path / "one.py").write_text("x = 1\n" * 20)
    cfg = tiny_cfg("data=text", f"data.source.train={tmp_path / 'one.py'}", f"data.source.val={tmp_path / 'one.py'}",
                   "data.seq_len=32", "data.batch_size=4")
    fails(cfg, ValueError, r"fewer than one batch")


def test_missing_data_file(tiny_cfg, tmp_path):
    cfg = tiny_cfg("data=text", f"data.source.train={tmp_path / 'nope.jsonl'}")
    fails(cfg, FileNotFoundError, r"nope.jsonl does not exist")


def test_unknown_loss_component(tiny_cfg):
    cfg = tiny_cfg("loss.components.kl._target_=distill.losses.components.ForwardKLL")
    fails(cfg, Exception, r"ForwardKLL")


def test_logit_loss_without_teacher(tiny_cfg):
    cfg = tiny_cfg("teacher=none", "loss=kd")
    fails(cfg, ValueError, r"loss component 'kl' \(ForwardKL\) cannot use a teacher of kind 'none'.*loss config")


def test_attention_matching_under_sdpa(tiny_cfg):
    cfg = tiny_cfg("loss=attention", "+student.config.attn_implementation=sdpa")
    fails(cfg, ValueError, r"student uses attn_implementation='sdpa'.*attention-matching")


def test_hidden_states_of_a_cached_teacher(tiny_cfg):
    cfg = tiny_cfg("loss=hidden", "~teacher", "+teacher._target_=tests.fixtures.teachers.SparseStub")
    fails(cfg, ValueError, r"teacher=SparseStub stores only top-k log-probs")


def test_full_logit_loss_with_a_cached_teacher_names_the_online_teacher(tiny_cfg):
    cfg = tiny_cfg("loss=akl", "~teacher", "+teacher._target_=tests.fixtures.teachers.SparseStub")
    fails(cfg, ValueError, r"'akl' \(AdaptiveKL\) cannot use a teacher of kind 'sparse'.*online teacher")


def test_vocabulary_mismatch_for_logit_losses(tiny_cfg, tmp_path):
    other = train_bpe_tokenizer(["def f(x):\n    return x + 1\n" * 50, "class A:\n    pass\n" * 50], 300,
                                tmp_path / "other-tok")
    cfg = tiny_cfg(f"teacher.model.tokenizer={tmp_path / 'other-tok'}", f"teacher.model.config.vocab_size={len(other)}")
    fails(cfg, ValueError, r"teacher tokenizer .*other-tok.* differs from the student's.*one shared vocabulary")


def test_accumulate_grad_batches_is_refused(tiny_cfg):
    cfg = tiny_cfg("+trainer.accumulate_grad_batches=4")
    fails(cfg, ValueError, r"trainer.accumulate_grad_batches=4.*module.micro_batch_size")


def test_bad_hyperparameter_names_the_key(tiny_cfg):
    cfg = tiny_cfg("loss=jsd", "loss.components.jsd.beta=1.5")
    fails(cfg, ValueError, r"GeneralizedJSD: beta must be in \[0, 1\], got 1.5")
