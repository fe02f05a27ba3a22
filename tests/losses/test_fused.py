"""Fused (hidden states + lm_head) losses equal the plain components on ``h @ W.T``."""

import pytest
import torch

from distill.losses import chunked as CH
from distill.losses import fused as FU
from distill.losses import functional as LF
from distill.losses import sparse as SP
from distill.losses.combine import DistillationLoss
from distill.losses.components import CrossEntropy, ForwardKL, GeneralizedJSD, ReverseKL
from distill.teachers.cache.encoding import topk_from_logits  # the cache writers
from distill.types import StudentOutput, TeacherOutput
from functools import partial
from distill.losses import components as C
from tests.losses.strategies import chunked, fused

B, L, D, DT, V = 2, 9, 16, 24, 41


def tensors(seed=0, dtype=torch.float32, teacher_pad=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, L, D, generator=g).to(dtype)
    w = (torch.randn(V, D, generator=g) / D ** 0.5 * 3).to(dtype)
    th = torch.randn(B, L, DT, generator=g).to(dtype)
    tw = (torch.randn(V + teacher_pad, DT, generator=g) / DT ** 0.5 * 3).to(dtype)
    y = torch.randint(0, V, (B, L), generator=g)
    y[:, -1] = -100
    y[0, :3] = -100
    return h, w, th, tw, y


def plain_run(loss, h, w, teacher, y):
    """Reference: materialise the logits and use the lead's plain components."""
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    total, logs = loss(StudentOutput(logits=h @ w.T), teacher, y, 0)
    total.backward()
    return total.detach(), h.grad, w.grad, logs


def fused_run(loss, h, w, teacher, y, teacher_leaves=()):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    total, logs = loss(StudentOutput(last_hidden=h, lm_head_weight=w), teacher, y, 0)
    total.backward()
    for t in teacher_leaves:
        assert t.grad is None, "a gradient reached the teacher"
    return total.detach(), h.grad, w.grad, logs


def head_teacher(th, tw, requires_grad=True):
    th, tw = th.clone().requires_grad_(requires_grad), tw.clone().requires_grad_(requires_grad)
    t = TeacherOutput()
    t.last_hidden, t.lm_head_weight = th, tw  # an online teacher stopped at its final norm
    return t, (th, tw)


def close(a, b, rtol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


PAIRS = [(ForwardKL, partial(fused, C.ForwardKL), {}), (ReverseKL, partial(fused, C.ReverseKL), {}),
         (GeneralizedJSD, partial(fused, C.GeneralizedJSD), {"beta": 0.4})]


@pytest.mark.parametrize("plain_cls,fused_cls,kw", PAIRS, ids=lambda x: getattr(x, "__name__", str(x)))
@pytest.mark.parametrize("chunk_size", [1, 4, None])  # 4 does not divide the 14 unmasked tokens
@pytest.mark.parametrize("teacher_form", ["head", "logits"])
def test_fused_matches_plain_values_and_gradients(plain_cls, fused_cls, kw, chunk_size, teacher_form):
    # The teacher's head has 3 padding rows more than the student's: both compare the first V ids.
    h, w, th, tw, y = tensors(teacher_pad=3)
    t_logits = (th @ tw.T)[..., :V]
    plain = DistillationLoss({"kd": plain_cls(**kw), "ce": CrossEntropy()}, {"kd": 0.7, "ce": 0.3}, 2.0)
    fused_loss = DistillationLoss({"kd": fused_cls(chunk_size=chunk_size, **kw),
                              "ce": fused(C.CrossEntropy, chunk_size=chunk_size)}, {"kd": 0.7, "ce": 0.3}, 2.0)
    v0, gh0, gw0, logs0 = plain_run(plain, h, w, TeacherOutput(logits=t_logits), y)
    if teacher_form == "head":
        teacher, leaves = head_teacher(th, tw)
    else:
        leaf = (th @ tw.T).detach().requires_grad_()  # padded teacher logits, V + 3 wide
        teacher, leaves = TeacherOutput(logits=leaf), (leaf,)
    v1, gh1, gw1, logs1 = fused_run(fused_loss, h, w, teacher, y, leaves)
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=0)
    torch.testing.assert_close(logs1["kd"], logs0["kd"], rtol=1e-5, atol=0)
    close(gh1, gh0)
    close(gw1, gw0)
    assert (gh1[y == -100] == 0).all()


def test_bf16_fused_matches_plain_bf16():
    h, w, th, tw, y = tensors(1, dtype=torch.bfloat16)
    plain = DistillationLoss({"kd": ForwardKL()}, {"kd": 1.0}, 2.0)
    fused_loss = DistillationLoss({"kd": fused(C.ForwardKL, chunk_size=5)}, {"kd": 1.0}, 2.0)
    v0, gh0, gw0, _ = plain_run(plain, h, w, TeacherOutput(logits=th @ tw.T), y)
    teacher, leaves = head_teacher(th, tw)
    v1, gh1, gw1, _ = fused_run(fused_loss, h, w, teacher, y, leaves)
    assert v1.dtype == torch.float32 and gh1.dtype == torch.bfloat16 and gw1.dtype == torch.bfloat16
    # Same bf16 logits, fp32 loss math: values agree closely; gradients to bf16 precision (the
    # fused weight gradient is accumulated in fp32, the plain one by a bf16 GEMM).
    torch.testing.assert_close(v1, v0, rtol=1e-3, atol=0)
    close(gh1.float(), gh0.float(), rtol=2e-2)
    close(gw1.float(), gw0.float(), rtol=2e-2)
    # and both are close to the fp32 computation on the same (upcast) numbers
    v32, gh32, gw32, _ = plain_run(plain, h.float(), w.float(), TeacherOutput(logits=th.float() @ tw.float().T), y)
    torch.testing.assert_close(v1, v32, rtol=3e-2, atol=0)
    close(gw1.float(), gw32, rtol=5e-2)


