"""Components and the combiner: T^2 scaling, masking, empty masks, gradients, layer maps."""

import pytest
import torch

from distill.losses import functional as LF
from distill.losses.combine import DistillationLoss
from distill.losses.components import (AttentionMatch, CrossEntropy, ForwardKL, GeneralizedJSD, HiddenStateMatch,
                                       LossInputs, ModelInfo, ReverseKL, resolve_layer_map)
from distill.losses.schedules import Linear, Warmup
from distill.types import StudentOutput, TeacherOutput

B, L, V = 2, 6, 13
S_INFO = ModelInfo(hidden_size=8, num_layers=2, num_heads=2, vocab_size=V)
T_INFO = ModelInfo(hidden_size=12, num_layers=4, num_heads=4, vocab_size=V)


def outputs(seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    s_logits = torch.randn(B, L, V, generator=g, requires_grad=requires_grad)
    t_logits = torch.randn(B, L, V, generator=g)
    s_hidden = tuple(torch.randn(B, L, 8, generator=g, requires_grad=requires_grad) for _ in range(3))
    t_hidden = tuple(torch.randn(B, L, 12, generator=g) for _ in range(5))
    causal = torch.tril(torch.ones(L, L))

    def attn(h, n):
        return tuple(torch.softmax(torch.randn(B, h, L, L, generator=g).masked_fill(causal == 0, -1e9), -1)
                     for _ in range(n))

    student = StudentOutput(logits=s_logits, hidden_states=s_hidden, attentions=attn(2, 2))
    teacher = TeacherOutput(logits=t_logits, hidden_states=t_hidden, attentions=attn(4, 4))
    targets = torch.randint(0, V, (B, L), generator=g)
    targets[:, -1] = -100
    targets[1, :3] = -100
    return student, teacher, targets


def inputs(student, teacher, targets, temperature=1.0):
    return LossInputs(student=student, teacher=teacher, targets=targets, mask=targets != -100,
                      temperature=temperature)


def test_kl_components_scale_by_t_squared():
    s, t, y = outputs()
    for comp, fn in ((ForwardKL(), LF.forward_kl), (ReverseKL(), LF.reverse_kl)):
        v = comp(inputs(s, t, y, temperature=3.0)).values
        assert torch.allclose(v, 9.0 * fn(s.logits, t.logits, 3.0))
        raw = type(comp)(scale_by_t2=False)(inputs(s, t, y, temperature=3.0)).values
        assert torch.allclose(raw, fn(s.logits, t.logits, 3.0))


def test_combiner_masks_and_normalises_by_tokens():
    s, t, y = outputs()
    loss = DistillationLoss({"kl": ForwardKL(), "ce": CrossEntropy()}, {"kl": 0.7, "ce": 0.3})
    total, logs = loss(s, t, y, step=0)
    mask = y != -100
    kl = LF.forward_kl(s.logits, t.logits)[mask].mean()
    ce = LF.cross_entropy(s.logits, y)[mask].mean()
    assert torch.allclose(total, 0.7 * kl + 0.3 * ce)
    assert torch.allclose(logs["kl"], kl) and logs["w_kl"] == 0.7 and logs["temperature"] == 1.0


def test_fully_masked_batch_gives_zero_without_nan():
    s, t, y = outputs()
    y = torch.full_like(y, -100)
    loss = DistillationLoss({"kl": ForwardKL(), "ce": CrossEntropy(), "jsd": GeneralizedJSD(0.5)},
                            {"kl": 1.0, "ce": 1.0, "jsd": 1.0})
    total, logs = loss(s, t, y, step=0)
    assert total.item() == 0.0 and all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())
    total.backward()
    assert torch.equal(s.logits.grad, torch.zeros_like(s.logits))


def test_masked_positions_do_not_matter():
    s, t, y = outputs()
    loss = DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0})
    a, _ = loss(s, t, y, step=0)
    t2 = TeacherOutput(logits=t.logits.clone())
    t2.logits[y == -100] = 1e4 * torch.randn_like(t2.logits[y == -100])  # garbage where masked
    b, _ = loss(s, t2, y, step=0)
    assert torch.allclose(a, b)


