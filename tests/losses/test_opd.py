"""On-policy distillation (loss=opd): the estimators and the policy gradient in float64 Monte Carlo
and exact enumeration on a small vocabulary; PPO ratios on first use and on reuse; the discounted
return; GRPO group normalisation; masking with NaN teacher values; the teacher's sampled log-prob
from every teacher form; and the tail bucket of a top-k teacher against the dense loss."""

import math

import pytest
import torch

from distill.losses import components as C
from distill.losses.combine import DistillationLoss
from distill.losses.inputs import LossInputs, MaskedTeacher
from distill.losses.opd import (OnPolicyDistillation, discounted_returns, group_normalize, k1, k3,
                                sampled_token_logprobs)
from distill.losses.schedules import Warmup
from distill.types import ModelInfo, Need, StudentOutput, TeacherOutput

V = 12
F64 = torch.float64


def dists(seed=0, v=V):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(v, generator=g, dtype=F64)
    t = torch.randn(v, generator=g, dtype=F64) * 1.5
    return s, t


def reverse_kl(s, t):
    lq, lp = s.log_softmax(-1), t.log_softmax(-1)
    return (lq.exp() * (lq - lp)).sum(-1)


def forward_kl(s, t):
    lq, lp = s.log_softmax(-1), t.log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def inputs_for(s, t, targets, batch=None, step=0):
    """LossInputs as the combiner builds them: student logits (B, L, V), a full teacher, masked view."""
    mask = targets != -100
    return LossInputs(student=StudentOutput(logits=s), teacher=MaskedTeacher(TeacherOutput(logits=t), mask),
                      targets=targets, mask=mask, step=step, batch=batch or {})


