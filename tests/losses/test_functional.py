"""The pure divergences: properties, float64 references, and golden values."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import functional as LF


def _pair(shape=(3, 5, 11), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * 2, torch.randn(*shape, generator=g, dtype=dtype) * 2


def _ref_kl(p_logits, q_logits, t=1.0):
    """KL(p || q) per token with F.kl_div in float64 (input = log q, target = log p)."""
    p = F.log_softmax(p_logits.double() / t, -1)
    q = F.log_softmax(q_logits.double() / t, -1)
    return F.kl_div(q, p, reduction="none", log_target=True).sum(-1)


@pytest.mark.parametrize("fn", [LF.forward_kl, LF.reverse_kl,
                                lambda s, t, temperature=1.0: LF.generalized_jsd(s, t, 0.5, temperature),
                                lambda s, t, temperature=1.0: LF.generalized_jsd(s, t, 0.1, temperature)])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_identical_inputs_give_zero(fn, temperature):
    s, _ = _pair()
    assert torch.allclose(fn(s, s.clone(), temperature=temperature), torch.zeros(s.shape[:-1], dtype=s.dtype), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_forward_and_reverse_kl_match_float64_kl_div(temperature):
    s, t = _pair()
    assert torch.allclose(LF.forward_kl(s, t, temperature).double(), _ref_kl(t, s, temperature), atol=1e-6)
    assert torch.allclose(LF.reverse_kl(s, t, temperature).double(), _ref_kl(s, t, temperature), atol=1e-6)


def test_jsd_endpoints_match_forward_and_reverse_kl():
    s, t = _pair()
    assert torch.allclose(LF.generalized_jsd(s, t, 0.0).double(), _ref_kl(t, s), atol=1e-6)
    assert torch.allclose(LF.generalized_jsd(s, t, 1.0).double(), _ref_kl(s, t), atol=1e-6)


def test_jsd_interior_matches_float64_definition_and_is_symmetric_at_half():
    s, t = _pair()
    beta = 0.3
    p, q = F.softmax(t.double(), -1), F.softmax(s.double(), -1)
    m = (beta * p + (1 - beta) * q).log()
    ref = beta * F.kl_div(m, p.log(), reduction="none", log_target=True).sum(-1) + \
        (1 - beta) * F.kl_div(m, q.log(), reduction="none", log_target=True).sum(-1)
    assert torch.allclose(LF.generalized_jsd(s, t, beta).double(), ref, atol=1e-6)
    assert torch.allclose(LF.generalized_jsd(s, t, 0.5), LF.generalized_jsd(t, s, 0.5), atol=1e-6)
    # the GKD limit: JSD(beta) / beta -> KL(p || q) as beta -> 0
    assert torch.allclose(LF.generalized_jsd(s, t, 1e-6) / 1e-6, _ref_kl(t, s), rtol=1e-3, atol=1e-4)


def test_golden_two_token_values():
    # teacher p = [3/4, 1/4], student q = [1/2, 1/2]
    t = torch.tensor([[math.log(3.0), 0.0]])
    s = torch.zeros(1, 2)
    fkl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    rkl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    m = [0.625, 0.375]
    jsd = 0.5 * (0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1])) + \
        0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1]))
    assert LF.forward_kl(s, t).item() == pytest.approx(fkl, abs=1e-6)       # 0.130812
    assert LF.reverse_kl(s, t).item() == pytest.approx(rkl, abs=1e-6)       # 0.143841
    assert LF.generalized_jsd(s, t, 0.5).item() == pytest.approx(jsd, abs=1e-6)  # 0.033822
    assert fkl == pytest.approx(0.130812, abs=1e-6) and jsd == pytest.approx(0.033822, abs=1e-6)


def test_cross_entropy_matches_reference_and_ignores_minus_100():
    s, _ = _pair(dtype=torch.float32)
    labels = torch.randint(0, 11, s.shape[:-1])
    labels[0, 1] = -100
    out = LF.cross_entropy(s, labels)
    ref = F.cross_entropy(s.reshape(-1, 11), labels.reshape(-1), reduction="none").reshape(labels.shape)
    assert out[0, 1] == 0
    assert torch.allclose(out, ref)


def test_bf16_inputs_are_upcast():
    s, t = _pair(dtype=torch.float32)
    out = LF.forward_kl(s.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, LF.forward_kl(s.bfloat16().float(), t.bfloat16().float()), atol=1e-6)


def test_masked_out_logits_give_finite_values_and_gradients():
    s, t = _pair(dtype=torch.float32)
    t[..., 0] = float("-inf")  # a token the teacher never emits
    s.requires_grad_(True)
    for fn in (LF.forward_kl, LF.reverse_kl, lambda a, b: LF.generalized_jsd(a, b, 0.5)):
        v = fn(s, t)
        assert torch.isfinite(v).all()
        (g,) = torch.autograd.grad(v.sum(), s)
        assert torch.isfinite(g).all()


def test_jsd_rejects_out_of_range_beta():
    s, t = _pair()
    with pytest.raises(ValueError, match="beta"):
        LF.generalized_jsd(s, t, 1.5)
