"""End to end on tiny models: train, log every component, checkpoint, resume, export, reload."""

from __future__ import annotations

from pathlib import Path

import re

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from transformers import AutoModelForCausalLM

from distill.build import build_components
from distill import pipeline


from distill.runs import read_metrics


def test_tiny_run_logs_components_checkpoints_resumes_and_exports(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg("loss=progressive", output_dir=run)
    metrics = pipeline.run(cfg)
    rows = read_metrics(run)
    logged = {k for r in rows for k in r}
    for name in ("ce", "kl", "hidden", "attn"):
        assert f"train/{name}" in logged and f"train/w_{name}" in logged
    assert {"train/temperature", "train/loss", "val/loss", "val/agreement", "val/kl", "val/teacher_loss"} <= logged
    # the temperature follows its schedule (Linear 4 -> 1 over max_steps=4)
    temps = [r["train/temperature"] for r in rows if "train/temperature" in r]
    assert temps == [4.0, 3.25, 2.5, 1.75]
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert metrics["val/loss"] > 0

    # resume: same run dir, more steps; training continues from step 4
    with open_dict(cfg):
        cfg.ckpt_path = "last"
        cfg.trainer.max_steps = 6
    pipeline.run(cfg)
    train_rows = [r for r in read_metrics(run) if "train/loss" in r]
    assert len(train_rows) == 6, "the resumed run must run steps 4-5 only, keeping the log of steps 0-3"
    assert [r["step"] for r in train_rows] == [0, 1, 2, 3, 4, 5], "logged steps continue without a gap"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6

    # the exported student reloads with identical logits
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    parts = build_components(cfg).load()
    parts.module.load_state_dict(ckpt["state_dict"])
    # same attention kernel as in training (attention matching switched it to eager), so equal bits
    impl = parts.module.student.config._attn_implementation
    reloaded = AutoModelForCausalLM.from_pretrained(run / "student", attn_implementation=impl)
    ids = torch.randint(0, 2000, (2, 16))
    parts.module.student.eval()
    with torch.no_grad():
        assert torch.equal(parts.module.student(ids).logits, reloaded(ids).logits)
    # trainable extras (the hidden-state projection) are in the checkpoint, the teacher is not
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("loss.components.hidden.projections") for k in keys)
    assert not any("teacher" in k for k in keys)


def test_lora_student_exports_merged_and_reloads(tiny_cfg, tmp_path):
    run = tmp_path / "lora"
    cfg = tiny_cfg("+student.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}",
                   "trainer.max_steps=2", output_dir=run)
    pipeline.run(cfg)
    reloaded = AutoModelForCausalLM.from_pretrained(run / "student")
    assert not any("lora" in n for n, _ in reloaded.named_parameters())


def _accumulation_grads(tiny_cfg, tmp_path, micro: int | None):
    cfg = tiny_cfg("loss=hidden", "+loss.components.ce={_target_: distill.losses.components.CrossEntropy}",
                   "+loss.weights.ce=0.5", "student.dtype=float64", "+teacher.model.dtype=float64",
                   f"module.micro_batch_size={micro if micro else 'null'}", output_dir=tmp_path / f"acc{micro}")
    torch.manual_seed(0)
    parts = build_components(cfg).load()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2000, (8, 12), generator=g)
    attn = torch.ones_like(ids)
    lengths = [12, 3, 9, 5, 12, 1, 7, 11]  # every micro-batch of 2 holds a different token count
    for i, n in enumerate(lengths):
        attn[i, n:] = 0
    labels = ids.masked_fill(attn == 0, -100)
    batch = {"input_ids": ids, "attention_mask": attn, "labels": labels}
    module = parts.module
    module.loss.double()  # the projection is created in fp32; the whole comparison runs in fp64
    loss, _ = module.step_loss(batch, step=0, backward=lambda l: l.backward())
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss, grads


def test_one_step_of_8_equals_4_micro_batches_of_2(tiny_cfg, tmp_path):
    loss_full, g_full = _accumulation_grads(tiny_cfg, tmp_path, None)
    loss_acc, g_acc = _accumulation_grads(tiny_cfg, tmp_path, 2)
    assert abs(loss_full.item() - loss_acc.item()) < 1e-6
    assert g_full.keys() == g_acc.keys() and any("projections" in k for k in g_full)
    for k in g_full:
        assert g_full[k].dtype == torch.float64
        assert torch.allclose(g_full[k], g_acc[k], atol=1e-6, rtol=0), k


def test_custom_component_from_outside_the_package(tiny_cfg):
    cfg = tiny_cfg("+loss.components.margin={_target_: tests.fixtures.my_losses.TopOneMargin, margin: 2.0}",
                   "+loss.weights.margin=0.3", "trainer.max_steps=2")
    metrics = pipeline.run(cfg)
    assert "train/margin" in metrics and "train/w_margin" in metrics
    assert metrics["train/w_margin"] == pytest.approx(0.3)


def test_teacher_is_frozen_and_untouched_by_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_steps=2", "export.enabled=false", output_dir=tmp_path / "frozen")
    parts = build_components(cfg).load()
    teacher = parts.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    import lightning as L

    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, accelerator="cpu")
    trainer.fit(parts.module, datamodule=parts.datamodule)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    trainable = {id(p) for p in parts.module.trainable_parameters()}
    assert not any(id(p) in trainable for p in teacher.parameters())
    assert not any(k.startswith("teacher") or "_teacher" in k for k in parts.module.state_dict())