def test_empty_mask_zero_value_zero_grads_no_nan():
    h, w, th, tw, y = tensors(2)
    y[:] = -100
    loss = DistillationLoss({"kd": fused(C.ForwardKL), "rkl": fused(C.ReverseKL), "jsd": fused(C.GeneralizedJSD),
                             "ce": fused(C.CrossEntropy)}, {"kd": 1.0, "rkl": 1.0, "jsd": 1.0, "ce": 1.0})
    teacher, leaves = head_teacher(th, tw)
    v, gh, gw, logs = fused_run(loss, h, w, teacher, y, leaves)
    assert v.item() == 0.0 and not torch.isnan(v)
    assert (gh == 0).all() and (gw == 0).all()


JSD02 = C.GeneralizedJSD(beta=0.2, scale_by_t2=False)


def test_functional_api_grad_output_frozen_head_and_tied_weights():
    h, w, th, tw, y = tensors(3)
    mask = y != -100
    tok = mask.float() / 30.0
    ref_h, ref_w = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = (torch.where(mask, LF.generalized_jsd(ref_h @ ref_w.T, th @ tw.T, 0.2, 1.5), 0.0) * tok).sum()
    (3 * ref + ref_w.sum()).backward()  # W also used elsewhere (tied embeddings): grads add up
    fh, fw = h.clone().requires_grad_(), w.clone().requires_grad_()
    out = FU.fused_linear_divergence(fh, fw, (th, tw), tok, JSD02, 1.5, chunk_size=4)
    (3 * out + fw.sum()).backward()
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=0)
    close(fh.grad, ref_h.grad)
    close(fw.grad, ref_w.grad)
    # frozen head (e.g. LoRA): only the hidden states get a gradient, and no (V, D) buffer is built
    fh2 = h.clone().requires_grad_()
    FU.fused_linear_divergence(fh2, w, th @ tw.T, tok, JSD02, 1.5).backward()
    close(fh2.grad, ref_h.grad / 3)
    # cross-entropy
    ch, cw = h.clone().requires_grad_(), w.clone().requires_grad_()
    FU.fused_linear_cross_entropy(ch, cw, y, chunk_size=3).backward()
    rh, rw = h.clone().requires_grad_(), w.clone().requires_grad_()
    LF.cross_entropy(rh @ rw.T, y)[mask].mean().backward()
    close(ch.grad, rh.grad)
    close(cw.grad, rw.grad)


def test_fused_with_sparse_teacher_matches_plain_sparse():
    h, w, th, tw, y = tensors(4)
    ids, lp = topk_from_logits(th @ tw.T, 6)
    teacher = TeacherOutput(topk_ids=ids, topk_logprobs=lp)
    plain = DistillationLoss({"kd": C.ForwardKL()}, {"kd": 1.0}, 2.0)
    fused_loss = DistillationLoss({"kd": fused(C.ForwardKL, chunk_size=4)}, {"kd": 1.0}, 2.0)
    v0, gh0, gw0, _ = plain_run(plain, h, w, teacher, y)
    v1, gh1, gw1, _ = fused_run(fused_loss, h, w, teacher, y)
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=0)
    close(gh1, gh0)
    close(gw1, gw0)


def test_needs_leave_out_student_logits_and_missing_head_is_reported():
    from distill.losses.components import STUDENT_LOGITS, TEACHER_LOGITS

    for comp in (fused(C.ForwardKL), fused(C.ReverseKL), fused(C.GeneralizedJSD), fused(C.CrossEntropy)):
        assert STUDENT_LOGITS not in comp.needs  # the module then returns last_hidden + lm_head_weight
    assert TEACHER_LOGITS in fused(C.ForwardKL).needs
    h, w, th, tw, y = tensors(5)
    loss = DistillationLoss({"kd": fused(C.ForwardKL)}, {"kd": 1.0})
    with pytest.raises(ValueError, match="last_hidden"):
        loss(StudentOutput(), TeacherOutput(logits=th @ tw.T), y, 0)
    with pytest.raises(ValueError, match="backend"):
        fused(C.ForwardKL, backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_liger_backend_matches_torch_backend_on_gpu():
    pytest.importorskip("liger_kernel")
    h, w, th, tw, y = (x.cuda() for x in tensors(6))
    teacher, _ = head_teacher(th, tw, requires_grad=False)
    out = {}
    for backend in ("torch", "liger"):
        loss = DistillationLoss({"kd": fused(C.GeneralizedJSD, beta=0.5, backend=backend),
                                 "ce": fused(C.CrossEntropy, backend=backend)}, {"kd": 1.0, "ce": 1.0}, 2.0)
        out[backend] = fused_run(loss, h, w, teacher, y)
    torch.testing.assert_close(out["liger"][0], out["torch"][0], rtol=1e-4, atol=1e-6)
    close(out["liger"][1], out["torch"][1], rtol=1e-3)
    close(out["liger"][2], out["torch"][2], rtol=1e-3)
    assert CH.rows_per_chunk(V) >= 1