def samples(s, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(s.softmax(-1), n, replacement=True, generator=g)


# ----------------------------------------------------------------------------- estimators
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_sample_means_match_the_exact_reverse_kl(estimator):
    s, t = dists()
    n = 200_000
    y = samples(s, n)[None]
    terms = OnPolicyDistillation(estimator).terms(inputs_for(s.expand(1, n, V), t.expand(1, n, V), y))
    k = terms.kl[0]
    assert k.dtype == F64
    se = k.std() / math.sqrt(n)
    exact = reverse_kl(s, t)
    assert abs(k.mean() - exact) < 3 * se, (k.mean().item(), exact.item(), se.item())
    if estimator == "k3":
        assert (k >= 0).all()  # k3 is never negative...
    # ... and the functions themselves are the formulas
    lq, lp = s.log_softmax(-1), t.log_softmax(-1)
    torch.testing.assert_close(k1(lq, lp), lq - lp, rtol=0, atol=0)
    torch.testing.assert_close(k3(lq, lp), (lp - lq).exp() - 1 - (lp - lq), rtol=1e-15, atol=1e-15)


def per_token_grads(s, t, y, **kw):
    """d surrogate(y_i) / d s for each sampled token, through the component: (n, V)."""
    n = y.shape[-1]
    s = s.clone().requires_grad_()
    terms = OnPolicyDistillation(**kw).terms(inputs_for(s.expand(1, n, V), t.expand(1, n, V), y))
    rows = [torch.autograd.grad(terms.loss[0, i], s, retain_graph=True)[0] for i in range(n)]
    return torch.stack(rows)


def test_expected_policy_gradient_with_gamma_0_is_the_reverse_kl_gradient_exactly():
    """Enumerate every token, weighted by q: E_q[grad surrogate] = grad KL(q || p), float64-exact."""
    s, t = dists(2)
    grads = per_token_grads(s, t, torch.arange(V)[None])
    expected = (s.softmax(-1)[:, None] * grads).sum(0)
    s_ = s.clone().requires_grad_()
    exact, = torch.autograd.grad(reverse_kl(s_, t), s_)
    torch.testing.assert_close(expected, exact, rtol=1e-12, atol=1e-13)


def test_k3_as_an_advantage_follows_the_documented_biased_gradient():
    """The docstring's claim: E_q[k3 grad log q] = grad KL(q || p) - grad KL(p || q)."""
    s, t = dists(3)
    grads = per_token_grads(s, t, torch.arange(V)[None], estimator="k3")
    expected = (s.softmax(-1)[:, None] * grads).sum(0)
    s_ = s.clone().requires_grad_()
    rkl, = torch.autograd.grad(reverse_kl(s_, t), s_)
    fkl, = torch.autograd.grad(forward_kl(s_, t), s_)
    torch.testing.assert_close(expected, rkl - fkl, rtol=1e-12, atol=1e-13)
    assert (rkl - fkl - rkl).abs().max() > 1e-2  # a real bias, so the default estimator is k1


def test_monte_carlo_policy_gradient_through_the_combiner_matches_within_standard_errors():
    s, t = dists(4)
    n = 100_000
    y = samples(s, n, seed=5)[None]
    s_ = s.clone().requires_grad_()
    loss = DistillationLoss({"opd": OnPolicyDistillation()}, {"opd": 1.0})
    total, logs = loss(StudentOutput(logits=s_.expand(1, n, V)), TeacherOutput(logits=t.expand(1, n, V)), y, 0)
    total.backward()
    # per-sample gradients in closed form: k1(y) (onehot(y) - q) (grad log q(y) = onehot - q)
    q = s.softmax(-1)
    k = (s.log_softmax(-1) - t.log_softmax(-1))[y[0]]
    g = k[:, None] * (torch.nn.functional.one_hot(y[0], V).to(F64) - q)
    torch.testing.assert_close(g.mean(0), s_.grad, rtol=1e-10, atol=1e-12)  # the combiner's mean
    se = g.std(0) / math.sqrt(n)
    s2 = s.clone().requires_grad_()
    exact, = torch.autograd.grad(reverse_kl(s2, t), s2)
    assert ((s_.grad - exact).abs() < 3.5 * se).all(), ((s_.grad - exact) / se)
    torch.testing.assert_close(logs["opd_kl"], k.mean(), rtol=1e-12, atol=1e-14)  # logged: the RKL estimate


# ----------------------------------------------------------------------------- ratios and clipping
def batch_data(seed=0, b=3, length=7):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, length, V, generator=g, dtype=F64)
    t = torch.randn(b, length, V, generator=g, dtype=F64) * 1.5
    y = torch.randint(0, V, (b, length), generator=g)
    y[:, :2] = -100  # prompt
    y[-1, -2:] = -100  # padding
    return s, t, y


def loss_and_grad(comp, s, t, y, batch=None, step=0):
    s = s.clone().requires_grad_()
    loss = DistillationLoss({"opd": comp}, {"opd": 1.0})
    total, logs = loss(StudentOutput(logits=s), TeacherOutput(logits=t), y, step, batch=batch)
    total.backward()
    return total.detach(), s.grad, logs


def test_first_use_ratio_is_exactly_1_and_clipping_changes_nothing():
    s, t, y = batch_data()
    terms = OnPolicyDistillation().terms(inputs_for(s, t, y))
    assert (terms.ratio == 1.0).all() and not terms.clipped.any()
    # the unclipped surrogate, written out: -A log q with A = -(log q - log p) detached
    s_ = s.clone().requires_grad_()
    mask = y != -100
    lq = s_.log_softmax(-1).gather(-1, y.clamp_min(0)[..., None])[..., 0]
    lp = t.log_softmax(-1).gather(-1, y.clamp_min(0)[..., None])[..., 0]
    adv = -(lq.detach() - lp)
    ref = torch.where(mask, -adv * torch.exp(lq - lq.detach()), 0.0).sum() / mask.sum()
    ref.backward()
    for eps in (0.01, 0.2, 0.9):
        value, grad, _ = loss_and_grad(OnPolicyDistillation(clip_eps=eps), s, t, y)
        assert value == ref.detach()  # bit for bit, whatever the clip range
        torch.testing.assert_close(grad, s_.grad, rtol=0, atol=1e-16)
    # and an old_logprobs equal to the current log-probs is a first use too
    value, grad, _ = loss_and_grad(OnPolicyDistillation(clip_eps=0.01), s, t, y,
                                   batch={"old_logprobs": torch.where(mask, lq.detach(), math.nan)})
    assert value == ref.detach()
    torch.testing.assert_close(grad, s_.grad, rtol=0, atol=1e-16)


