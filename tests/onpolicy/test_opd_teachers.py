"""loss=opd's teacher side: the online teacher answers TEACHER_SAMPLED_LOGPROB from its head without
full logits, the served teacher answers it from one log-prob per position, and both equal the
log-softmax of the full logits at the target token."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill.losses.functional import next_token_targets
from distill.models import ModelSpec
from distill.teachers.hf import HFTeacher
from distill.types import Need

V = 96
SAMPLED = frozenset({Need.TEACHER_SAMPLED_LOGPROB})


def tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def batch():
    ids = torch.tensor([[5, 17, 30, 2, 9, 0], [40, 41, 42, 0, 0, 0], [7, 8, 9, 10, 11, 12]])
    mask = (torch.arange(6) < torch.tensor([[5], [3], [6]])).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a prompt without loss
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def reference(model, b) -> tuple[torch.Tensor, torch.Tensor]:
    targets = next_token_targets(b["labels"])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.double(), -1)
    got = lp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(targets != -100, got, 0.0), targets


def test_online_teacher_fills_sampled_logprobs_without_logits(tmp_path):
    tiny().save_pretrained(tmp_path)
    teacher = HFTeacher(ModelSpec(name_or_path=str(tmp_path), dtype="float32"))
    teacher.load()
    b = batch()
    out = teacher(b, SAMPLED)
    assert out.logits is None and out.last_hidden is None and out.lm_head_weight is None
    want, targets = reference(teacher.model, b)
    assert out.sampled_logprobs.shape == targets.shape
    torch.testing.assert_close(out.sampled_logprobs.double(), want, atol=1e-5, rtol=0)


def test_remote_teacher_scores_sampled_tokens_like_the_local_one(tmp_path):
    from distill.serve_teacher import Scorer, serve
    from distill.teachers.remote import RemoteTeacher

    model = tiny()
    srv = serve(Scorer(model, "tiny", max_logprobs=4), port=0)
    try:
        remote = RemoteTeacher(f"http://127.0.0.1:{srv.server_port}", k=4, batch_size=2)
        b = batch()
        out = remote(b, SAMPLED)
        assert out.topk_ids is None and out.sampled_logprobs is not None
        want, _ = reference(model, b)
        torch.testing.assert_close(out.sampled_logprobs.double(), want, atol=1e-5, rtol=0)
        # a full-distribution loss still gets the top-k head
        assert remote(b, SAMPLED | {Need.TEACHER_LOGITS}).topk_ids.shape == (3, 6, 4)
    finally:
        srv.shutdown()


@pytest.mark.parametrize("estimator", ["k1"])
def test_opd_loss_reads_the_online_teachers_sampled_logprobs(tmp_path, estimator):
    from distill.losses.combine import DistillationLoss
    from distill.losses.opd import OnPolicyDistillation
    from distill.types import StudentOutput, TeacherOutput

    model = tiny()
    model.save_pretrained(tmp_path)
    teacher = HFTeacher(ModelSpec(name_or_path=str(tmp_path), dtype="float32"))
    teacher.load()
    b = batch()
    loss = DistillationLoss({"opd": OnPolicyDistillation(estimator)}, {"opd": 1.0})
    targets = next_token_targets(b["labels"])
    torch.manual_seed(1)
    student = StudentOutput(logits=torch.randn(3, 6, V, dtype=torch.float64))
    with torch.no_grad():
        full = TeacherOutput(logits=model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    a, _ = loss(student, teacher(b, loss.teacher_needs), targets, 0, batch=b)
    c, _ = loss(student, full, targets, 0, batch=b)
    torch.testing.assert_close(a.double(), c.double(), atol=1e-5, rtol=0)