def test_gradients_reach_student_and_projection_never_teacher():
    s, t, y = outputs()
    t = TeacherOutput(logits=t.logits.clone().requires_grad_(True), hidden_states=tuple(
        h.clone().requires_grad_(True) for h in t.hidden_states))
    hidden = HiddenStateMatch(loss="mse")
    loss = DistillationLoss({"kl": ForwardKL(), "hidden": hidden}, {"kl": 1.0, "hidden": 1.0})
    loss.configure(S_INFO, T_INFO, "full")
    total, _ = loss(s, t, y, step=0)
    total.backward()
    assert s.logits.grad.abs().sum() > 0
    assert s.hidden_states[1].grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hidden.projections.parameters())
    assert all(h.grad is None for h in t.hidden_states)  # hidden targets are detached
    # the KL's gradient w.r.t. teacher logits exists mathematically; the teacher is frozen and
    # run under no_grad by HFTeacher, so in training those tensors never require grad at all.


def test_schedules_drive_weights_and_temperature():
    s, t, y = outputs()
    loss = DistillationLoss({"kl": ForwardKL(), "ce": CrossEntropy()},
                            {"kl": Warmup(1.0, steps=10), "ce": 0.5}, temperature=Linear(4.0, 1.0, steps=30))
    _, logs0 = loss(s, t, y, step=0)
    _, logs15 = loss(s, t, y, step=15)
    assert logs0["w_kl"] == 0.0 and logs0["temperature"] == 4.0
    assert logs15["w_kl"] == 1.0 and logs15["temperature"] == 2.5
    # a component switched off by its schedule is measured but adds nothing
    total0, _ = loss(s, t, y, step=0)
    assert torch.allclose(total0, 0.5 * logs0["ce"])


def test_weight_zero_terms_can_be_skipped_without_changing_the_loss():
    student, teacher, targets = outputs()
    loss = DistillationLoss({"kl": ForwardKL(), "ce": CrossEntropy()}, {"kl": 1.0, "ce": Linear(0.0, 1.0, 10)})
    measured, logs = loss(student, teacher, targets, step=0)
    skipped, quiet = loss(student, teacher, targets, step=0, measure_unweighted=False)
    assert torch.equal(measured, skipped)
    assert "ce" in logs and logs["ce"] > 0
    assert "ce" not in quiet and quiet["w_ce"] == 0.0 and quiet["kl"] == logs["kl"]
    _, later = loss(student, teacher, targets, step=5, measure_unweighted=False)
    assert "ce" in later  # once its schedule gives it weight, the term is always computed


def test_hidden_state_match_layer_maps_and_cosine():
    assert resolve_layer_map("uniform", 2, 4, "x") == [(1, 2), (2, 4)]
    assert resolve_layer_map("last", 2, 4, "x") == [(2, 4)]
    assert resolve_layer_map([[0, 0], [2, 3]], 2, 4, "x") == [(0, 0), (2, 3)]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layer_map([[3, 1]], 2, 4, "x")
    s, t, y = outputs()
    same = TeacherOutput(hidden_states=s.hidden_states)
    comp = HiddenStateMatch(loss="cosine", project=False)
    comp.configure(S_INFO, ModelInfo(8, 2, 2, V))
    assert torch.allclose(comp(inputs(s, same, y)), torch.zeros(B, L), atol=1e-6)


def test_attention_match_identical_maps_zero_and_head_grouping():
    s, t, y = outputs()
    comp = AttentionMatch(loss="kl", layer_map="uniform")
    comp.configure(S_INFO, T_INFO)
    assert comp.pairs == [(0, 1), (1, 3)]
    v = comp(inputs(s, t, y))
    assert v.shape == (B, L) and torch.isfinite(v).all() and (v >= -1e-6).all()
    # teacher with the student's own maps, heads duplicated 2x: grouping recovers them exactly
    dup = tuple(a.repeat_interleave(2, dim=1) for a in s.attentions)
    comp2 = AttentionMatch(loss="kl", layer_map=[[0, 0], [1, 1]])
    comp2.configure(S_INFO, ModelInfo(12, 2, 4, V))
    assert torch.allclose(comp2(inputs(s, TeacherOutput(attentions=dup), y)), torch.zeros(B, L), atol=1e-5)


def test_combiner_rejects_bad_configs_by_name():
    with pytest.raises(ValueError, match=r"loss.weights has \['kll'\]"):
        DistillationLoss({"kl": ForwardKL()}, {"kll": 1.0})
    with pytest.raises(ValueError, match="missing"):
        DistillationLoss({"kl": ForwardKL(), "ce": CrossEntropy()}, {"kl": 1.0})
    with pytest.raises(TypeError, match="not a distill.losses.components.LossComponent"):
        DistillationLoss({"kl": torch.nn.Linear(2, 2)}, {"kl": 1.0})
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0}, temperature=0.0)


def test_teacher_kind_mismatch_is_clear():
    loss = DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0})
    with pytest.raises(ValueError, match="cannot use a teacher of kind 'none'"):
        loss.configure(S_INFO, None, "none")