def test_reused_batch_ratios_and_the_clipped_objective():
    s, t, y = batch_data(1)
    mask = y != -100
    lq = s.log_softmax(-1).gather(-1, y.clamp_min(0)[..., None])[..., 0]
    # the generating policy, a few steps back: ratios e^0.5 and e^-0.5, outside the clip range
    # both ways, so advantages of either sign meet both branches
    old = lq + 0.5 * (1.0 - 2.0 * (torch.arange(lq.numel()) % 2).view(lq.shape).to(F64))
    old = torch.where(mask, old, math.nan)  # what a sequence source may leave on prompt and padding
    comp = OnPolicyDistillation(clip_eps=0.2)
    terms = comp.terms(inputs_for(s, t, y, {"old_logprobs": old}))
    torch.testing.assert_close(terms.ratio[mask], torch.exp(lq - old)[mask], rtol=1e-15, atol=0)
    assert (terms.ratio[~mask] == 1.0).all()
    # PPO's objective, written out
    r, a = torch.exp(lq - old), terms.advantage
    ppo = -torch.minimum(r * a, r.clamp(0.8, 1.2) * a)
    torch.testing.assert_close(terms.loss[mask], ppo[mask], rtol=1e-15, atol=1e-15)
    assert terms.clipped.any() and (~terms.clipped & mask).any(), "the test must exercise both branches"
    # a clipped token gives no gradient, an unclipped one ratio * A * grad log q
    s_ = s.clone().requires_grad_()
    terms = comp.terms(inputs_for(s_, t, y, {"old_logprobs": old}))
    b, i = terms.clipped.nonzero()[0].tolist()
    assert torch.autograd.grad(terms.loss[b, i], s_, retain_graph=True)[0].abs().max() == 0
    b, i = (~terms.clipped & mask).nonzero()[0].tolist()
    got = torch.autograd.grad(terms.loss[b, i], s_)[0][b, i]
    q = s[b, i].softmax(-1)
    want = -terms.ratio[b, i].detach() * terms.advantage[b, i] * (torch.nn.functional.one_hot(y[b, i], V) - q)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------- discount
def test_discounted_return_on_a_4_token_completion():
    """Prompt (2 positions), 4 sampled tokens, padding: A_t = -(c_t + g c_t+1 + g^2 c_t+2 + ...)."""
    s, t, _ = batch_data(2, b=1, length=7)
    y = torch.tensor([[-100, -100, 3, 7, 1, 5, -100]])
    gamma = 0.9
    terms = OnPolicyDistillation(gamma=gamma).terms(inputs_for(s, t, y))
    c = [(s[0, i].log_softmax(-1)[y[0, i]] - t[0, i].log_softmax(-1)[y[0, i]]).item() for i in range(2, 6)]
    want = [-(c[0] + gamma * c[1] + gamma ** 2 * c[2] + gamma ** 3 * c[3]),
            -(c[1] + gamma * c[2] + gamma ** 2 * c[3]),
            -(c[2] + gamma * c[3]),
            -c[3]]
    torch.testing.assert_close(terms.advantage[0, 2:6], torch.tensor(want, dtype=F64), rtol=1e-14, atol=1e-14)
    assert (terms.advantage[0, [0, 1, 6]] == 0).all()
    assert torch.equal(discounted_returns(terms.kl, 0.0), terms.kl)  # gamma 0: the per-token cost itself


