"""On-policy sequences (distill.onpolicy): masks, normalisation, seeds, λ = 0, teachers, LoRA, every loss.

Tiny models from config (debug=tiny: a 2x32 student, a random 2-layer teacher) on CPU.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from distill.build import build_components
from distill.config import ConfigError
from distill.losses.functional import IGNORE_INDEX, next_token_targets
from distill.onpolicy import Generated, HFGenerator, PromptSpec, Sampling, SequenceSource
from distill.onpolicy.generation import completion_mask
from distill.onpolicy.prompts import left_pad
from distill.onpolicy.speculative import speculative_generate
from distill.runs import read_metrics
from distill.teachers.cached import CachedTeacher

EOS, PAD = 2, 0


def _module(tiny_cfg, tmp_path, *overrides, name="run"):
    cfg = tiny_cfg(*overrides, output_dir=tmp_path / name)
    torch.manual_seed(0)
    return build_components(cfg).load()


def _batch(n=6, length=20, vocab=2000, seed=1, masked_prompt: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, length), generator=g)
    attn = torch.ones_like(ids)
    for i, cut in enumerate([20, 14, 20, 9, 17, 20][:n]):
        attn[i, cut:] = 0
    ids = ids.masked_fill(attn == 0, PAD)
    labels = ids.masked_fill(attn == 0, IGNORE_INDEX)
    if masked_prompt:
        labels[:, :masked_prompt] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


class ScriptedGenerator:
    """A :class:`Generator` with known continuations: row ``j`` stops with EOS after ``stops[j]`` tokens
    (None: no EOS within ``max_new_tokens``), then junk that must never reach the loss."""

    def __init__(self, stops):
        self.stops = stops

    def __call__(self, model, prompt_ids, prompt_mask, sampling, stop_ids, pad_id, vocab_size=None):
        eos_id = stop_ids[0]
        b, n = prompt_ids.shape[0], sampling.max_new_tokens
        comp = torch.arange(100, 100 + b * n).reshape(b, n) % 1500 + 10
        for j in range(b):
            stop = self.stops[j % len(self.stops)]
            if stop is not None:
                comp[j, stop - 1] = eos_id
        mask = completion_mask(comp, stop_ids)
        return Generated(comp.masked_fill(mask == 0, pad_id), mask)


def _source(stops=None, **kw) -> SequenceSource:
    kw.setdefault("sampling", {"max_new_tokens": 6})
    src = SequenceSource(generator=ScriptedGenerator(stops) if stops else None, **kw)
    src.stop_ids, src.pad_id = [EOS], PAD
    return src


# ---------------------------------------------------------------------------- masks and prompts
def test_completion_mask_keeps_through_the_first_eos():
    comp = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 3, 3, 3]])
    assert completion_mask(comp, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_prompt_lengths_masked_segment_or_first_tokens():
    code = _batch()
    assert PromptSpec("prefix", 10).lengths(code) == [10, 10, 10, 4, 10, 10]  # a row of <= 10 keeps half
    chat = _batch(masked_prompt=5)
    assert PromptSpec("auto", 8).lengths(chat) == [5] * 6
    assert PromptSpec("auto", 8).lengths(code) == PromptSpec("prefix", 8).lengths(code)
    with pytest.raises(ValueError, match="mode=prefix"):
        PromptSpec("masked").lengths(code)


def test_masks_prompt_pad_and_post_eos_carry_no_loss_generated_tokens_do(tiny_cfg, tmp_path):
    parts = _module(tiny_cfg, tmp_path)
    stops = [2, None, 4, 1, 6, 3]  # EOS after 2 tokens, none, after 4, ...
    src = _source(stops, lmbda=1.0, prompts={"mode": "prefix", "prompt_tokens": 8})
    batch = _batch()
    new, logs = src(batch, parts.module, step=0)
    lengths = PromptSpec("prefix", 8).lengths(batch)
    expected = [s if s is not None else 6 for s in stops]
    assert logs["generated_tokens"] == sum(expected) and logs["lmbda"] == 1.0
    for i in range(6):
        p, g = lengths[i], expected[i]
        ids, labels, attn = new["input_ids"][i], new["labels"][i], new["attention_mask"][i]
        assert torch.equal(ids[:p], batch["input_ids"][i, :p]), "the prompt is the example's own start"
        assert (labels[:p] == IGNORE_INDEX).all(), "prompt tokens carry no loss"
        assert torch.equal(labels[p:p + g], ids[p:p + g]) and (labels[p:p + g] != IGNORE_INDEX).all()
        assert (attn[:p + g] == 1).all() and (attn[p + g:] == 0).all()
        assert (labels[p + g:] == IGNORE_INDEX).all(), "padding and everything after EOS carry no loss"
        if stops[i] is not None:
            assert ids[p + g - 1] == EOS, "the EOS itself is trained (the student learns to stop)"
    # the step's loss tokens are exactly the generated ones
    assert int((next_token_targets(new["labels"]) != IGNORE_INDEX).sum()) == sum(expected)


def test_chat_prompt_is_the_masked_segment(tiny_cfg, tmp_path):
    parts = _module(tiny_cfg, tmp_path)
    src = _source([3], lmbda=1.0)
    batch = _batch(masked_prompt=5)
    new, _ = src(batch, parts.module, step=0)
    assert torch.equal(new["input_ids"][:, :5], batch["input_ids"][:, :5])
    assert (new["labels"][:, :5] == IGNORE_INDEX).all() and (new["labels"][:, 5:8] != IGNORE_INDEX).all()
    assert new["input_ids"].shape[1] == 8


def test_lmbda_fraction_and_schedule():
    src = _source(lmbda=0.5)
    picks = [src.choose(16, s) for s in range(20)]
    assert all(len(p) == 8 for p in picks) and len({tuple(p) for p in picks}) > 1
    from distill.losses.schedules import Linear

    ramp = _source(lmbda=Linear(0.0, 1.0, 4))
    assert [len(ramp.choose(8, s)) for s in range(6)] == [0, 2, 4, 6, 8, 8]
    assert _source(lmbda=0.3).choose(7, 3) == _source(lmbda=0.3).choose(7, 3), "a fixed seed picks the same rows"
    with pytest.raises(ConfigError, match="lmbda"):
        _source(lmbda=1.5)


# ---------------------------------------------------------------------------- seeds and RNG streams
def test_fixed_seed_reproduces_generated_sequences_and_loss_without_moving_the_global_rng(tiny_cfg, tmp_path):
    parts = _module(tiny_cfg, tmp_path)
    batch = _batch()
    src = _source(lmbda=1.0, sampling={"max_new_tokens": 8}, prompts={"prompt_tokens": 6})
    state = torch.get_rng_state()
    a, _ = src(batch, parts.module, step=3)
    assert torch.equal(torch.get_rng_state(), state), "generation restores the global RNG"
    b, _ = src(batch, parts.module, step=3)
    c, _ = src(batch, parts.module, step=4)
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["input_ids"], c["input_ids"])
    assert parts.module.student.training, "the student is back in train mode after generating"
    la, _ = parts.module.step_loss(a, 3)
    lb, _ = parts.module.step_loss(b, 3)
    assert la.item() == lb.item()
    other = _source(lmbda=1.0, sampling={"max_new_tokens": 8}, prompts={"prompt_tokens": 6}, seed=1)
    assert not torch.equal(other(batch, parts.module, step=3)[0]["input_ids"], a["input_ids"])


def _fit(tiny_cfg, tmp_path, name, *overrides):
    cfg = tiny_cfg("trainer.max_steps=3", "logger=none", "callbacks=none", "export.enabled=false",
                   "trainer.limit_val_batches=0", "+student.config.attention_dropout=0.3", *overrides,
                   output_dir=tmp_path / name)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    parts = build_components(cfg)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, accelerator="cpu", enable_model_summary=False)
    trainer.fit(parts.module, datamodule=parts.datamodule)
    return {k: v.clone() for k, v in parts.module.student.state_dict().items()}


def test_lmbda_zero_step_equals_off_policy_step_bit_exact(tiny_cfg, tmp_path):
    # attention dropout on: the training RNG stream matters, and must be untouched by the source
    off = _fit(tiny_cfg, tmp_path, "off")
    zero = _fit(tiny_cfg, tmp_path, "zero", "sequences=gkd", "sequences.lmbda=0.0")
    assert off.keys() == zero.keys()
    assert all(torch.equal(off[k], zero[k]) for k in off)
    on = _fit(tiny_cfg, tmp_path, "on", "sequences=gkd", "sequences.lmbda=1.0", "sequences.sampling.max_new_tokens=4")
    assert not all(torch.equal(off[k], on[k]) for k in off), "lmbda=1 trains on other sequences"


# ---------------------------------------------------------------------------- normalisation
def test_token_normalisation_counts_generated_tokens_and_ignores_micro_batch_size(tiny_cfg, tmp_path):
    results = {}
    for micro in (None, 2, 1):
        parts = _module(tiny_cfg, tmp_path, "student.dtype=float64", "+teacher.model.dtype=float64",
                        f"module.micro_batch_size={micro or 'null'}", name=f"m{micro}")
        module = parts.module
        # different lengths: EOS after 1..6 tokens, half the rows from the data
        src = _source([1, 6, 3, None, 2, 5], lmbda=0.5, prompts={"prompt_tokens": 4})
        new, logs = src(_batch(), module, step=0)
        module.student.zero_grad()
        loss, _ = module.step_loss(new, 0, backward=lambda l: l.backward())
        grads = {n: p.grad.clone() for n, p in module.student.named_parameters()}
        results[micro] = (new, loss.item(), grads)
    new, loss, grads = results[None]
    for micro in (2, 1):
        assert torch.equal(results[micro][0]["input_ids"], new["input_ids"])
        assert results[micro][1] == pytest.approx(loss, abs=1e-12)
        for k in grads:
            assert torch.allclose(results[micro][2][k], grads[k], atol=1e-12, rtol=0), k
    # the loss is the sum over loss tokens / their count, generated ones included
    module = parts.module
    targets = next_token_targets(new["labels"])
    with torch.no_grad():
        s = module.student(input_ids=new["input_ids"], attention_mask=new["attention_mask"]).logits
        t = module.teacher.model(input_ids=new["input_ids"], attention_mask=new["attention_mask"]).logits
    from distill.losses.functional import forward_kl

    kl = forward_kl(s, t)
    mask = targets != IGNORE_INDEX
    assert loss == pytest.approx(float(kl[mask].sum() / mask.sum()), rel=1e-9)


# ---------------------------------------------------------------------------- teachers
def test_cached_and_missing_teachers_are_refused_at_build_time(tiny_cfg, tmp_path):
    cached = CachedTeacher.__new__(CachedTeacher)  # the check looks at the teacher's type only
    with pytest.raises(ConfigError, match="online teacher"):
        _source(lmbda=1.0).check(cached)
    with pytest.raises(ConfigError, match="teacher=none"):
        build_components(tiny_cfg("teacher=none", "loss=ce", "sequences=student", output_dir=tmp_path / "none"))


def test_speculative_tokens_are_in_the_teachers_top_k_or_drawn_from_it(tiny_cfg, tmp_path):
    parts = _module(tiny_cfg, tmp_path, "student.dtype=float64", "+teacher.model.dtype=float64")
    student, teacher = parts.module.student, parts.teacher.model
    batch = _batch()
    prompts = [batch["input_ids"][i, :n] for i, n in enumerate(PromptSpec("prefix", 6).lengths(batch))]
    ids, mask = left_pad(prompts, PAD)
    k = 300
    out = speculative_generate(student, teacher, ids, mask, Sampling(max_new_tokens=10), k, EOS, PAD,
                               generator=torch.Generator().manual_seed(0))
    full = torch.cat([ids, out.completion], 1)
    full_mask = torch.cat([mask, out.completion_mask], 1)
    pos = (full_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = teacher(input_ids=full, attention_mask=full_mask, position_ids=pos).logits
    p = ids.shape[1]
    top = logits[:, p - 1:-1].topk(k, dim=-1).indices  # the teacher's top-k before each generated token
    in_top = (top == out.completion.unsqueeze(-1)).any(-1)
    real = out.completion_mask == 1
    assert torch.all(in_top | out.from_teacher | ~real), "every token is in the top-k or was the teacher's draw"
    assert out.from_teacher[real].any() and (~out.from_teacher[real]).any(), "the test sees both cases"
    # K = 1 with greedy decoding: every rejected proposal becomes exactly the teacher's argmax
    greedy = speculative_generate(student, teacher, ids, mask, Sampling(max_new_tokens=6, greedy=True), 1, EOS, PAD)
    full = torch.cat([ids, greedy.completion], 1)
    full_mask = torch.cat([mask, greedy.completion_mask], 1)
    with torch.no_grad():
        t_arg = teacher(input_ids=full, attention_mask=full_mask,
                        position_ids=(full_mask.cumsum(-1) - 1).clamp_min(0)).logits[:, p - 1:-1].argmax(-1)
    assert torch.equal(greedy.completion[greedy.completion_mask == 1], t_arg[greedy.completion_mask == 1])
    # K = V: nothing is ever rejected
    allk = speculative_generate(student, teacher, ids, mask, Sampling(max_new_tokens=6), 10 ** 6, EOS, PAD,
                                generator=torch.Generator().manual_seed(0))
    assert not allk.from_teacher.any()


def test_seqkd_continuations_come_from_the_teacher(tiny_cfg, tmp_path):
    parts = _module(tiny_cfg, tmp_path)
    src = _source(lmbda=0.0, off_policy="teacher", sampling={"max_new_tokens": 5, "greedy": True},
                  prompts={"prompt_tokens": 6})
    new, logs = src(_batch(), parts.module, step=0)
    assert logs["generated_tokens"] == 6 * 5 and logs["on_policy"] == 0.0
    ids, mask = left_pad([_batch()["input_ids"][i, :6] for i in range(6)], PAD)
    want = parts.teacher.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                        pad_token_id=PAD, eos_token_id=EOS)[:, ids.shape[1]:]
    assert torch.equal(new["input_ids"][:, 6:11], want)


# ---------------------------------------------------------------------------- LoRA
def test_lora_student_generates_with_its_adapters(tiny_cfg, tmp_path):
    parts = _module(tiny_cfg, tmp_path, "+student.lora={r: 4, alpha: 8, dropout: 0.2, target_modules: [q_proj, v_proj]}")
    model = parts.module.student
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 2.0)  # fresh adapters are zero (a no-op): make them matter
    ids, mask = left_pad([torch.arange(5, 11), torch.arange(20, 24)], PAD)
    greedy = Sampling(max_new_tokens=8, greedy=True)
    gen = HFGenerator()
    adapted = gen(model, ids, mask, greedy, EOS, PAD).completion
    merged = copy.deepcopy(model).merge_and_unload()
    assert torch.equal(gen(merged, ids, mask, greedy, EOS, PAD).completion, adapted)
    with model.disable_adapter():
        base = gen(model, ids, mask, greedy, EOS, PAD).completion
    assert not torch.equal(base, adapted)
    assert model.training, "LoRA dropout is off while generating, back on after"


# ---------------------------------------------------------------------------- every loss
LOSSES = ["kd", "rkl", "jsd", "skl", "srkl", "tvd", "akl", "kd_chunked", "kd_fused", "hidden", "attention",
          "kd_focal", "kd_confidence", "progressive"]


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_on_generated_sequences(tiny_cfg, tmp_path, loss):
    parts = _module(tiny_cfg, tmp_path, f"loss={loss}", "module.micro_batch_size=2", name=loss)
    src = _source([2, None, 3], lmbda=0.5, prompts={"prompt_tokens": 6})
    new, _ = src(_batch(), parts.module, step=0)
    total, logs = parts.module.step_loss(new, 0, backward=lambda l: l.backward())
    assert torch.isfinite(total) and total.item() != 0.0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts.module.student.parameters())


# ---------------------------------------------------------------------------- end to end
def test_run_logs_lmbda_generated_tokens_and_generation_share(tiny_cfg, tmp_path):
    from distill import pipeline

    run = tmp_path / "e2e"
    cfg = tiny_cfg("experiment=stdlib_on_policy", "sequences.sampling.max_new_tokens=6",
                   "sequences.lmbda={_target_: distill.losses.schedules.Linear, start: 0.0, end: 1.0, steps: 3}",
                   "export.enabled=false", output_dir=run)
    pipeline.run(cfg)
    rows = [r for r in read_metrics(run) if "train/loss" in r]
    assert [r["train/lmbda"] for r in rows] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert rows[0]["train/generated_tokens"] == 0 and rows[-1]["train/generated_tokens"] > 0
    assert all("train/jsd" in r for r in rows)
    shares = [r["train/generation_share"] for r in rows if "train/generation_share" in r]
    assert len(shares) == 3 and all(0.0 <= s <= 1.0 for s in shares) and shares[-1] > 0


def test_batched_left_padded_generation_equals_one_prompt_at_a_time_and_static_cache():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128), dtype=torch.float64)
    rows = [torch.arange(5, 11), torch.arange(20, 24)]
    greedy = Sampling(max_new_tokens=8, greedy=True)
    ids, mask = left_pad(rows, PAD)
    batched = HFGenerator()(model, ids, mask, greedy, EOS, PAD).completion
    for j, r in enumerate(rows):
        alone = HFGenerator()(model, r[None], torch.ones_like(r)[None], greedy, EOS, PAD).completion
        assert torch.equal(alone[0], batched[j]), "left padding must not change a row's continuation"
    static = Sampling(max_new_tokens=8, greedy=True, cache_implementation="static")
    assert torch.equal(HFGenerator()(model, ids, mask, static, EOS, PAD).completion, batched)
