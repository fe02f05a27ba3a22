"""Token weighting owned by the combiner: the weights' definitions, logging, and the guarantee that
one step of 8 equals 4 micro-batches of 2 (float64, 1e-6) for every strategy."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import chunked as CH
from distill.losses import fused as FU
from distill.losses.combine import DistillationLoss
from distill.losses.components import CrossEntropy, ForwardKL
from distill.losses.methods import ToDi
from distill.losses.weighting import DifficultyFocus, EntropySelection, TeacherConfidence
from distill.types import ModelInfo, StudentOutput, TeacherKind, TeacherOutput
from functools import partial
from distill.losses import components as C
from tests.losses.strategies import chunked, fused

N, L, V, H = 8, 6, 11, 5


def data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, L, H, generator=g).to(dtype)
    w = torch.randn(V, H, generator=g).to(dtype)
    t = (torch.randn(N, L, V, generator=g) * 2).to(dtype)
    y = torch.randint(0, V, (N, L), generator=g)
    y[:, -1] = -100
    y[2, :4] = -100
    y[5, 1] = -100
    return h, w, t, y


def step(loss, h, w, t, y, micro: int, step_no: int = 0, fused: bool = False):
    """What DistillationModule.step_loss does: N_step over the whole step, one call per micro-batch."""
    w = w.clone().requires_grad_()
    h = h.clone().requires_grad_()
    n_step = (y != -100).sum()
    total, logs = torch.zeros((), dtype=torch.float64), {}
    for a in range(0, h.shape[0], micro):
        hs = h[a:a + micro]
        student = StudentOutput(last_hidden=hs, lm_head_weight=w) if fused else StudentOutput(logits=hs @ w.T)
        part, parts = loss(student, TeacherOutput(logits=t[a:a + micro]), y[a:a + micro], step_no, n_step)
        part.backward()
        total = total + part.detach()
        for k, v in parts.items():
            logs[k] = logs.get(k, 0.0) + v if not k.startswith("w_") and k != "temperature" else v
    return total, h.grad, w.grad, logs


STRATEGIES = [lambda: TeacherConfidence("max_prob"), lambda: TeacherConfidence("entropy"),
              lambda: DifficultyFocus(gamma=2.0), lambda: EntropySelection(0.3, "student"),
              lambda: EntropySelection(0.5, "teacher"), lambda: EntropySelection(0.3, "student", scope="step")]
IDS = ["confidence-max", "confidence-entropy", "focal", "sekd-student", "sekd-teacher", "sekd-step"]


def make(strategy, comp=ForwardKL):
    return DistillationLoss({"kl": comp(), "ce": CrossEntropy()}, {"kl": 1.0, "ce": 0.5}, 2.0,
                            token_weighting=strategy()).double()


@pytest.mark.parametrize("strategy", STRATEGIES, ids=IDS)
@pytest.mark.parametrize("comp", [ForwardKL, partial(chunked, C.ForwardKL), ToDi], ids=["kl", "chunked", "todi"])
def test_one_step_of_8_equals_4_micro_batches_of_2(strategy, comp):
    h, w, t, y = data()
    tol = 1e-6 if h.dtype == torch.float64 else 1e-5
    results = []
    for micro in (8, 2):
        loss = make(strategy, comp)
        # two steps: selection freezes its threshold from step 0's tokens and applies it at step 1
        step(loss, h, w, t, y, micro, step_no=0)
        results.append(step(loss, h, w, t, y, micro, step_no=1))
    (l8, h8, w8, logs8), (l2, h2, w2, logs2) = results
    assert abs(l8.item() - l2.item()) < tol
    assert torch.allclose(h8, h2, atol=tol, rtol=0) and torch.allclose(w8, w2, atol=tol, rtol=0)
    for k in ("tw_mean", "tw_kept", "kl", "ce"):
        assert abs(float(logs8[k]) - float(logs2[k])) < tol, k


def test_fused_student_gets_the_same_weights():
    h, w, t, y = (x.float() if x.is_floating_point() else x for x in data())
    loss = DistillationLoss({"kl": fused(C.ForwardKL, chunk_size=5)}, {"kl": 1.0}, token_weighting=TeacherConfidence())
    ref = DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0}, token_weighting=TeacherConfidence())
    got = step(loss, h, w, t, y, 4, fused=True)
    want = step(ref, h, w, t, y, 4)
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_weights_follow_their_definitions():
    h, w, t, y = data(1)
    mask = y != -100
    p = torch.softmax(t, -1)
    loss = DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0}, token_weighting=TeacherConfidence("max_prob")).double()
    _, logs = loss(StudentOutput(logits=h @ w.T), TeacherOutput(logits=t), y, 0)
    assert float(logs["tw_mean"]) == pytest.approx(float(p.amax(-1)[mask].mean()), abs=1e-9)
    assert float(logs["tw_kept"]) == pytest.approx(1.0)
    ent = -(p * p.log()).sum(-1)
    loss = DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0}, token_weighting=TeacherConfidence("entropy")).double()
    _, logs = loss(StudentOutput(logits=h @ w.T), TeacherOutput(logits=t), y, 0)
    assert float(logs["tw_mean"]) == pytest.approx(float((1 - ent / math.log(V))[mask].mean()), abs=1e-9)
    # Hellinger difficulty, gamma = 1
    q = torch.softmax(h @ w.T, -1)
    hell = ((p.sqrt() - q.sqrt()).pow(2).sum(-1) / 2).sqrt()
    loss = DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0}, token_weighting=DifficultyFocus(1.0)).double()
    total, logs = loss(StudentOutput(logits=h @ w.T), TeacherOutput(logits=t), y, 0)
    assert float(logs["tw_mean"]) == pytest.approx(float(hell[mask].mean()), abs=1e-9)
    kl = (p * (p.log() - q.log())).sum(-1)
    assert float(total) == pytest.approx(float((hell * kl)[mask].sum() / mask.sum()), abs=1e-9)


def test_entropy_selection_keeps_the_top_fraction_of_each_sequence():
    h, w, t, y = data(3)
    mask = y != -100
    loss = DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0}, token_weighting=EntropySelection(0.4)).double()
    student = StudentOutput(logits=h @ w.T)
    q = torch.softmax(h @ w.T, -1)
    ent = -(q * q.log()).sum(-1)
    kept = 0
    for b in range(N):
        n = int(mask[b].sum())
        k = math.ceil(0.4 * n) if n else 0
        kept += k
    _, logs = loss(student, TeacherOutput(logits=t), y, 0)
    assert float(logs["tw_kept"]) == pytest.approx(kept / mask.sum().item())
    w_sel = loss.token_weighting(loss_inputs(student, t, y))
    for b in range(N):
        if mask[b].any():
            chosen = ent[b][w_sel[b] > 0]
            others = ent[b][(w_sel[b] == 0) & mask[b]]
            assert others.numel() == 0 or chosen.min() >= others.max()
    assert not (w_sel[~mask] > 0).any()


def loss_inputs(student, t, y):
    from distill.losses.components import LossInputs

    return LossInputs(student=student, teacher=TeacherOutput(logits=t), targets=y, mask=y != -100)


def test_entropy_selection_with_a_step_threshold_uses_the_previous_step():
    h, w, t, y = data(2)
    mask = y != -100
    sel = EntropySelection(ratio=0.25, scope="step")
    loss = DistillationLoss({"kl": ForwardKL(), "ce": CrossEntropy()}, {"kl": 1.0, "ce": 1.0},
                            token_weighting=sel).double()
    student = StudentOutput(logits=h @ w.T)
    _, logs0 = loss(student, TeacherOutput(logits=t), y, 0)
    assert float(logs0["tw_kept"]) == 1.0  # step 0: no threshold yet, every token
    _, logs1 = loss(student, TeacherOutput(logits=t), y, 1)
    q = torch.softmax(h @ w.T, -1)
    ent = -(q * q.log()).sum(-1)[mask]
    k = math.ceil(0.25 * ent.numel())
    assert float(logs1["tw_kept"]) == pytest.approx(k / ent.numel())
    assert float(sel.threshold) == pytest.approx(float(ent.sort(descending=True).values[k - 1]))
    assert "token_weighting.threshold" in loss.state_dict()
    # CE is not a distillation term: it is not weighted by default
    ce = -(q.log().gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1))[mask].mean()
    assert float(logs1["ce"]) == pytest.approx(float(ce), abs=1e-9)
    # evaluation (eval mode) never moves the threshold
    loss.eval()
    before = float(sel.threshold)
    loss(StudentOutput(logits=torch.zeros_like(h @ w.T)), TeacherOutput(logits=t), y, 5)
    assert float(sel.threshold) == before


def test_bad_configurations_fail_with_the_fix():
    info = ModelInfo(8, 2, 2, V)
    with pytest.raises(ValueError, match="loss.weighted names"):
        DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0}, token_weighting=TeacherConfidence(), weighted=["kd"])
    with pytest.raises(ValueError, match="no component is weighted"):
        DistillationLoss({"ce": CrossEntropy()}, {"ce": 1.0}, token_weighting=TeacherConfidence())
    with pytest.raises(TypeError, match="TokenWeighting"):
        DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0}, token_weighting=ForwardKL())
    with pytest.raises(ValueError, match="ratio must be in"):
        EntropySelection(ratio=0.0)
    with pytest.raises(ValueError, match="scope must be"):
        EntropySelection(scope="batch")
    with pytest.raises(ValueError, match="measure=max_prob"):
        DistillationLoss({"kl": chunked(C.ForwardKL)}, {"kl": 1.0},
                         token_weighting=TeacherConfidence("entropy")).configure(info, info, TeacherKind.SPARSE)
    with pytest.raises(ValueError, match="cannot use a 'sparse' teacher"):
        DistillationLoss({"kl": chunked(C.ForwardKL)}, {"kl": 1.0},
                         token_weighting=DifficultyFocus()).configure(info, info, TeacherKind.SPARSE)


def test_needs_follow_the_strategy():
    comps = {"kl": fused(C.ForwardKL)}
    # teacher-side strategies keep the fused teacher path (hidden states + head, no logits)
    loss = DistillationLoss(comps, {"kl": 1.0}, token_weighting=TeacherConfidence())
    assert "teacher_logits" not in loss.teacher_needs and "teacher_last_hidden" in loss.teacher_needs
    # a student-entropy strategy needs the student's logits
    loss = DistillationLoss(comps, {"kl": 1.0}, token_weighting=EntropySelection())
    assert "student_logits" in loss.needs


def test_sparse_teacher_confidence_uses_the_top_entry():
    y = torch.tensor([[1, 2, -100]])
    lp = torch.log_softmax(torch.randn(1, 3, 4), -1).sort(-1, descending=True).values
    teacher = TeacherOutput(topk_ids=torch.zeros(1, 3, 4, dtype=torch.long), topk_logprobs=lp)
    loss = DistillationLoss({"kl": chunked(C.ForwardKL)}, {"kl": 1.0}, token_weighting=TeacherConfidence())
    _, logs = loss(StudentOutput(logits=torch.randn(1, 3, 9)), teacher, y, 0)
    assert float(logs["tw_mean"]) == pytest.approx(float(lp[0, :2, 0].exp().mean()), abs=1e-6)
