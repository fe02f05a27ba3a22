"""teacher=ensemble: the three combinations against hand-computed references, the sparse member's
spread tail, the errors, and a tiny end-to-end run with two different teachers that logs each
member's agreement with the student."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from distill import pipeline
from distill.runs import read_metrics
from distill.teachers.base import Teacher
from distill.teachers.ensemble import EnsembleTeacher, dense_log_probs
from distill.types import ModelInfo, TeacherKind, TeacherOutput

B, L, V = 2, 5, 7


class Fixed(Teacher):
    """A teacher that returns fixed logits (or a sparse support)."""

    kind = TeacherKind.FULL

    def __init__(self, out: TeacherOutput, tokenizer=None):
        self.out, self._tok = out, tokenizer
        self.kind = out.kind

    def info(self):
        return ModelInfo(8, 1, 1, V)

    @property
    def tokenizer(self):
        return self._tok

    def __call__(self, batch, needs):
        return self.out


def batch():
    labels = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(0))
    labels[1, :2] = -100
    return {"input_ids": labels.clamp_min(0), "attention_mask": torch.ones(B, L, dtype=torch.long), "labels": labels}


def two(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, V, generator=g) * 2, torch.randn(B, L, V, generator=g) * 2


def test_mean_is_the_weighted_mixture_of_probabilities():
    a, b = two()
    ens = EnsembleTeacher({"a": Fixed(TeacherOutput(logits=a)), "b": Fixed(TeacherOutput(logits=b))},
                          {"a": 3.0, "b": 1.0})
    out = ens(batch(), frozenset({"teacher_logits"}))
    want = 0.75 * a.softmax(-1) + 0.25 * b.softmax(-1)
    torch.testing.assert_close(out.logits.exp(), want, atol=1e-6, rtol=0)
    assert out.kind == TeacherKind.FULL and set(out.member_top1) == {"a", "b"}
    assert torch.equal(out.member_top1["b"], b.argmax(-1))


def test_token_and_example_selection_pick_the_lowest_gold_ce():
    a, b = two(1)
    x = batch()
    y = torch.nn.functional.pad(x["labels"][:, 1:], (0, 1), value=-100)
    ce = lambda z: -z.log_softmax(-1).gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # noqa: E731
    members = {"a": Fixed(TeacherOutput(logits=a)), "b": Fixed(TeacherOutput(logits=b))}
    out = EnsembleTeacher(members, combine="token")(x, frozenset())
    pick_b = ce(b) < ce(a)
    want = torch.where(pick_b.unsqueeze(-1), b.log_softmax(-1), a.log_softmax(-1))
    mask = y != -100
    torch.testing.assert_close(out.logits[mask], want[mask], atol=1e-6, rtol=0)
    assert torch.equal(out.member_picked["b"][mask], pick_b[mask])
    out = EnsembleTeacher(members, combine="example")(x, frozenset())
    mean_ce = lambda z: torch.where(mask, ce(z), 0.0).sum(1) / mask.sum(1)  # noqa: E731
    pick_b = mean_ce(b) < mean_ce(a)
    for i in range(B):
        src = b if pick_b[i] else a
        torch.testing.assert_close(out.logits[i], src[i].log_softmax(-1), atol=1e-6, rtol=0)
        assert bool(out.member_picked["b"][i].all()) == bool(pick_b[i])


def test_a_cached_member_spreads_its_tail_over_the_other_ids():
    lp = torch.log(torch.tensor([[[0.5, 0.2, 0.1]]]))
    ids = torch.tensor([[[4, 0, 2]]])
    out = TeacherOutput(topk_ids=ids, topk_logprobs=lp)
    p = dense_log_probs(out, V).exp()[0, 0]
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert p[4].item() == pytest.approx(0.5) and p[0].item() == pytest.approx(0.2)
    assert p[1].item() == pytest.approx(0.2 / 4, abs=1e-7)  # tail 0.2 over the 4 ids outside the support
    a, _ = two(2)
    mix = EnsembleTeacher({"online": Fixed(TeacherOutput(logits=a)),
                           "cached": Fixed(TeacherOutput(topk_ids=ids.expand(B, L, 3), topk_logprobs=lp.expand(B, L, 3)))})
    got = mix(batch(), frozenset()).logits.exp()
    torch.testing.assert_close(got, 0.5 * a.softmax(-1) + 0.5 * p, atol=1e-6, rtol=0)


def test_bad_ensembles_fail_naming_the_fix():
    a, _ = two()
    full = Fixed(TeacherOutput(logits=a))
    sparse = Fixed(TeacherOutput(topk_ids=torch.zeros(B, L, 2, dtype=torch.long), topk_logprobs=torch.zeros(B, L, 2)))
    with pytest.raises(ValueError, match="Keep one cached member"):
        EnsembleTeacher({"x": sparse, "y": sparse})
    with pytest.raises(ValueError, match="different tokenizers"):
        EnsembleTeacher({"x": Fixed(TeacherOutput(logits=a), "tok-a"), "y": Fixed(TeacherOutput(logits=a), "tok-b")})
    with pytest.raises(ValueError, match="missing \\['y'\\]"):
        EnsembleTeacher({"x": full, "y": full}, {"x": 1.0})
    with pytest.raises(ValueError, match="combine must be one of"):
        EnsembleTeacher({"x": full}, combine="vote")
    with pytest.raises(ValueError, match="single online teacher"):
        EnsembleTeacher({"x": full}).load("eager")
    with pytest.raises(ValueError, match="single online teacher"):
        EnsembleTeacher({"x": full})(batch(), frozenset({"teacher_hidden_states"}))


TINY = {"model_type": "llama", "vocab_size": 2048, "intermediate_size": 64, "num_hidden_layers": 1,
        "max_position_embeddings": 256, "tie_word_embeddings": True}


def _member(width: int, layers: int) -> dict:
    config = dict(TINY, hidden_size=width, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4)
    return {"_target_": "distill.teachers.hf.HFTeacher",
            "model": {"_target_": "distill.models.ModelSpec", "config": config, "tokenizer": "${student.tokenizer}"}}


def test_tiny_run_with_two_different_teachers_logs_each_member(tiny_cfg, tmp_path, combine="token"):
    # one e2e run (the mean is checked against its formula above); token mode logs picks as well
    run = tmp_path / combine
    cfg = tiny_cfg("teacher=ensemble", f"teacher.combine={combine}", "trainer.max_steps=3", "export.enabled=false",
                   output_dir=run)
    with open_dict(cfg):
        cfg.teacher.teachers = OmegaConf.create({"wide": _member(64, 2), "narrow": _member(32, 1)})
        cfg.teacher.weights = {"wide": 2.0, "narrow": 1.0}
    pipeline.run(cfg)
    rows = read_metrics(run)
    logged = {k for r in rows for k in r}
    assert {"train/agree_wide", "train/agree_narrow", "val/kl", "val/agreement"} <= logged
    for r in rows:
        for k in ("train/agree_wide", "train/agree_narrow"):
            if k in r:
                assert 0.0 <= r[k] <= 1.0 and math.isfinite(r[k])
    if combine == "token":
        picked = [r["train/picked_wide"] + r["train/picked_narrow"] for r in rows if "train/picked_wide" in r]
        assert picked and all(p == pytest.approx(1.0) for p in picked)
