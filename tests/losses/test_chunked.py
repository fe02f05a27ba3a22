"""Chunked losses equal the plain components in value and gradient, with bounded chunks."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distill.config import compose_config
from distill.losses import chunked as CH
from distill.losses import functional as LF
from distill.losses.combine import DistillationLoss
from distill.losses.components import CrossEntropy, ForwardKL, GeneralizedJSD, LossInputs, ReverseKL
from distill.losses.inputs import Reduced
from distill.losses.targets import FullTeacher
from distill.types import StudentOutput, TeacherOutput
from functools import partial
from distill.losses import components as C
from tests.losses.strategies import chunked, fused

B, L, V = 3, 7, 29
CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"


def batch(seed=0, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(B, L, V, generator=g)).to(dtype)
    t = (scale * torch.randn(B, L, V, generator=g)).to(dtype)
    y = torch.randint(0, V, (B, L), generator=g)
    y[:, -1] = -100
    y[1, :4] = -100
    return s, t, y


def run(loss, s, t, y, step=0, teacher_requires_grad=True):
    """Total and gradient w.r.t. the student logits.

    The teacher tensor requires grad on purpose: ours must never send it one. (The lead's plain
    components do not detach it; their teacher logits come from a no_grad forward in training.)
    """
    s = s.clone().requires_grad_()
    t = t.clone().requires_grad_(teacher_requires_grad)
    total, logs = loss(StudentOutput(logits=s), TeacherOutput(logits=t), y, step)
    total.backward()
    assert t.grad is None, "a gradient reached the teacher"
    return total.detach(), s.grad, logs


PAIRS = [
    (ForwardKL, partial(chunked, C.ForwardKL), {}),
    (ReverseKL, partial(chunked, C.ReverseKL), {}),
    (GeneralizedJSD, partial(chunked, C.GeneralizedJSD), {"beta": 0.3}),
    (GeneralizedJSD, partial(chunked, C.GeneralizedJSD), {"beta": 0.0}),
    (GeneralizedJSD, partial(chunked, C.GeneralizedJSD), {"beta": 1.0}),
]


@pytest.mark.parametrize("plain_cls,chunked_cls,kw", PAIRS, ids=lambda x: getattr(x, "__name__", str(x)))
@pytest.mark.parametrize("chunk_size", [1, 4, 5, None])  # 4 and 5 do not divide the 16 unmasked tokens
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_chunked_divergences_match_plain(plain_cls, chunked_cls, kw, chunk_size, temperature):
    s, t, y = batch()
    plain = DistillationLoss({"kd": plain_cls(**kw), "ce": CrossEntropy()}, {"kd": 0.8, "ce": 0.2}, temperature)
    chunk = DistillationLoss({"kd": chunked_cls(chunk_size=chunk_size, **kw),
                              "ce": chunked(C.CrossEntropy, chunk_size=chunk_size)}, {"kd": 0.8, "ce": 0.2},
                             temperature)
    v0, g0, logs0 = run(plain, s, t, y, teacher_requires_grad=False)
    v1, g1, logs1 = run(chunk, s, t, y)
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logs1["kd"], logs0["kd"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-5 * g0.abs().max().item())
    assert (g1[y == -100] == 0).all()


def test_functional_api_matches_reference_with_num_tokens_of_the_step():
    s, t, y = batch(1)
    mask = y != -100
    w = mask.float() / 40.0  # N_step larger than this micro-batch (gradient accumulation)
    for fn, ref in ((CH.chunked_forward_kl, LF.forward_kl), (CH.chunked_reverse_kl, LF.reverse_kl)):
        a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
        r = (torch.where(mask, ref(a, t, 2.0), 0.0) * w).sum()
        c = fn(b, t, w, temperature=2.0, chunk_size=3)
        (r * 3).backward()
        (c * 3).backward()  # grad_output != 1 is applied
        torch.testing.assert_close(c, r.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-8)
    a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
    r = (LF.cross_entropy(a, y) * w).sum()
    c = CH.chunked_cross_entropy(b, y, w, chunk_size=6)
    r.backward()
    c.backward()
    torch.testing.assert_close(c, r.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-8)


def test_bf16_inputs_accumulate_in_fp32():
    s, t, y = batch(2, dtype=torch.bfloat16)
    plain = DistillationLoss({"kd": ForwardKL()}, {"kd": 1.0}, 2.0)
    chunk = DistillationLoss({"kd": chunked(C.ForwardKL, chunk_size=3)}, {"kd": 1.0}, 2.0)
    v0, g0, _ = run(plain, s, t, y, teacher_requires_grad=False)
    v1, g1, _ = run(chunk, s, t, y)
    assert v1.dtype == torch.float32 and g1.dtype == torch.bfloat16
    # Both compute in fp32 from the same bf16 values: the values agree to fp32 precision ...
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=0)
    # ... and the gradients to bf16 rounding of the same fp32 numbers.
    torch.testing.assert_close(g1.float(), g0.float(), rtol=1e-2, atol=1e-3 * g0.float().abs().max().item())


def test_empty_mask_gives_zero_value_and_zero_gradient_without_nan():
    s, t, y = batch(3)
    y[:] = -100
    t[0, 0] = float("nan")  # garbage at a masked position must not leak
    loss = DistillationLoss({"kd": chunked(C.ForwardKL, chunk_size=2), "rkl": chunked(C.ReverseKL),
                             "jsd": chunked(C.GeneralizedJSD), "ce": chunked(C.CrossEntropy)},
                            {"kd": 1.0, "rkl": 1.0, "jsd": 1.0, "ce": 1.0})
    v, g, logs = run(loss, s, t, y)
    assert v.item() == 0.0 and not torch.isnan(v)
    assert (g == 0).all()
    assert all(logs[k].item() == 0.0 for k in ("kd", "rkl", "jsd", "ce"))


def test_nan_in_masked_teacher_rows_does_not_leak():
    s, t, y = batch(4)
    t_bad = t.clone()
    t_bad[y == -100] = float("nan")
    loss = DistillationLoss({"kd": chunked(C.GeneralizedJSD, chunk_size=4)}, {"kd": 1.0})
    v0, g0, _ = run(loss, s, t, y)
    v1, g1, _ = run(loss, s, t_bad, y)
    assert torch.equal(v0, v1) and torch.equal(g0, g1)


def test_no_grad_and_frozen_student_return_the_value_only():
    s, t, y = batch(5)
    comp = chunked(C.ForwardKL, chunk_size=4)
    mask = y != -100
    inputs = LossInputs(StudentOutput(logits=s), TeacherOutput(logits=t), y, mask,
                        token_weights=CH.default_token_weights(mask))
    with torch.no_grad():
        out = comp(inputs)
    ref = LF.forward_kl(s, t)[mask].mean()
    assert isinstance(out, Reduced)  # the typed contract: already reduced with token_weights
    assert out.value.dim() == 0 and not out.value.requires_grad
    torch.testing.assert_close(out.value, ref, rtol=1e-5, atol=0)
    # token_weights=None (called outside the combiner) defaults to the micro-batch token mean
    inputs.token_weights = None
    torch.testing.assert_close(comp(inputs).value, ref, rtol=1e-5, atol=0)


def _inputs(s, t, y):
    return LossInputs(StudentOutput(logits=s), TeacherOutput(logits=t), y, y != -100)


def test_kernels_only_see_chunks_of_at_most_chunk_size_rows():
    s, t, y = batch(6)
    mask = y != -100
    seen = []
    kernel = C.ForwardKL().closed_form(FullTeacher(_inputs(s, t, y)), 1.0)

    def spy(x, teacher, need_grad):
        seen.append(x.shape[0])
        return kernel(x, teacher, need_grad)

    CH.chunked_loss(s.requires_grad_(), CH.default_token_weights(mask), spy, CH.full_rows(t), chunk_size=5)
    assert max(seen) <= 5 and sum(seen) == int(mask.sum())
    assert CH.rows_per_chunk(151_936) == 110 and CH.rows_per_chunk(2048) == 8192
    with pytest.raises(ValueError, match="chunk_size"):
        chunked(C.ForwardKL, chunk_size=0)


def test_kernels_match_autograd_on_extreme_logits():
    """Closed-form gradients vs autograd where softmax saturates (masked vocab, huge logits)."""
    g = torch.Generator().manual_seed(7)
    s = torch.randn(4, V, generator=g) * 30
    t = torch.randn(4, V, generator=g) * 30
    t[:, :3] = float("-inf")  # the teacher rules some ids out entirely
    full = FullTeacher(_inputs(s[None], t[None], torch.zeros(1, 4, dtype=torch.long)))
    for comp, ref in ((C.ForwardKL(), LF.forward_kl), (C.GeneralizedJSD(), lambda a, b, T: LF.generalized_jsd(a, b, 0.5, T))):
        a = s.clone().requires_grad_()
        ref(a, t, 1.5).sum().backward()
        value, grad = comp.closed_form(full, 1.5)(s.clone(), t.clone(), True)
        torch.testing.assert_close(value, ref(s, t, 1.5), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, a.grad, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", ["kd_chunked", "kd_fused"])
def test_loss_configs_instantiate_and_match_kd(name, tmp_path):
    loss = instantiate(compose_config("train", [f"loss={name}"], tmp_path).loss)
    kd = instantiate(OmegaConf.load(CONF / "kd.yaml"))
    assert isinstance(loss, DistillationLoss)
    s, t, y = batch(8)
    v0, g0, _ = run(kd, s, t, y, teacher_requires_grad=False)
    v1, g1, _ = run(loss, s, t, y)  # logits present: the fused components use the chunked kernels
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=0)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-8)


def test_non_contiguous_logits_views_are_gathered_without_a_full_copy():
    """The module trims padded vocabularies with ``logits[..., :vocab]`` (a strided view)."""
    s, t, y = batch(9)
    mask = y != -100
    w = CH.default_token_weights(mask)
    big = torch.cat([s, torch.randn(B, L, 5)], -1).requires_grad_()
    a = s.clone().requires_grad_()
    CH.chunked_forward_kl(big[..., :V], t, w, 2.0, chunk_size=4).backward()
    (torch.where(mask, LF.forward_kl(a, t, 2.0), 0.0) * w).sum().backward()
    torch.testing.assert_close(big.grad[..., :V], a.grad, rtol=1e-5, atol=1e-8)
    assert (big.grad[..., V:] == 0).all()
