"""Fused losses with an online teacher: its (B, L, V) logits are never formed, the loss is unchanged."""

from __future__ import annotations

import pytest
import torch

from distill.losses.components import TEACHER_HIDDEN, TEACHER_LAST_HIDDEN, TEACHER_LOGITS
from distill.build import build_components

GEMMA2 = ["model_type: gemma2", "vocab_size: 2048", "hidden_size: 32", "intermediate_size: 64",
          "num_hidden_layers: 1", "num_attention_heads: 4", "num_key_value_heads: 4", "head_dim: 8"]


def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2000, (4, 16), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0
    return {"input_ids": ids, "attention_mask": attn, "labels": ids.masked_fill(attn == 0, -100)}


def _step(tiny_cfg, tmp_path, loss: str, *overrides: str):
    """One training step's loss and student gradients; the teacher outputs it saw; lm_head calls."""
    ce = "loss.weights.ce=0.5" if loss.startswith("kd") else "+loss.weights.ce=0.5"  # CE counts too
    cfg = tiny_cfg(f"loss={loss}", ce, *overrides, output_dir=tmp_path / loss)
    torch.manual_seed(0)
    module = build_components(cfg).load().module
    seen, head_calls = [], []
    teacher_forward = module.teacher_forward
    module.teacher_forward = lambda batch, needs: seen.append(teacher_forward(batch, needs)) or seen[-1]
    module.teacher.model.get_output_embeddings().register_forward_hook(lambda *a: head_calls.append(1))
    loss_value, logs = module.step_loss(_batch(), step=0, backward=lambda l: l.backward())
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss_value, logs, grads, seen, head_calls


def test_kd_fused_matches_kd_without_forming_teacher_logits(tiny_cfg, tmp_path):
    loss_kd, logs_kd, grads_kd, seen_kd, calls_kd = _step(tiny_cfg, tmp_path, "kd")
    loss_f, logs_f, grads_f, seen_f, calls_f = _step(tiny_cfg, tmp_path, "kd_fused")
    assert all(o.logits is not None for o in seen_kd) and calls_kd
    assert all(o.logits is None and o.last_hidden is not None and o.lm_head_weight is not None for o in seen_f)
    assert not calls_f, "the teacher's lm_head ran under a fused loss"
    torch.testing.assert_close(loss_f, loss_kd, rtol=1e-5, atol=1e-6)
    for name in ("kl", "ce"):
        assert logs_f[name] == pytest.approx(float(logs_kd[name]), rel=1e-5)
    assert grads_f.keys() == grads_kd.keys() and grads_f
    for name in grads_kd:
        torch.testing.assert_close(grads_f[name], grads_kd[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_plain_logit_component_next_to_a_fused_one_gets_teacher_logits(tiny_cfg, tmp_path):
    plain = "+loss.components.rkl={_target_: distill.losses.components.ReverseKL, execution: plain}"
    cfg = tiny_cfg("loss=kd_fused", plain, "+loss.weights.rkl=0.5", output_dir=tmp_path / "mixed")
    module = build_components(cfg).load().module
    assert module.loss.teacher_needs == {TEACHER_LOGITS}
    loss_value, logs = module.step_loss(_batch(), step=0)
    assert torch.isfinite(loss_value) and logs["rkl"] > 0


def test_teacher_needs_per_loss(tiny_cfg, tmp_path):
    def needs(*overrides):
        return build_components(tiny_cfg(*overrides, output_dir=tmp_path / "n")).load().module.loss.teacher_needs

    assert needs("loss=kd") == {TEACHER_LOGITS}
    assert needs("loss=kd_fused") == {TEACHER_LAST_HIDDEN}
    assert needs("loss=ce") == frozenset()
    assert needs("loss=hidden") == {TEACHER_LOGITS, TEACHER_HIDDEN}
    assert needs("loss=hidden", "~loss.components.kl", "~loss.weights.kl") == {TEACHER_HIDDEN}


def test_hidden_matching_alone_skips_the_teacher_head(tiny_cfg, tmp_path):
    _, logs, grads, seen, calls = _step(tiny_cfg, tmp_path, "hidden", "~loss.components.kl", "~loss.weights.kl",
                                        "+loss.components.ce={_target_: distill.losses.components.CrossEntropy}")
    assert not calls and all(o.logits is None and o.hidden_states is not None for o in seen)
    assert logs["hidden"] > 0 and any("projections" in n for n in grads)


def test_soft_capped_teacher_head_falls_back_to_logits(tiny_cfg, tmp_path):
    # Gemma 2 soft-caps its logits: the head is not a matrix a fused loss can apply, so the teacher
    # returns logits and the fused components compute on those (same value, chunked).
    gemma = "{" + ", ".join(GEMMA2) + "}"
    loss_f, _, _, seen, calls = _step(tiny_cfg, tmp_path, "kd_fused", "~teacher.model.config", f"+teacher.model.config={gemma}")
    assert all(o.logits is not None for o in seen) and calls
    loss_kd, *_ = _step(tiny_cfg, tmp_path, "kd", "~teacher.model.config", f"+teacher.model.config={gemma}")
    torch.testing.assert_close(loss_f, loss_kd, rtol=1e-5, atol=1e-6)


def test_soft_capped_student_head_under_a_fused_loss_is_a_clear_error(tiny_cfg, tmp_path):
    gemma = "{" + ", ".join(GEMMA2) + "}"
    cfg = tiny_cfg("loss=kd_fused", "~student.config", f"+student.config={gemma}", output_dir=tmp_path / "capped")
    with pytest.raises(ValueError, match=r"not a plain linear map.*loss=kd_chunked"):
        build_components(cfg).load()
