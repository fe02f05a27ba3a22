"""sequences.reuse=k: one generation trains k steps; its reuses carry the student's log-probs at
generation time, so loss=opd's importance ratio is exactly 1 at the first use and
exp(log q_theta - log q_old) after the student moved (the real source, module and loss, tiny models)."""

from __future__ import annotations

import pytest
import torch

from distill.build import build_components
from distill.losses.functional import IGNORE_INDEX, next_token_targets
from distill.onpolicy import SequenceSource
from distill.onpolicy.buffer import GenerationBuffer, behaviour_logprobs

EOS, PAD = 2, 0


def _batch(seed: int, n: int = 4, length: int = 12) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 2000, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.fixture
def opd(tiny_cfg, tmp_path):
    cfg = tiny_cfg("loss=opd", output_dir=tmp_path / "run")
    torch.manual_seed(0)
    module = build_components(cfg).load().module
    comp = module.loss.components["opd"]
    seen = []
    terms = comp.terms
    comp.terms = lambda inputs: seen.append(terms(inputs)) or seen[-1]  # record each micro-batch's ratios
    src = SequenceSource(lmbda=1.0, reuse=3, sampling={"max_new_tokens": 6}, prompts={"mode": "prefix", "prompt_tokens": 5})
    src.stop_ids, src.pad_id = [EOS], PAD
    return module, src, seen


def _sgd_step(module, batch, step):
    module.student.zero_grad(set_to_none=True)
    module.step_loss(batch, step, backward=lambda loss: loss.backward())
    with torch.no_grad():
        for p in module.student.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad / (p.grad.norm() + 1e-12)


def test_first_use_ratio_is_exactly_one_and_reuses_follow_the_moved_student(opd):
    module, src, seen = opd
    first, logs = src(_batch(1), module, step=0)
    assert "old_logprobs" not in first and logs["reused"] == 0.0 and logs["generated_tokens"] > 0
    at_generation = behaviour_logprobs(module, first)
    _sgd_step(module, first, 0)
    t = seen[-1]
    mask = next_token_targets(first["labels"]) != IGNORE_INDEX
    assert torch.equal(t.ratio.detach(), torch.ones_like(t.ratio)), "first use: ratio exactly 1"
    assert not t.clipped.any(), "first use: clipping has no effect"

    again, logs = src(_batch(2), module, step=1)  # this step's data batch is skipped
    assert logs["reused"] == 1.0 and logs["generated_tokens"] == 0.0
    assert torch.equal(again["input_ids"], first["input_ids"]) and torch.equal(again["labels"], first["labels"])
    torch.testing.assert_close(again["old_logprobs"], at_generation, atol=0, rtol=0)
    now = behaviour_logprobs(module, again)
    module.step_loss(again, 1)
    ratio = seen[-1].ratio.detach()
    want = torch.exp(now - again["old_logprobs"])
    torch.testing.assert_close(ratio[mask], want[mask].to(ratio.dtype), atol=1e-6, rtol=1e-5)
    assert (ratio[mask] - 1).abs().max() > 1e-4, "the student moved, so the ratio is no longer 1"
    assert torch.equal(ratio[~mask], torch.ones_like(ratio[~mask])), "prompt and padding positions carry ratio 1"

    third, logs = src(_batch(3), module, step=2)
    assert logs["reused"] == 1.0 and torch.equal(third["input_ids"], first["input_ids"])
    fresh, logs = src(_batch(4), module, step=3)  # reuse=3 steps done: a new generation
    assert logs["reused"] == 0.0 and "old_logprobs" not in fresh
    assert not torch.equal(fresh["input_ids"][:, :5], first["input_ids"][:, :5])


def test_old_logprobs_are_aligned_with_the_next_token_targets(opd):
    module, src, _ = opd
    batch, _ = src(_batch(5), module, step=0)
    old = behaviour_logprobs(module, batch)
    targets = next_token_targets(batch["labels"])
    with torch.no_grad():
        lp = torch.log_softmax(module.student(input_ids=batch["input_ids"],
                                              attention_mask=batch["attention_mask"]).logits.float(), -1)
    want = lp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(old, torch.where(targets != IGNORE_INDEX, want, 0.0), atol=1e-5, rtol=0)
    assert (old[targets == IGNORE_INDEX] == 0).all()


def test_reuse_must_be_positive():
    with pytest.raises(ValueError, match="reuse"):
        GenerationBuffer(0)
    assert not GenerationBuffer(1).active
