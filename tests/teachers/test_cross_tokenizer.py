"""Cross-tokenizer distillation: byte-span alignment between two BPEs trained on the stdlib corpus,
and a tiny ULD run whose student (1,024-token BPE) and teacher (2,048-token BPE) share no vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from distill import pipeline
from distill.build import build_checked
from distill.config import ConfigError
from distill.data.corpus import read_stdlib_texts
from distill.data.tokenizer import load_tokenizer
from distill.runs import read_metrics
from distill.teachers.cross_tokenizer import CrossTokenizerTeacher, align, token_bytes

BUILD = {"corpus": "stdlib", "max_chars": 300_000}


@pytest.fixture(scope="module")
def tokenizers(distill_cache):
    student = load_tokenizer(None, dict(BUILD, vocab_size=1024, dir=str(distill_cache / "tokenizers")))
    teacher = load_tokenizer(None, dict(BUILD, vocab_size=2048, dir=str(distill_cache / "tokenizers")))
    return student, teacher


def test_aligned_positions_share_the_same_text_prefix(tokenizers):
    student, teacher = tokenizers
    text = read_stdlib_texts("val", max_chars=20_000)[0][:4000]
    ids = student(text)["input_ids"][5:305]  # a packed block starts and ends anywhere
    t_ids, alignment = align(student, teacher, ids)
    assert len(alignment) == len(ids) and len(t_ids) < len(ids)  # the larger vocabulary needs fewer tokens
    s_bytes, t_bytes = token_bytes(student, ids), token_bytes(teacher, t_ids)
    hits = [(i, j) for i, j in enumerate(alignment) if j >= 0]
    assert len(hits) > 0.5 * len(ids)
    for i, j in hits:
        assert b"".join(s_bytes[: i + 1]) == b"".join(t_bytes[: j + 1])
    # where no teacher boundary falls on a student boundary, nothing is aligned
    t_ends = {sum(map(len, t_bytes[: j + 1])) for j in range(len(t_ids))}
    for i, j in enumerate(alignment):
        if j < 0:
            assert sum(map(len, s_bytes[: i + 1])) not in t_ends


def test_a_block_cut_inside_a_character_still_aligns(tokenizers):
    student, teacher = tokenizers
    ids = student("é😀 café déjà vu " * 30)["input_ids"][1:80]
    t_ids, alignment = align(student, teacher, ids)
    assert sum(j >= 0 for j in alignment) > 0.5 * len(ids)


def _cross_cfg(tiny_cfg, tmp_path, distill_cache, *overrides):
    cfg = tiny_cfg("loss=uld", "teacher=cross_tokenizer", "student.config.vocab_size=1024",
                   "student.tokenizer_build.vocab_size=1024", "trainer.max_steps=3", "export.enabled=false",
                   *overrides, output_dir=tmp_path / "uld")
    with open_dict(cfg):
        cfg.teacher.tokenizer = None
        cfg.teacher.tokenizer_build = dict(BUILD, vocab_size=2048, dir=str(distill_cache / "tokenizers"))
        cfg.teacher.teacher = OmegaConf.create({
            "_target_": "distill.teachers.hf.HFTeacher",
            "model": {"_target_": "distill.models.ModelSpec", "tokenizer": None,
                      "config": {"model_type": "llama", "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 128,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                                 "max_position_embeddings": 256, "tie_word_embeddings": True}}})
    return cfg


def test_tiny_uld_run_across_vocabularies_1024_and_2048(tiny_cfg, tmp_path, distill_cache):
    # Needs distill.validate to let shared_vocabulary=False components through the vocabulary check
    # for a teacher that aligns tokenizers, and the module's held-out metrics to skip the id-by-id
    # teacher comparisons when the vocabularies differ.
    cfg = _cross_cfg(tiny_cfg, tmp_path, distill_cache)
    checked = build_checked(cfg)
    assert len(checked.tokenizer) == 1024 and len(checked.teacher._teacher_tokenizer()) == 2048
    assert checked.vocab_size is None  # no shared ids to slice logits to
    pipeline.run(cfg)
    rows = read_metrics(tmp_path / "uld")
    logged = {k for r in rows for k in r}
    assert {"train/uld", "train/ce", "train/aligned", "val/loss"} <= logged
    uld = [r["train/uld"] for r in rows if "train/uld" in r]
    aligned = [r["train/aligned"] for r in rows if "train/aligned" in r]
    assert all(0.0 < u < 2.0 for u in uld)
    assert all(0.3 < a <= 1.0 for a in aligned)


def test_logit_losses_refuse_a_cross_tokenizer_teacher_naming_uld(tiny_cfg, tmp_path, distill_cache):
    cfg = _cross_cfg(tiny_cfg, tmp_path, distill_cache, "loss=kd")
    with pytest.raises(ConfigError, match="loss=uld"):
        build_checked(cfg)


def test_uld_with_a_cached_teacher_fails_before_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg("loss=uld", "~teacher", "+teacher._target_=tests.fixtures.teachers.SparseStub",
                   output_dir=tmp_path / "cached")
    with pytest.raises(ValueError, match=r"'uld'.*cannot use a teacher of kind 'sparse'.*teacher=cross_tokenizer"):
        pipeline.run(cfg)
    assert not (tmp_path / "cached" / "checkpoints").exists()


def test_cross_tokenizer_teacher_needs_an_online_teacher_and_a_tokenizer():
    from distill.teachers.base import NoTeacher

    with pytest.raises(ValueError, match="online teacher"):
        CrossTokenizerTeacher(NoTeacher(), tokenizer="x")
    with pytest.raises(ValueError, match="tokenizer_build.corpus must be 'stdlib'"):
        from distill.teachers.hf import HFTeacher
        from distill.models import ModelSpec

        CrossTokenizerTeacher(HFTeacher(ModelSpec(config={"model_type": "llama"})),
                              tokenizer_build={"corpus": "data", "vocab_size": 8})


def test_cross_tokenizer_teacher_reads_with_its_models_own_tokenizer_by_default(tmp_path):
    # teacher.tokenizer=null: the wrapped model's folder (for an installed GGUF, its converted folder,
    # known only once converted), not an error
    from distill.models import ModelSpec
    from distill.teachers.hf import HFTeacher
    from tests.evaluation.conftest import save_tiny_model

    folder = save_tiny_model(tmp_path / "teacher")
    teacher = CrossTokenizerTeacher(HFTeacher(ModelSpec(name_or_path=str(folder))))
    assert Path(teacher.tokenizer) == folder
    assert teacher._teacher_tokenizer()("def f():")["input_ids"]


def test_tiny_opd_run_across_vocabularies_on_student_samples(tiny_cfg, tmp_path, distill_cache):
    """loss=opd with teacher=cross_tokenizer on sequences the student samples during training: the
    teacher re-tokenizes each sampled row and scores the student's tokens by byte spans."""
    cfg = _cross_cfg(tiny_cfg, tmp_path, distill_cache, "loss=opd", "sequences=student",
                     "sequences.sampling.max_new_tokens=8", "sequences.prompts.prompt_tokens=16", "trainer.max_steps=2")
    pipeline.run(cfg)
    rows = read_metrics(tmp_path / "uld")
    kl = [r["train/opd_kl"] for r in rows if "train/opd_kl" in r]
    assert kl and all(abs(k) < 50 for k in kl)
    assert any(r.get("train/generated_tokens", 0) > 0 for r in rows)
