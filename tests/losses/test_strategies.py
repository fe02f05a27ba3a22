"""Execution strategies wrap any divergence: one defined here runs plain, chunked, fused and sparse;
masked teacher rows never reach a gradient; float64 stays float64."""

from functools import partial

import pytest
import torch

from distill.losses import components as C
from distill.losses import methods as M
from distill.losses.base import Divergence
from distill.losses.combine import DistillationLoss
from distill.losses.weighting import DifficultyFocus, EntropySelection, TeacherConfidence
from distill.teachers.cache.encoding import topk_from_logits
from distill.types import ModelInfo, StudentOutput, TeacherOutput

B, L, D, V = 2, 6, 8, 23


class Hellinger(Divergence):
    """Squared Hellinger distance ``1 - sum_v sqrt(p_v q_v)``: defined here only, nowhere in distill."""

    def per_token(self, student_lp, teacher_lp):
        return 1.0 - ((student_lp + teacher_lp) * 0.5).exp().sum(-1)


def data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, L, D, generator=g, dtype=dtype)
    w = torch.randn(V, D, generator=g, dtype=dtype) * 0.7
    t = torch.randn(B, L, V, generator=g, dtype=dtype) * 2
    y = torch.randint(0, V, (B, L), generator=g)
    y[:, -1] = -100
    y[1, :2] = -100
    return h, w, t, y


def run(loss, h, w, teacher, y, fused=False):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    student = StudentOutput(last_hidden=h, lm_head_weight=w) if fused else StudentOutput(logits=h @ w.T)
    total, _ = loss(student, teacher, y, 0)
    total.backward()
    return total.detach(), h.grad, w.grad


