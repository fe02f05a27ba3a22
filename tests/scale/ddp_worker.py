"""Child process of the DDP tests: one Lightning run on ``devices`` CPU ranks (gloo).

    python tests/scale/ddp_worker.py step OUT DEVICES      # one optimizer step + validation, dumped per rank
    python tests/scale/ddp_worker.py pipeline OUT DEVICES  # distill-train's pipeline, recording who writes
    python tests/scale/ddp_worker.py fsdp2 OUT DEVICES     # the step under ModelParallelStrategy + fully_shard

Lightning's DDP launcher re-runs this same command line for the other ranks (LOCAL_RANK set), so
everything here is a function of argv. Each rank writes ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from distill.data.datamodule import DistillDataModule  # noqa: E402

SEQ = 24
STEP = ["debug=tiny", "module.micro_batch_size=2", "module.grad_clip=null", "logger=none", "callbacks=none",
        "export.enabled=false"]


class VariableLengths:
    """Examples of very different lengths, so ranks and micro-batches hold unequal token counts."""

    def examples(self, split: str, tokenizer, max_length: int) -> list[dict]:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        # 7 held-out examples: not divisible by 2 ranks, so one rank's shard is padded
        n = 16 if split == "train" else 7
        out = []
        for i in range(n):
            length = int(torch.randint(3, max_length + 1, (1,), generator=g))
            ids = torch.randint(5, 2000, (length,), generator=g).tolist()
            out.append({"input_ids": ids, "labels": ids})
        return out


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def sharded_module(base):
    """The training module with its student sharded by FSDP2 in ``configure_model``, over
    ``self.device_mesh``, as ModelParallelStrategy expects (the lines the module itself needs)."""
    from distill.sharding import fully_shard_student

    class Sharded(type(base)):
        def configure_model(self):
            super().configure_model()
            if not getattr(self.student, "_sharded", False):
                fully_shard_student(self.student, self.device_mesh["data_parallel"])
                self.student._sharded = True

    base.__class__ = Sharded
    return base


class Capture(L.Callback):
    """Records the batch, the loss and every gradient of the first optimizer step, and val batches."""

    def __init__(self):
        self.record: dict = {"val_batches": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.record["batch"] = {k: v.clone() for k, v in batch.items()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if "grads" not in self.record:
            # sharded (FSDP2) gradients are DTensors: gather the whole tensor (every rank calls this)
            self.record["grads"] = {n: _full(p.grad).detach().clone() for n, p in pl_module.named_parameters()
                                    if p.requires_grad and p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if "loss" not in self.record:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.record["loss"] = float(loss)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.record["val_batches"].append({k: v.clone() for k, v in batch.items()})


def step(out: Path, devices: int, fsdp2: bool = False) -> None:
    from distill.build import build_components
    from tests.scale.helpers import compose

    cfg = compose(STEP, out / "run")
    L.seed_everything(0, workers=True)
    parts = build_components(cfg)
    dm = DistillDataModule(VariableLengths(), seq_len=SEQ, batch_size=4, val_batch_size=2, max_val_examples=None)
    dm.connect(parts.tokenizer)
    module = parts.module
    module.configure_model()  # same seed on every rank: the same student and teacher everywhere
    init = {k: v.clone() for k, v in module.state_dict().items()}
    teacher = {k: v.clone() for k, v in module.teacher.model.state_dict().items()}
    capture = Capture()
    strategy = "ddp" if devices > 1 else "auto"
    if fsdp2:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1,
                                         save_distributed_checkpoint=False)
        module = sharded_module(module)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy,
                        max_steps=1, val_check_interval=1, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[capture])
    trainer.fit(module, datamodule=dm)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    extra = {}
    if fsdp2:
        trainer.save_checkpoint(out / "fsdp2.ckpt")  # one consolidated file (save_distributed_checkpoint=False)
        opt = trainer.optimizers[0]
        extra = {"after": {k: _full(v).detach().clone() for k, v in module.state_dict().items()},
                 "sharded": sorted(n for n, p in module.named_parameters() if hasattr(p, "full_tensor")),
                 "local_optimizer_numel": sum(p.numel() if not hasattr(p, "to_local") else p.to_local().numel()
                                              for g in opt.param_groups for p in g["params"]),
                 "teacher_plain": all(not hasattr(p, "full_tensor") for p in module.teacher.model.parameters()),
                 "teacher_numel": sum(p.numel() for p in module.teacher.model.parameters())}
    torch.save({**capture.record, **extra, "val": val, "init": init, "teacher": teacher, "world": trainer.world_size},
               out / f"rank{trainer.global_rank}.pt")


def pipeline(out: Path, devices: int) -> None:
    """distill-train's steps after fit, each replaced by a recorder of the rank that called it."""
    import distill.pipeline as P
    from tests.scale.helpers import compose

    rank = int(os.environ.get("LOCAL_RANK", 0))  # set by Lightning for the re-launched ranks

    def recorder(name, real=None):
        def record(*args, **kwargs):
            (out / f"{name}.rank{rank}").write_text("called")
            return real(*args, **kwargs) if real is not None else None
        return record

    # the writers run for real (and are recorded); the CE baseline (a second training run) is only recorded
    for name in ("export_student", "record_models", "write_summary", "write_model_card"):
        if hasattr(P, name):
            setattr(P, name, recorder(name, getattr(P, name)))
    P.run_baseline = recorder("run_baseline")
    cfg = compose(["debug=tiny", "+trainer.strategy=ddp", f"trainer.devices={devices}", "trainer.max_steps=2",
                   "data.source.max_chars=12000", "data.max_val_examples=4", "summary.enabled=true",
                   "summary.baseline=true", "logger=csv"], out / "run")
    metrics = P.run(cfg)
    (out / f"metrics.rank{rank}.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    mode, out, devices = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    if mode == "fsdp2":
        step(out, devices, fsdp2=True)
    else:
        {"step": step, "pipeline": pipeline}[mode](out, devices)
