"""The newer divergences against float64 references written from each paper's formula, plus the
properties every divergence must have (0 at identical inputs, finite gradients at one-hot and
-inf logits) and the chunked / fused variants against the plain components."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import divergences as D
from distill.losses import methods as M
from distill.losses.combine import DistillationLoss
from distill.types import StudentOutput, TeacherKind, TeacherOutput
from functools import partial
from tests.losses.strategies import chunked, fused

B, L, V = 2, 7, 13


def logits(seed: int, shape=(B, L, V), dtype=torch.float64, scale=2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


# ----------------------------------------------------------------------------- references (float64, from the papers)
def _p(z, T=1.0):
    return torch.softmax(z.double() / T, -1)


def _kl(a, b):
    return torch.xlogy(a, a).sum(-1) - (a * torch.log(b)).sum(-1)


def ref_skl(s, t, alpha, T=1.0):  # DistiLLM eq. 3
    p, q = _p(t, T), _p(s, T)
    return _kl(p, alpha * p + (1 - alpha) * q)


def ref_srkl(s, t, alpha, T=1.0):  # DistiLLM eq. 4
    p, q = _p(t, T), _p(s, T)
    return _kl(q, (1 - alpha) * p + alpha * q)


def ref_tvd(s, t, T=1.0):
    return 0.5 * (_p(t, T) - _p(s, T)).abs().sum(-1)


def ref_akl(s, t, mu=0.5, T=1.0):  # Wu et al. 2024, row by row with Python loops
    p, q = _p(t, T), _p(s, T)
    out = torch.zeros(p.shape[:-1], dtype=torch.float64)
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            order = sorted(range(p.shape[-1]), key=lambda v: -p[i, j, v].item())
            cum, head, tail = 0.0, 0.0, 0.0
            for rank, v in enumerate(order):
                cum += p[i, j, v].item()
                gap = abs(p[i, j, v].item() - q[i, j, v].item())
                if rank == 0 or cum <= mu:
                    head += gap
                else:
                    tail += gap
            fkl = _kl(p[i, j], q[i, j]).item()
            rkl = _kl(q[i, j], p[i, j]).item()
            out[i, j] = head / (head + tail) * fkl + tail / (head + tail) * rkl
    return out


def ref_todi(s, t, T=1.0):  # Jung et al. 2025
    p, q = _p(t, T), _p(s, T)
    a = torch.sigmoid(torch.log(p) - torch.log(q))
    return (a * p * torch.log(p / q) + (1 - a) * q * torch.log(q / p)).sum(-1)


def ref_uld(s, t, T=1.0):  # Boizard et al. 2024: sort, zero-pad, L1
    p = _p(t, T).sort(-1, descending=True).values
    q = _p(s, T).sort(-1, descending=True).values
    n = max(p.shape[-1], q.shape[-1])
    p = torch.nn.functional.pad(p, (0, n - p.shape[-1]))
    q = torch.nn.functional.pad(q, (0, n - q.shape[-1]))
    return (p - q).abs().sum(-1)


CASES = [
    ("skl", lambda s, t, T: D.skew_forward_kl(s, t, 0.1, T), lambda s, t, T: ref_skl(s, t, 0.1, T)),
    ("skl_a03", lambda s, t, T: D.skew_forward_kl(s, t, 0.3, T), lambda s, t, T: ref_skl(s, t, 0.3, T)),
    ("srkl", lambda s, t, T: D.skew_reverse_kl(s, t, 0.1, T), lambda s, t, T: ref_srkl(s, t, 0.1, T)),
    ("tvd", D.total_variation, ref_tvd),
    ("akl", lambda s, t, T: D.adaptive_kl(s, t, 0.5, T), lambda s, t, T: ref_akl(s, t, 0.5, T)),
    ("todi", D.todi, ref_todi),
    ("uld", D.uld, ref_uld),
]


@pytest.mark.parametrize("name,fn,ref", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_matches_float64_reference(name, fn, ref, T):
    s, t = logits(1), logits(2)
    torch.testing.assert_close(fn(s, t, T), ref(s, t, T), atol=1e-6, rtol=0)


def test_uld_across_vocabularies_and_equals_wasserstein_on_a_line():
    s, t = logits(3, (B, L, 9)), logits(4, (B, L, 17))
    torch.testing.assert_close(D.uld(s, t), ref_uld(s, t), atol=1e-6, rtol=0)
    torch.testing.assert_close(D.uld(t, s), ref_uld(t, s), atol=1e-6, rtol=0)


def test_todi_value_is_the_symmetric_kl():
    s, t = logits(5), logits(6)
    p, q = _p(t), _p(s)
    torch.testing.assert_close(D.todi(s, t), _kl(p, q) + _kl(q, p), atol=1e-9, rtol=0)


def test_skew_kl_endpoints():
    s, t = logits(7), logits(8)
    p, q = _p(t), _p(s)
    torch.testing.assert_close(D.skew_forward_kl(s, t, 0.0), _kl(p, q), atol=1e-9, rtol=0)
    torch.testing.assert_close(D.skew_reverse_kl(s, t, 0.0), _kl(q, p), atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\)"):
        M.SkewForwardKL(alpha=1.0)


@pytest.mark.parametrize("name,fn,ref", CASES, ids=[c[0] for c in CASES])
def test_zero_for_identical_inputs(name, fn, ref):
    z = logits(9, dtype=torch.float32)
    assert fn(z, z.clone(), 1.0).abs().max().item() < 1e-6


@pytest.mark.parametrize("name,fn,ref", CASES, ids=[c[0] for c in CASES])
def test_finite_gradients_at_one_hot_teachers_and_neg_inf_logits(name, fn, ref):
    s = logits(10, dtype=torch.float32)
    s[0, 0, 3:] = float("-inf")  # a student row with masked-out entries
    t = torch.full((B, L, V), float("-inf"))
    t[..., 0] = 0.0  # one-hot teacher
    t[1, 2] = logits(11, (V,), torch.float32)  # and one ordinary row
    s = s.requires_grad_()
    value = fn(s, t, 1.0)
    assert torch.isfinite(value).all(), name
    value.sum().backward()
    assert torch.isfinite(s.grad).all(), name


# ----------------------------------------------------------------------------- components: plain == chunked == fused
PLAIN = [(M.SkewForwardKL, partial(chunked, M.SkewForwardKL), partial(fused, M.SkewForwardKL), {"alpha": 0.2}),
         (M.SkewReverseKL, partial(chunked, M.SkewReverseKL), partial(fused, M.SkewReverseKL), {}),
         (M.TotalVariation, partial(chunked, M.TotalVariation), partial(fused, M.TotalVariation), {}),
         (M.AdaptiveKL, partial(chunked, M.AdaptiveKL), partial(fused, M.AdaptiveKL), {"mu": 0.4}),
         (M.ToDi, partial(chunked, M.ToDi), partial(fused, M.ToDi), {})]


def _student(seed, dtype=torch.float32, hidden=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, hidden, generator=g).to(dtype), torch.randn(V, hidden, generator=g).to(dtype)


def _targets():
    y = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(0))
    y[0, :2] = -100
    y[:, -1] = -100
    return y


def close(a, b, rtol=1e-5):
    """float32 agreement (the chunked / fused paths compute in float32, as the plain ones do on float32)."""
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


def _run(component, h, w, teacher, fused: bool, T=1.5):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = DistillationLoss({"d": component}, {"d": 1.0}, temperature=T)
    student = StudentOutput(last_hidden=h, lm_head_weight=w) if fused else StudentOutput(logits=h @ w.T)
    total, logs = loss(student, teacher, _targets(), 0, num_tokens=20)
    total.backward()
    return total.detach(), h.grad, w.grad


@pytest.mark.parametrize("plain,chunked,fused,kw", PLAIN, ids=[p[0].__name__ for p in PLAIN])
def test_chunked_and_fused_equal_plain(plain, chunked, fused, kw):
    h, w = _student(12)
    t = logits(13)
    t = t.float()
    ref = _run(plain(**kw), h, w, TeacherOutput(logits=t), fused=False)
    for comp, is_fused in ((chunked(chunk_size=3, **kw), False), (fused(chunk_size=4, **kw), True)):
        got = _run(comp, h, w, TeacherOutput(logits=t), fused=is_fused)
        for a, b in zip(got, ref):
            close(a, b)
    # a teacher given as its final hidden states + head (no logits held), fused student
    th, tw = _student(14)
    teacher = TeacherOutput()
    teacher.last_hidden, teacher.lm_head_weight = th, tw
    ref = _run(plain(**kw), h, w, TeacherOutput(logits=th @ tw.T), fused=False)
    got = _run(fused(**kw), h, w, teacher, fused=True)
    for a, b in zip(got, ref):
        close(a, b)


def test_uld_chunked_equals_plain_across_vocabularies():
    h, w = _student(15)
    t = logits(16, (B, L, 2 * V + 1), torch.float32)
    ref = _run(M.UniversalLogitDistillation(), h, w, TeacherOutput(logits=t), fused=False)
    got = _run(chunked(M.UniversalLogitDistillation, chunk_size=5), h, w, TeacherOutput(logits=t), fused=False)
    for a, b in zip(got, ref):
        close(a, b)
    assert not M.UniversalLogitDistillation.shared_vocabulary
    assert not chunked(M.UniversalLogitDistillation).shared_vocabulary
    assert chunked(M.ToDi).shared_vocabulary and M.SkewForwardKL.shared_vocabulary
    # fused too: the student head is not cut to the teacher's vocabulary when none is shared
    got = _run(fused(M.UniversalLogitDistillation, chunk_size=5), h, w, TeacherOutput(logits=t), fused=True)
    for a, b in zip(got, ref):
        close(a, b)


def test_uld_skips_positions_without_an_aligned_teacher_token():
    h, w = _student(17)
    t = logits(18, (B, L, 2 * V), torch.float32)
    teacher = TeacherOutput(logits=t)
    teacher.positions = torch.ones(B, L, dtype=torch.bool)
    teacher.positions[1] = False
    for comp in (M.UniversalLogitDistillation(), chunked(M.UniversalLogitDistillation)):
        loss = DistillationLoss({"uld": comp}, {"uld": 1.0})
        total, _ = loss(StudentOutput(logits=h @ w.T), teacher, _targets(), 0, num_tokens=10)
        expected = torch.where(_targets()[0] != -100, D.uld(h[0] @ w.T, t[0]), 0.0).sum() / 10
        torch.testing.assert_close(total, expected.float(), atol=1e-6, rtol=0)


# Skew KL and TV are f-divergences: defined on a top-k teacher's buckets, so accepted (test_strategies.py).
@pytest.mark.parametrize("cls", [M.AdaptiveKL, M.ToDi, M.UniversalLogitDistillation, partial(chunked, M.ToDi),
                                 partial(fused, M.ToDi)])
def test_sparse_teacher_is_refused_with_the_fix(cls):
    from distill.types import ModelInfo

    info = ModelInfo(8, 2, 2, V)
    loss = DistillationLoss({"d": cls()}, {"d": 1.0})
    with pytest.raises(ValueError, match="cannot use a teacher of kind 'sparse'") as e:
        loss.configure(info, info, TeacherKind.SPARSE)
    assert ("online teacher" in str(e.value)) or ("kd_chunked" in str(e.value))
    with pytest.raises(ValueError, match="teacher=none"):
        DistillationLoss({"d": cls()}, {"d": 1.0}).configure(info, None, TeacherKind.FULL)


def test_uld_refusal_names_an_online_teacher():
    from distill.types import ModelInfo

    info = ModelInfo(8, 2, 2, V)
    with pytest.raises(ValueError, match="teacher=cross_tokenizer"):
        DistillationLoss({"uld": M.UniversalLogitDistillation()}, {"uld": 1.0}).configure(info, info, "sparse")


def test_scale_by_t2_defaults():
    assert M.SkewForwardKL().scale_by_t2 and M.AdaptiveKL().scale_by_t2 and M.ToDi().scale_by_t2
    assert not M.TotalVariation().scale_by_t2 and not M.UniversalLogitDistillation().scale_by_t2
    assert math.isclose(M.SkewReverseKL(alpha=0.25).alpha, 0.25)