def close(a, b, tol=1e-12):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("teacher_kind", ["full", "sparse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_a_divergence_defined_in_a_test_runs_every_way_equal_to_plain(teacher_kind, temperature):
    h, w, t, y = data()
    if teacher_kind == "full":
        teacher = TeacherOutput(logits=t)
    else:
        ids, lp = topk_from_logits(t.float(), 5)
        teacher = TeacherOutput(topk_ids=ids, topk_logprobs=lp)
    info = ModelInfo(D, 2, 2, V)
    ref = None
    for execution, fused in (("plain", False), ("chunked", False), ("fused", True), ("fused", False)):
        loss = DistillationLoss({"h": Hellinger()}, {"h": 1.0}, temperature, execution=execution,
                                chunk_size=None if execution == "plain" else 3)
        loss.configure(info, info, teacher.kind)
        got = run(loss, h, w, teacher, y, fused)
        assert got[0].dtype == torch.float64 and got[1].dtype == torch.float64  # float64 in, float64 out
        if ref is None:
            ref = got
            assert got[0] > 0
        for a, b in zip(got, ref):
            close(a, b)


def test_the_test_divergence_against_the_float64_formula():
    h, w, t, y = data(1)
    p, q = torch.softmax(t, -1), torch.softmax(h @ w.T, -1)
    expected = torch.where(y != -100, 1 - (p * q).sqrt().sum(-1), 0.0).sum() / (y != -100).sum()
    loss = DistillationLoss({"h": Hellinger(scale_by_t2=False)}, {"h": 1.0}, execution="chunked")
    close(run(loss, h, w, TeacherOutput(logits=t), y)[0], expected)


ALL = [C.ForwardKL, C.ReverseKL, partial(C.GeneralizedJSD, beta=0.3), M.SkewForwardKL, M.SkewReverseKL,
       M.TotalVariation, M.AdaptiveKL, M.ToDi, M.UniversalLogitDistillation, C.CrossEntropy, Hellinger]
IDS = ["fkl", "rkl", "jsd", "skl", "srkl", "tvd", "akl", "todi", "uld", "ce", "hellinger"]


@pytest.mark.parametrize("execution", ["plain", "chunked", "fused"])
@pytest.mark.parametrize("make", ALL, ids=IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_masked_teacher_rows_give_exactly_zero_gradient(make, execution, bad):
    """The issue's repro: t[0, 1] = nan, targets [[1, -100]] gave a NaN gradient on student row 1."""
    g = torch.Generator().manual_seed(2)
    s = torch.randn(1, 2, V, generator=g, requires_grad=True)
    t = torch.randn(1, 2, V, generator=g)
    t[0, 1] = bad
    y = torch.tensor([[1, -100]])
    loss = DistillationLoss({"c": make()}, {"c": 1.0}, execution=execution)
    total, _ = loss(StudentOutput(logits=s), TeacherOutput(logits=t), y, 0)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()
    assert (s.grad[0, 1] == 0).all() and s.grad[0, 0].abs().sum() > 0


@pytest.mark.parametrize("execution", ["plain", "chunked"])
@pytest.mark.parametrize("weighting", [TeacherConfidence, DifficultyFocus, EntropySelection],
                         ids=["confidence", "focal", "sekd"])
def test_masked_nan_with_token_weighting(weighting, execution):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(1, 3, V, generator=g, requires_grad=True)
    t = torch.randn(1, 3, V, generator=g)
    t[0, 1] = float("nan")
    y = torch.tensor([[1, -100, 4]])
    loss = DistillationLoss({"kl": C.ForwardKL()}, {"kl": 1.0}, token_weighting=weighting(), execution=execution)
    total, _ = loss(StudentOutput(logits=s), TeacherOutput(logits=t), y, 0)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all() and (s.grad[0, 1] == 0).all()


def test_masked_nan_in_a_sparse_teacher():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(1, 2, V, generator=g, requires_grad=True)
    ids, lp = topk_from_logits(torch.randn(1, 2, V, generator=g), 4)
    lp[0, 1] = float("nan")
    for comp in (C.ForwardKL(), C.ReverseKL(), Hellinger()):
        s.grad = None
        loss = DistillationLoss({"c": comp}, {"c": 1.0})
        total, _ = loss(StudentOutput(logits=s), TeacherOutput(topk_ids=ids, topk_logprobs=lp), torch.tensor([[1, -100]]), 0)
        total.backward()
        assert torch.isfinite(s.grad).all() and (s.grad[0, 1] == 0).all()


def test_masked_nan_in_teacher_hidden_states_and_attentions():
    from distill.losses.components import AttentionMatch, HiddenStateMatch

    g = torch.Generator().manual_seed(5)
    info = ModelInfo(D, 2, 2, V)
    hs = tuple(torch.randn(1, 2, D, generator=g, requires_grad=True) for _ in range(3))
    ht = tuple(torch.randn(1, 2, D, generator=g) for _ in range(3))
    ht[2][0, 1] = float("nan")
    att = tuple(torch.softmax(torch.randn(1, 2, 2, 2, generator=g), -1).requires_grad_() for _ in range(2))
    att_t = tuple(torch.softmax(torch.randn(1, 2, 2, 2, generator=g), -1) for _ in range(2))
    att_t[1][0, :, 1] = float("nan")
    hidden, attn = HiddenStateMatch(project=False), AttentionMatch()
    loss = DistillationLoss({"h": hidden, "a": attn}, {"h": 1.0, "a": 1.0})
    loss.configure(info, info, "full")
    total, _ = loss(StudentOutput(hidden_states=hs, attentions=att),
                    TeacherOutput(hidden_states=ht, attentions=att_t), torch.tensor([[1, -100]]), 0)
    total.backward()
    assert torch.isfinite(total)
    for x in (*hs, *att):
        assert x.grad is None or torch.isfinite(x.grad).all()
    assert (hs[2].grad[0, 1] == 0).all()


def test_weight_zero_terms_share_the_student_log_softmax_and_skip_when_not_logged(monkeypatch):
    from distill.losses import inputs as I

    calls = []
    real = I.log_probs
    monkeypatch.setattr(I, "log_probs", lambda *a, **k: calls.append(1) or real(*a, **k))
    h, w, t, y = data(6, torch.float32)
    kd = DistillationLoss({"kl": C.ForwardKL(), "ce": C.CrossEntropy()}, {"kl": 1.0, "ce": 0.0})
    _, logs = kd(StudentOutput(logits=h @ w.T), TeacherOutput(logits=t), y, 0)
    assert len(calls) == 1 and logs["ce"] > 0  # one student log-softmax for KL and the logged CE
    _, logs = kd(StudentOutput(logits=h @ w.T), TeacherOutput(logits=t), y, 0, measure_unweighted=False)
    assert "ce" not in logs  # not a logging step: the weight-0 CE is not computed at all


def test_a_weight_zero_component_first_does_not_cut_the_gradient():
    h, w, t, y = data(7, torch.float32)
    a = DistillationLoss({"ce": C.CrossEntropy(), "kl": C.ForwardKL()}, {"ce": 0.0, "kl": 1.0})
    b = DistillationLoss({"kl": C.ForwardKL()}, {"kl": 1.0})
    ga, gb = run(a, h, w, TeacherOutput(logits=t), y)[1], run(b, h, w, TeacherOutput(logits=t), y)[1]
    assert torch.equal(ga, gb)


def test_unknown_execution_and_settings_it_ignores_are_refused():
    with pytest.raises(ValueError, match="loss.execution"):
        DistillationLoss({"kl": C.ForwardKL()}, {"kl": 1.0}, execution="chunky")
    with pytest.raises(ValueError, match="chunk_size"):
        DistillationLoss({"kl": C.ForwardKL()}, {"kl": 1.0}, chunk_size=8)
    with pytest.raises(ValueError, match="backend"):
        DistillationLoss({"kl": C.ForwardKL()}, {"kl": 1.0}, execution="chunked", backend="liger")


def test_a_bare_zero_dim_return_is_refused_with_the_typed_fix():
    class Old(C.LossComponent):
        def forward(self, inputs):
            return inputs.student.logits.sum() * 0

    h, w, t, y = data(8, torch.float32)
    with pytest.raises(TypeError, match="Reduced"):
        DistillationLoss({"old": Old()}, {"old": 1.0})(StudentOutput(logits=h @ w.T), TeacherOutput(logits=t), y, 0)
