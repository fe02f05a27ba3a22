"""Sparse teachers: top-k with a tail bucket, importance-sampled caches, and their components."""

import math

import pytest
import torch

from distill.losses import chunked as CH
from distill.losses import functional as LF
from distill.losses import sparse as SP
from distill.losses.combine import DistillationLoss
from distill.losses.components import ForwardKL, ModelInfo
from distill.losses.methods import ToDi
from distill.teachers.cache.encoding import sample_from_logits, topk_from_logits  # the cache writers
from distill.types import StudentOutput, TeacherOutput
from distill.losses import components as C
from tests.losses.strategies import chunked, fused

V = 40


def logits(seed, *shape, scale=2.0):
    return scale * torch.randn(*shape, V, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- cache writers
def test_topk_from_logits_returns_the_most_likely_ids_and_their_log_probs():
    t = logits(0, 3, 5)
    ids, lp = topk_from_logits(t, 7, chunk_size=4)
    full = torch.log_softmax(t, -1)
    assert ids.shape == lp.shape == (3, 5, 7) and ids.dtype == torch.long
    torch.testing.assert_close(lp, full.gather(-1, ids))
    assert (lp[..., :-1] >= lp[..., 1:]).all()
    assert (lp[..., -1:] >= full.masked_fill(torch.zeros_like(full, dtype=torch.bool).scatter(-1, ids, True),
                                             -math.inf)).all()  # nothing outside beats the k-th


def test_sample_from_logits_aggregates_draws_into_unique_ids_with_weights():
    t = logits(1, 6, scale=3.0)
    ids, lw = sample_from_logits(t, 16, torch.Generator().manual_seed(0))
    w = lw.exp()
    torch.testing.assert_close(w.sum(-1), torch.ones(6))  # counts / K
    for row_ids, row_w in zip(ids, w):
        used = row_ids[row_w > 0]
        assert used.unique().numel() == used.numel()  # one slot per distinct id
        assert ((row_w * 16).round() == row_w * 16).all()  # multiples of 1/K
    # a flatter proposal gives importance weights p / r (sum to 1 only in expectation)
    ids2, lw2 = sample_from_logits(t, 16, torch.Generator().manual_seed(0), proposal_temperature=2.0)
    assert torch.isfinite(lw2[lw2 > -math.inf]).all() and not torch.allclose(lw2.exp().sum(-1), torch.ones(6))


# ----------------------------------------------------------------------------- top-k with tail
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_support_equals_full_divergences(temperature):
    s, t = logits(2, 4, 3), logits(3, 4, 3)
    ids, lp = topk_from_logits(t, V)  # K = V: no tail bucket at all
    for sparse_fn, full_fn in ((SP.sparse_forward_kl, LF.forward_kl), (SP.sparse_reverse_kl, LF.reverse_kl),
                               (lambda *a: SP.sparse_generalized_jsd(a[0], a[1], a[2], 0.3, a[3]),
                                lambda a, b, T: LF.generalized_jsd(a, b, 0.3, T))):
        a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
        v_sparse = sparse_fn(a, ids, lp, temperature)
        v_full = full_fn(b, t, temperature)
        torch.testing.assert_close(v_sparse, v_full, rtol=1e-5, atol=1e-6)
        v_sparse.sum().backward()
        v_full.sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_tail_bucket_is_one_extra_outcome():
    s, t = logits(4, 5), logits(5, 5)
    k = 6
    ids, lp = topk_from_logits(t, k)
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    in_sup = torch.zeros_like(p, dtype=torch.bool).scatter(-1, ids, True)
    # explicit (K + 1)-bucket distributions
    P = torch.cat([p.gather(-1, ids), (p * ~in_sup).sum(-1, keepdim=True)], -1)
    Q = torch.cat([q.gather(-1, ids), (q * ~in_sup).sum(-1, keepdim=True)], -1)
    expected = (P * (P.log() - Q.log())).sum(-1)
    got = SP.sparse_forward_kl(s, ids, lp)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (P[:, -1] > 0.05).all(), "the test must exercise a real tail"
    # coarse-graining never increases KL (data-processing inequality); renormalising without the
    # tail bucket would not be a lower bound in general
    assert (got <= LF.forward_kl(s, t) + 1e-6).all()
    # temperature: p^(1/T) renormalised over the K + 1 buckets (tail as one pseudo-token)
    PT = P ** 0.5 / (P ** 0.5).sum(-1, keepdim=True)
    QT = torch.softmax(s / 2.0, -1)
    QT = torch.cat([QT.gather(-1, ids), (QT * ~in_sup).sum(-1, keepdim=True)], -1)
    torch.testing.assert_close(SP.sparse_forward_kl(s, ids, lp, 2.0), (PT * (PT / QT).log()).sum(-1),
                               rtol=1e-5, atol=1e-6)


def test_stored_tail_mass_beats_the_one_derived_from_rounded_log_probs():
    """A cache stores log-probs in float16 and the tail exactly; the loss should use that tail."""
    s, t = logits(30, 64, scale=1.0), logits(31, 64, scale=3.0)
    ids, lp = topk_from_logits(t, 16)
    exact = SP.sparse_forward_kl(s, ids, lp)  # float32 values: derived tail accurate enough
    tail = (-torch.expm1(torch.logsumexp(t.double().gather(-1, ids), -1) - torch.logsumexp(t.double(), -1))).float()
    lp16 = lp.half()
    derived = SP.sparse_forward_kl(s, ids, lp16)
    stored = SP.sparse_forward_kl(s, ids, lp16, tail=tail)
    assert (stored - exact).abs().max() < 0.5 * (derived - exact).abs().max()
    # components and the chunked path read the optional ``tail`` attribute of the teacher output
    teacher = TeacherOutput(topk_ids=ids.unsqueeze(0), topk_logprobs=lp16.unsqueeze(0))
    teacher.tail = tail.unsqueeze(0)
    y = torch.zeros(1, 64, dtype=torch.long)
    v0, g0 = _run(DistillationLoss({"kd": C.ForwardKL()}, {"kd": 1.0}), s.unsqueeze(0), teacher, y)
    v1, g1 = _run(DistillationLoss({"kd": chunked(C.ForwardKL, chunk_size=7)}, {"kd": 1.0}), s.unsqueeze(0), teacher, y)
    torch.testing.assert_close(v0, stored.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=0)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_closed_form_kernel_matches_autograd_including_extreme_tails(temperature):
    s, t = logits(6, 8), logits(7, 8)
    s[0, :] = -30.0
    s[0, t[0].topk(4).indices] = 30.0  # student tail underflows while the teacher's is large
    t[1, :] = -80.0
    t[1, 3] = 80.0  # teacher tail mass is exactly 0 in float32
    s[2, :5] = float("-inf")  # masked-out student ids
    ids, lp = topk_from_logits(t, 4)
    a = s.clone().requires_grad_()
    ref = SP.sparse_forward_kl(a, ids, lp, temperature)
    ref.sum().backward()
    value, grad = SP.sparse_forward_kl_kernel(s.clone(), (ids, lp, None), True, temperature)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(value, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, a.grad, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- sampled (unbiased)
def _per_sample_grads(s, t, k, draws, seed, proposal_temperature=1.0):
    """Gradient of the sampled sparse KL w.r.t. the student logits, one row per independent cache."""
    ids, lw = sample_from_logits(t.expand(draws, V), k, torch.Generator().manual_seed(seed),
                                    proposal_temperature=proposal_temperature)
    srep = s.expand(draws, V).clone().requires_grad_()
    SP.sparse_forward_kl(srep, ids, lw, sampled=True).sum().backward()
    return srep.grad


@pytest.mark.parametrize("proposal_temperature", [1.0, 2.0])
def test_sampled_estimator_is_unbiased_for_the_full_kl_gradient(proposal_temperature):
    s, t = logits(8, scale=1.5), logits(9, scale=2.5)
    a = s.clone().requires_grad_()
    LF.forward_kl(a, t).backward()
    true = a.grad  # q - p
    k, draws = 8, 4000
    grads = _per_sample_grads(s, t, k, draws, seed=123, proposal_temperature=proposal_temperature)
    # Standard error per id: the empirical one, floored by the exact one of the weight estimate
    # (w_v = c_v / K * p_v / r_v with c_v ~ Binomial(K, r_v)), since ids too rare to be drawn in
    # any cache have an empirical spread of 0.
    p = torch.softmax(t, -1)
    r = torch.softmax(t / proposal_temperature, -1)
    se_w = (p * p * (1 - r) / (r * k * draws)).sqrt()
    mean, se = grads.mean(0), torch.maximum(grads.std(0) / math.sqrt(draws), se_w)
    z = (mean - true).abs() / se
    assert z.max() < 4.5, f"sampled gradient is off by {z.max():.1f} standard errors"
    # The tolerance is not vacuous: it is small against the gradient itself ...
    assert (4.5 * se).max() < 0.15 * true.abs().max()
    # ... and a biased estimator (top-k renormalised on its support, no tail) fails it clearly.
    ids, lp = topk_from_logits(t, k)
    b = s.clone().requires_grad_()
    lq = torch.log_softmax(b, -1).gather(-1, ids)
    (-(torch.softmax(lp, -1) * lq).sum()).backward()
    assert ((b.grad - true).abs() / se).max() > 10


def test_sampled_cache_requires_temperature_one_and_forward_kl():
    s, t = logits(10, 3), logits(11, 3)
    ids, lw = sample_from_logits(t, 8, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="temperature"):
        SP.sparse_forward_kl(s, ids, lw, temperature=2.0, sampled=True)
    with pytest.raises(ValueError, match="sampled"):
        SP.sparse_reverse_kl(s, ids, lw, sampled=True)
    loss = DistillationLoss({"jsd": C.GeneralizedJSD(beta=0.5)}, {"jsd": 1.0}, execution="chunked")
    y = torch.zeros(s.shape[:-1], dtype=torch.long)[None]
    with pytest.raises(ValueError, match="sampled"):
        loss(StudentOutput(logits=s[None]), TeacherOutput(topk_ids=ids[None], topk_logprobs=lw[None], sampled=True), y, 0)


# ----------------------------------------------------------------------------- components
def sparse_batch(seed=12, k=6, sampled=False, B=2, L=7):
    s, t = logits(seed, B, L), logits(seed + 1, B, L)
    if sampled:
        ids, lp = sample_from_logits(t, k, torch.Generator().manual_seed(seed))
    else:
        ids, lp = topk_from_logits(t, k)
    y = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))
    y[:, -1] = -100
    y[0, :2] = -100
    return s, TeacherOutput(topk_ids=ids, topk_logprobs=lp, sampled=sampled), y


