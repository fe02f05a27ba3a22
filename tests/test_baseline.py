"""The CE-only baseline's cache key: what determines a CE-only student, and nothing else."""

from __future__ import annotations

from distill.baseline import baseline_config, baseline_dir, baseline_key


def test_runs_differing_only_in_teacher_share_one_baseline(tiny_cfg, tmp_path):
    base = tiny_cfg(output_dir=tmp_path / "a")
    others = [tiny_cfg("teacher=none", "loss=ce", output_dir=tmp_path / "b"),
              tiny_cfg("teacher=tiny_stdlib", "loss=jsd", output_dir=tmp_path / "c"),
              tiny_cfg("teacher=ensemble", output_dir=tmp_path / "d"),
              tiny_cfg("sequences=gkd", output_dir=tmp_path / "e")]
    assert {baseline_key(c) for c in others} == {baseline_key(base)}
    assert baseline_dir(others[0]) == baseline_dir(base)  # the cache dir is shared, not the run dir


def test_what_a_ce_only_run_depends_on_is_keyed(tiny_cfg, tmp_path):
    key = baseline_key(tiny_cfg(output_dir=tmp_path / "a"))
    for override in ("seed=1", "trainer.max_steps=3", "data.seq_len=16", "module.optimizer.lr=0.1",
                     "data.max_val_examples=3", "trainer.val_check_interval=1", "student.config.hidden_size=64"):
        assert baseline_key(tiny_cfg(override, output_dir=tmp_path / override)) != key, override
    # where it writes and what it prints are not
    assert baseline_key(tiny_cfg("trainer.log_every_n_steps=7", "logger=none", output_dir=tmp_path / "l")) == key


def test_the_baseline_trains_without_the_teacher_or_generated_sequences(tiny_cfg, tmp_path):
    cfg = baseline_config(tiny_cfg("sequences=gkd", output_dir=tmp_path / "a"))
    assert cfg.teacher._target_ == "distill.teachers.base.NoTeacher" and cfg.sequences is None
    assert [c._target_.rsplit(".", 1)[-1] for c in cfg.loss.components.values()] == ["CrossEntropy"]