# ----------------------------------------------------------------------------- rewards
def test_group_normalisation_golden_values_on_2_groups_of_3():
    reward = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 9.0], dtype=F64)
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: mean 1/3, std sqrt(1/3) (Bessel); group 1: mean 5, std sqrt(13)
    golden = torch.tensor([1.1545005730142688, -0.5772502865071344, -0.5772502865071344,
                           -0.8320272180547876, -0.27734240601826254, 1.1093696240730502], dtype=F64)
    torch.testing.assert_close(group_normalize(reward, group, eps=1e-4), golden, rtol=1e-14, atol=1e-15)
    # ids need not be consecutive or sorted
    mixed = torch.tensor([7, 3, 7, 3, 7, 3])
    order = torch.tensor([0, 3, 1, 4, 2, 5])
    torch.testing.assert_close(group_normalize(reward[order], mixed, eps=1e-4), golden[order], rtol=1e-14, atol=1e-15)
    assert (group_normalize(torch.ones(3, dtype=F64), torch.zeros(3)) == 0).all()  # all equal: 0, not 0/0
    with pytest.raises(ValueError, match="whole in the micro-batch"):
        group_normalize(reward, group, size=2)


def test_reward_is_added_to_every_token_with_its_scheduled_weight():
    s, t, y = batch_data(3, b=6, length=5)
    reward = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 9.0], dtype=F64)
    settings = {"weight": Warmup(2.0, steps=10), "group_normalize": True, "samples_per_prompt": 3}
    comp, plain = OnPolicyDistillation(reward=settings), OnPolicyDistillation()
    mask = y != -100
    for step, w in ((0, 0.0), (5, 1.0), (20, 2.0)):
        with_r = comp.terms(inputs_for(s, t, y, {"reward": reward}, step=step))
        without = plain.terms(inputs_for(s, t, y))
        rn = group_normalize(reward, torch.arange(6) // 3)
        want = torch.where(mask, without.advantage + w * rn[:, None], 0.0)
        torch.testing.assert_close(with_r.advantage, want, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="no 'reward'"):
        comp.terms(inputs_for(s, t, y, step=5))


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize("form", ["logits", "sampled", "topk"])
def test_masked_positions_give_zero_value_and_zero_gradient_with_nan_teacher_values(form):
    s, t, y = batch_data(4)
    mask = y != -100
    lp = t.log_softmax(-1)
    nan = lambda x: torch.where(mask.view(*mask.shape, *[1] * (x.dim() - 2)), x, math.nan)  # noqa: E731

    def teacher(poison):
        f = nan if poison else (lambda x: x)
        if form == "logits":
            return TeacherOutput(logits=f(t))
        if form == "sampled":
            return TeacherOutput(sampled_logprobs=f(lp.gather(-1, y.clamp_min(0)[..., None])[..., 0]))
        top = lp.topk(V, -1)  # K = V: the top-k holds every id
        return TeacherOutput(topk_ids=top.indices, topk_logprobs=f(top.values))

    g = torch.Generator().manual_seed(1)
    old = s.log_softmax(-1).gather(-1, y.clamp_min(0)[..., None])[..., 0] + 0.2 * torch.randn(y.shape, generator=g, dtype=F64)
    results = []
    for poison in (False, True):
        s_ = s.clone().requires_grad_()
        loss = DistillationLoss({"opd": OnPolicyDistillation(gamma=0.5)}, {"opd": 1.0})
        batch = {"old_logprobs": nan(old) if poison else old}
        total, _ = loss(StudentOutput(logits=s_), teacher(poison), y, 0, batch=batch)
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(s_.grad).all()
        assert (s_.grad[~mask] == 0).all()
        results.append((total.detach(), s_.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


# ----------------------------------------------------------------------------- the teacher side
def test_the_sampled_token_log_prob_from_every_teacher_form():
    s, t, y = batch_data(5)
    mask = y != -100
    d = 6
    g = torch.Generator().manual_seed(2)
    h, w = torch.randn(*t.shape[:2], d, generator=g, dtype=F64), torch.randn(V, d, generator=g, dtype=F64)
    logits = h @ w.T
    want = torch.where(mask, logits.log_softmax(-1).gather(-1, y.clamp_min(0)[..., None])[..., 0], 0.0)
    top = logits.log_softmax(-1).topk(V, -1)
    forms = [TeacherOutput(logits=logits), TeacherOutput(last_hidden=h, lm_head_weight=w),
             TeacherOutput(topk_ids=top.indices, topk_logprobs=top.values), TeacherOutput(sampled_logprobs=want)]
    for teacher in forms:
        for chunk in (None, 4):
            torch.testing.assert_close(sampled_token_logprobs(teacher, y, chunk_rows=chunk), want,
                                       rtol=1e-13, atol=1e-13)
    # a target outside a top-k support gets the log of the whole tail mass (an upper bound)
    top3 = logits.log_softmax(-1).topk(3, -1)
    got = sampled_token_logprobs(TeacherOutput(topk_ids=top3.indices, topk_logprobs=top3.values), y)
    inside = (top3.indices == y.clamp_min(0)[..., None]).any(-1) & mask
    torch.testing.assert_close(got[inside], want[inside], rtol=1e-13, atol=1e-13)
    tail = torch.log1p(-top3.values.exp().sum(-1))
    torch.testing.assert_close(got[~inside & mask], tail[~inside & mask], rtol=1e-12, atol=1e-12)
    assert (got[~inside & mask] >= want[~inside & mask]).all()
    with pytest.raises(ValueError, match="no sampled_logprobs"):
        sampled_token_logprobs(TeacherOutput(), y)


def test_opd_asks_the_teacher_for_the_sampled_log_prob_only():
    loss = DistillationLoss({"opd": OnPolicyDistillation()}, {"opd": 1.0})
    assert loss.teacher_needs == {Need.TEACHER_SAMPLED_LOGPROB}
    loss.configure(ModelInfo(8, 1, 1, V), ModelInfo(8, 1, 1, V), "none")  # a sampled-only teacher is kind "none"
    with pytest.raises(ValueError, match="teacher=none"):
        loss.configure(ModelInfo(8, 1, 1, V), None, "none")
    with_logits = DistillationLoss({"opd": OnPolicyDistillation(teacher_logits=True)}, {"opd": 1.0})
    assert Need.TEACHER_LOGITS in with_logits.teacher_needs


# ----------------------------------------------------------------------------- top-k teacher: tail bucket
@pytest.mark.parametrize("execution", ["plain", "chunked", "fused"])
@pytest.mark.parametrize("divergence", ["fkl", "jsd"])
@pytest.mark.parametrize("temperature,stored_tail", [(1.0, False), (1.0, True), (2.0, True)])
def test_tail_bucket_loss_equals_the_dense_loss_when_the_top_k_holds_all_the_mass(
        execution, divergence, temperature, stored_tail):
    """TRL's ``loss_add_tail``: a full-distribution loss on a top-k teacher adds one tail bucket
    (distill.losses.targets.SparseTeacher). With every teacher id outside the top-k at probability
    0 the buckets lose nothing, so the value and gradient equal the dense loss's."""
    b, length, d, k = 2, 5, 6, 4
    g = torch.Generator().manual_seed(7)
    h = torch.randn(b, length, d, generator=g, dtype=F64)
    w = torch.randn(V, d, generator=g, dtype=F64)
    t = torch.randn(b, length, V, generator=g, dtype=F64) * 2
    ids = t.topk(k, -1).indices
    dense_t = torch.full_like(t, -math.inf).scatter(-1, ids, t.gather(-1, ids))  # mass only on the top-k
    sparse_t = TeacherOutput(topk_ids=ids, topk_logprobs=dense_t.log_softmax(-1).gather(-1, ids),
                             tail=torch.zeros(b, length, dtype=F64) if stored_tail else None)
    y = torch.randint(0, V, (b, length), generator=g)
    y[0, 0] = y[1, -1] = -100
    out = []
    for teacher in (TeacherOutput(logits=dense_t), sparse_t):
        comp = C.ForwardKL() if divergence == "fkl" else C.GeneralizedJSD(0.5)
        loss = DistillationLoss({"k": comp}, {"k": 1.0}, temperature, execution=execution,
                                chunk_size=None if execution == "plain" else 3)
        h_, w_ = h.clone().requires_grad_(), w.clone().requires_grad_()
        student = (StudentOutput(last_hidden=h_, lm_head_weight=w_) if execution == "fused"
                   else StudentOutput(logits=h_ @ w_.T))
        total, _ = loss(student, teacher, y, 0)
        total.backward()
        out.append((total.detach(), h_.grad, w_.grad))
    assert out[0][0] > 0.05
    for dense, sparse in zip(*out):
        torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- the student's head at the answer only
@pytest.mark.parametrize("chunk_rows", [None, 2])
def test_selected_token_log_probs_equal_the_full_log_softmax_in_value_and_gradient(chunk_rows):
    from distill.losses.opd import selected_token_logprobs

    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 5, 4, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(V, 4, generator=g, dtype=F64, requires_grad=True)
    y = torch.tensor([[-100, -100, 3, 7, -100], [-100, 1, 1, 11, 0]])
    got = selected_token_logprobs(h, w, y, chunk_rows)
    full = (h @ w.T).log_softmax(-1).gather(-1, y.clamp_min(0)[..., None]).squeeze(-1)
    ref = torch.where(y != -100, full, 0.0)
    assert got.dtype == F64 and torch.allclose(got, ref, atol=1e-12, rtol=0)
    gh, gw = torch.autograd.grad((got * torch.arange(10, dtype=F64).reshape(2, 5)).sum(), (h, w))
    rh, rw = torch.autograd.grad((ref * torch.arange(10, dtype=F64).reshape(2, 5)).sum(), (h, w))
    assert torch.allclose(gh, rh, atol=1e-12) and torch.allclose(gw, rw, atol=1e-12)
    assert torch.count_nonzero(gh[0, :2]) == 0  # prompt rows: no head formed, no gradient


def test_opd_on_the_students_hidden_states_and_head_equals_opd_on_its_logits():
    """loss=opd alone asks for the student's last hidden states and head (no (B, L, V) logits);
    the value, the logs and the gradients equal the logits path's."""
    g = torch.Generator().manual_seed(4)
    h0 = torch.randn(2, 6, 5, generator=g, dtype=F64)
    w0 = torch.randn(V, 5, generator=g, dtype=F64)
    t = torch.randn(2, 6, V, generator=g, dtype=F64)
    y = torch.tensor([[-100, -100, 2, 5, 9, -100], [-100, -100, -100, 4, 4, 1]])
    old = torch.randn(2, 6, generator=g, dtype=F64) * 0.1 - 2.0
    loss = DistillationLoss({"opd": OnPolicyDistillation()}, {"opd": 1.0})
    assert loss.needs == {Need.STUDENT_LAST_HIDDEN, Need.TEACHER_SAMPLED_LOGPROB}
    out = {}
    for form in ("head", "logits"):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        student = (StudentOutput(last_hidden=h, lm_head_weight=w) if form == "head"
                   else StudentOutput(logits=h @ w.T))
        value, logs = loss(student, TeacherOutput(logits=t), y, 0, batch={"old_logprobs": old})
        value.backward()
        out[form] = (value.detach(), {k: float(v) for k, v in logs.items()}, h.grad, w.grad)
    (va, la, gha, gwa), (vb, lb, ghb, gwb) = out["head"], out["logits"]
    assert torch.allclose(va, vb, atol=1e-12) and la.keys() == lb.keys()
    assert all(abs(la[k] - lb[k]) < 1e-12 for k in la)
    assert torch.allclose(gha, ghb, atol=1e-12) and torch.allclose(gwa, gwb, atol=1e-12)