def _run(loss, s, teacher, y):
    s = s.clone().requires_grad_()
    total, _ = loss(StudentOutput(logits=s), teacher, y, 0)
    total.backward()
    return total.detach(), s.grad


@pytest.mark.parametrize("plain,chunked,sampled,temperature", [
    (C.ForwardKL(), chunked(C.ForwardKL, chunk_size=4), False, 2.0),
    (C.ForwardKL(), chunked(C.ForwardKL, chunk_size=3), True, 1.0),
    (C.ReverseKL(), chunked(C.ReverseKL, chunk_size=5), False, 1.5),
    (C.GeneralizedJSD(beta=0.3), chunked(C.GeneralizedJSD, beta=0.3, chunk_size=4), False, 1.0),
], ids=["fkl-topk", "fkl-sampled", "rkl-topk", "jsd-topk"])
def test_chunked_components_on_sparse_teacher_match_plain(plain, chunked, sampled, temperature):
    s, teacher, y = sparse_batch(sampled=sampled)
    v0, g0 = _run(DistillationLoss({"kd": plain}, {"kd": 1.0}, temperature), s, teacher, y)
    v1, g1 = _run(DistillationLoss({"kd": chunked}, {"kd": 1.0}, temperature), s, teacher, y)
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-5 * g0.abs().max().item())


def test_components_accept_sparse_teachers_and_full_ones_unchanged():
    info = ModelInfo(hidden_size=8, num_layers=2, num_heads=2, vocab_size=V)
    loss = DistillationLoss({"kd": C.ForwardKL()}, {"kd": 1.0})
    loss.configure(info, info, "sparse")  # sparse execution is picked by the teacher's output
    with pytest.raises(ValueError, match="sparse"):  # a divergence that needs every entry refuses it
        DistillationLoss({"todi": ToDi()}, {"todi": 1.0}).configure(info, info, "sparse")
    s, t = logits(20, 2, 5), logits(21, 2, 5)
    y = torch.zeros(2, 5, dtype=torch.long)
    full = TeacherOutput(logits=t)
    v0, g0 = _run(DistillationLoss({"kd": ForwardKL()}, {"kd": 1.0}, 2.0), s, full, y)
    v1, g1 = _run(DistillationLoss({"kd": C.ForwardKL()}, {"kd": 1.0}, 2.0), s, full, y)
    assert torch.equal(v0, v1) and torch.equal(g0, g1)