def test_padded_embedding_sizes_share_the_tokenizer_ids(tiny_cfg):
    # Same tokenizer, teacher embedding padded to 2176 rows (like Qwen2.5 7B vs 0.5B): logits line
    # up on the tokenizer's 2048 ids and the KL is computed over those.
    cfg = tiny_cfg("teacher.model.config.vocab_size=2176", "trainer.max_steps=2")
    parts = build_components(cfg).load()
    assert parts.module.vocab_size == len(parts.tokenizer) == 2048
    batch = next(iter(parts.datamodule.train_dataloader())) if parts.datamodule.train_set else None
    if batch is None:
        parts.datamodule.setup("fit")
        batch = next(iter(parts.datamodule.train_dataloader()))
    t = parts.module.teacher_forward(batch, frozenset({"teacher_logits"}))
    assert t.logits.shape[-1] == 2048
    metrics = pipeline.run(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/kl"]))


def test_lora_adapter_export_reloads_with_peft(tiny_cfg, tmp_path):
    import lightning as L
    from peft import PeftModel

    run = tmp_path / "adapter"
    cfg = tiny_cfg("+student.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}",
                   "trainer.max_steps=2", "export.merge_lora=false", output_dir=run)
    pipeline.run(cfg)
    assert (run / "student" / "adapter_config.json").exists()
    assert not (run / "student" / "model.safetensors").exists()
    # Rebuild the trained module from its checkpoint, and separately the frozen base exactly as
    # pipeline.run() initialised it (same seed, LoRA off), then put the exported adapter on that base.
    L.seed_everything(cfg.seed)  # the checkpoint holds no base: rebuild the run's random one
    parts = build_components(cfg).load()
    # the checkpoint holds the adapters only (TrainableOnlyCheckpoint); the frozen base is rebuilt
    result = parts.module.load_state_dict(torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"],
                                          strict=False)
    from distill.checkpointing import frozen_keys

    frozen = set(frozen_keys(parts.module))
    assert not result.unexpected_keys and result.missing_keys and set(result.missing_keys) <= frozen
    with open_dict(cfg):
        cfg.student.lora = None
    L.seed_everything(cfg.seed)
    base = build_components(cfg).load().module.student
    reloaded = PeftModel.from_pretrained(base, run / "student")
    ids = torch.randint(0, 2000, (2, 12))
    parts.module.student.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(parts.module.student(ids).logits, reloaded(ids).logits, atol=1e-6)


@pytest.mark.parametrize("loss", ["kd_chunked", "kd_fused"])
def test_chunked_and_fused_losses_train_end_to_end(tiny_cfg, loss):
    metrics = pipeline.run(tiny_cfg(f"loss={loss}", "trainer.max_steps=2"))
    assert torch.isfinite(torch.tensor(metrics["train/kl"])) and metrics["train/kl"] > 0


def test_epoch_based_run_sizes_the_lr_schedule(tiny_cfg, capsys):
    cfg = tiny_cfg("trainer.max_steps=-1", "trainer.max_epochs=1", "data.source.max_chars=3000",
                   "data.batch_size=2", "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=1",
                   "+module.scheduler.warmup_ratio=0.1", "summary.enabled=true", "summary.baseline=false")
    metrics = pipeline.run(cfg)
    assert "val/loss" in metrics
    # the summary names the steps taken (one epoch of batches), not trainer.max_steps (-1)
    out = capsys.readouterr().out
    taken = re.search(r"=== distill summary \((-?\d+) steps\) ===", out)
    assert taken and int(taken.group(1)) > 1, out[out.find("==="):][:200]


@pytest.mark.parametrize("first, more", [
    (["trainer.max_steps=10"], {"max_steps": 14}),                      # stopped mid-epoch, no validation
    (["trainer.max_steps=31"], {"max_steps": 35}),                      # stopped on the epoch's last batch
    (["trainer.max_steps=-1", "trainer.max_epochs=1"], {"max_epochs": 2}),  # stopped at the end of an epoch
], ids=["mid-epoch", "last-batch", "epoch-end"])
def test_resumed_runs_log_consecutive_steps(tiny_cfg, tmp_path, first, more):
    # 3,000 characters at batch 2 make 31 batches per epoch (with the stdlib-trained tokenizer: one
    # trained on these 3,000 characters alone would cut them differently); validation only at epoch ends.
    run = tmp_path / "run"
    cfg = tiny_cfg("data.source.max_chars=3000", "data.batch_size=2", "student.tokenizer_build.corpus=stdlib", "trainer.val_check_interval=null",
                   "trainer.check_val_every_n_epoch=1", "export.enabled=false", *first, output_dir=run)
    pipeline.run(cfg)
    with open_dict(cfg):
        cfg.ckpt_path = "last"
        cfg.trainer.update(more)
    pipeline.run(cfg)
    steps = [int(r["step"]) for r in read_metrics(run) if "train/loss" in r]
    assert steps == list(range(len(steps))) and len(steps) in (14, 35, 62)


def test_weight_zero_terms_are_computed_only_on_recorded_steps(tiny_cfg, tmp_path, monkeypatch):
    # loss=kd logs CE at weight 0; with log_every_n_steps=2 only steps 2 and 4 of 4 are written.
    from distill.losses.components import CrossEntropy

    calls = []
    forward = CrossEntropy.forward
    monkeypatch.setattr(CrossEntropy, "forward", lambda self, inputs: calls.append(1) or forward(self, inputs))
    run = tmp_path / "run"
    pipeline.run(tiny_cfg("loss=kd", "trainer.log_every_n_steps=2", "export.enabled=false", output_dir=run))
    rows = [r for r in read_metrics(run) if "train/loss" in r]
    assert [int(r["step"]) for r in rows] == [1, 3]
    assert all("train/ce" in r and r["train/ce"] > 0 and r["train/w_ce"] == 0.0 for r in rows)
    assert len(calls) == 2
