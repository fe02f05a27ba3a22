"""Precision and memory paths on CPU: bf16-mixed, gradient checkpointing, LoRA with checkpointing,
and the teacher staying in eval mode while the student trains."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from distill.models import ModelSpec
from distill.train import fit
from tests.scale.helpers import compose

CFG = {"model_type": "llama", "vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64,
       "attention_dropout": 0.0}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
TINY = ["debug=tiny", "data.source.max_chars=3000", "data.max_val_examples=8", "export.enabled=false"]


def _loss_and_grads(gc: bool, lora: dict | None = None):
    torch.manual_seed(0)
    model = ModelSpec(config=CFG, tokenizer="unused", lora=lora, gradient_checkpointing=gc).build()
    if lora:  # LoRA B starts at zero (so A gets no gradient): give B values, as after a few steps
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    model.train()
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    loss, grads = _loss_and_grads(gc=False)
    loss_gc, grads_gc = _loss_and_grads(gc=True)
    assert loss_gc == pytest.approx(loss, abs=1e-6)
    assert grads.keys() == grads_gc.keys()
    assert max((grads[k] - grads_gc[k]).abs().max().item() for k in grads) <= 1e-6


def test_lora_with_gradient_checkpointing_trains_its_adapters():
    """The enable_input_require_grads pitfall: with frozen embeddings, reentrant checkpointing gives
    the adapters no gradient. Every adapter must get the gradient it gets without checkpointing."""
    loss, grads = _loss_and_grads(gc=False, lora=LORA)
    loss_gc, grads_gc = _loss_and_grads(gc=True, lora=LORA)
    assert grads and all("lora_" in k for k in grads)
    assert all(g.abs().sum() > 0 for g in grads_gc.values()), "an adapter got no gradient under checkpointing"
    assert loss_gc == pytest.approx(loss, abs=1e-6)
    assert max((grads[k] - grads_gc[k]).abs().max().item() for k in grads) <= 1e-6


def test_lora_with_gradient_checkpointing_through_a_run(tmp_path):
    lora = "+student.lora={r: 4, alpha: 8, dropout: 0.05, target_modules: [q_proj, v_proj]}"
    fitted = fit(compose([*TINY, lora, "student.gradient_checkpointing=true", "trainer.max_steps=3"], tmp_path))
    student = fitted.parts.module.student
    assert student.base_model.model.model.gradient_checkpointing
    moved = [n for n, p in student.named_parameters() if "lora_A" in n and p.requires_grad]
    # B left zero after 3 steps would mean no gradient ever reached the adapters
    assert all(p.abs().sum() > 0 for n, p in student.named_parameters() if "lora_B" in n) and moved


@pytest.fixture(scope="module")
def fp32_and_bf16(tmp_path_factory):
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path_factory.mktemp(precision)
        runs[precision] = fit(compose([*TINY, f"trainer.precision={precision}", "trainer.max_steps=6",
                                       "trainer.val_check_interval=6"], out)).metrics
    return runs


@pytest.mark.slow  # two 6-step runs
def test_bf16_mixed_runs_on_cpu_within_two_percent_of_fp32(fp32_and_bf16):
    """bf16 autocast on CPU (Lightning's bf16-mixed): the tiny default's held-out loss after 6 steps
    lands within 2% of the float32 run's (bf16 keeps 8 mantissa bits; the weights stay fp32)."""
    fp32, bf16 = fp32_and_bf16["32-true"], fp32_and_bf16["bf16-mixed"]
    assert bf16["val/loss"] == pytest.approx(fp32["val/loss"], rel=0.02)
    assert bf16["train/loss"] == pytest.approx(fp32["train/loss"], rel=0.05)
    assert bf16["val/loss"] != fp32["val/loss"], "bf16-mixed did not change the arithmetic: autocast is off"


class ModeCheck(L.Callback):
    """Records the train/eval mode of teacher and student (and the student's dropout) at each step."""

    def __init__(self):
        self.seen: list[tuple] = []

    def _record(self, where, pl_module):
        drops = [m.training for m in pl_module.student.modules() if isinstance(m, torch.nn.Dropout)]
        self.seen.append((where, pl_module.teacher.model.training, pl_module.student.training, all(drops), len(drops)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._record("train_start", pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record("train_end", pl_module)


def test_the_teacher_stays_in_eval_mode_while_the_student_trains(tmp_path):
    lora = "+student.lora={r: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, v_proj]}"
    check = ModeCheck()
    cfg = compose([*TINY, lora, "trainer.max_steps=4", "trainer.val_check_interval=2"], tmp_path)
    import distill.train as T

    real = T._callbacks
    T._callbacks = lambda c: [*real(c), check]
    try:
        fitted = fit(cfg)
    finally:
        T._callbacks = real
    assert len(check.seen) == 8
    for where, teacher_training, student_training, dropout_training, n_dropout in check.seen:
        assert not teacher_training, f"teacher in train mode at {where}"
        assert student_training and dropout_training and n_dropout > 0, f"student not training at {where}"
    teacher = fitted.parts.module.teacher.model
    assert not any(m.training for m in teacher.modules()), "validation left the teacher in train mode"
