"""Build the embedded default's teacher by pretraining a small LM on the run's training data.

There is no model hub on a fresh CPU machine, so the default run makes its own teacher once and
caches it as a normal Hugging Face folder; every later run loads it with ``from_pretrained``.
The loop is plain PyTorch (no Lightning) because it is setup, not an experiment: a progress bar,
periodic resumable checkpoints (a crash or Ctrl-C loses at most ``save_every`` steps), and an
atomic rename at the end so a half-trained teacher is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from distill.losses.functional import cross_entropy
from distill.models import ModelSpec

log = logging.getLogger(__name__)


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, loader, max_batches: int | None = None) -> float:
    """Mean next-token cross-entropy over a loader's unmasked tokens."""
    model.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
        ce = cross_entropy(logits, targets)
        mask = targets != -100
        total += ce[mask].sum().item()
        count += int(mask.sum())
    model.train()
    return total / max(count, 1)


def pretrain_teacher(spec: ModelSpec, datamodule, steps: int = 1000, lr: float = 3e-3, warmup: int = 50,
                     weight_decay: float = 0.1, batch_size: int | None = None, save_every: int = 200,
                     seed: int = 0, threads: int | None = None) -> Path:
    """Train ``spec`` from its config on ``datamodule``'s train split; save to ``spec.name_or_path``.

    Args:
        spec: the teacher's :class:`ModelSpec` (``config`` set; ``name_or_path`` = where to save).
        datamodule: a connected :class:`DistillDataModule`.
        steps / lr / warmup / weight_decay: AdamW with linear warmup and cosine decay to 10%.
        batch_size: examples per step (defaults to the datamodule's).
        save_every: steps between resumable checkpoints in ``<name_or_path>.partial``.
        seed: seeds the initialisation and data order; the caller's RNG state is left as it was.
        threads: intra-op threads while pretraining (restored afterwards).
    """
    # The run builds its student after this returns: fork the RNG so that the student's
    # initialisation and data order are the same whether or not the teacher was just trained
    # (otherwise a first run and a later run of the same command differ).
    threads_before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            if threads:
                torch.set_num_threads(threads)
            return _pretrain(spec, datamodule, steps, lr, warmup, weight_decay, batch_size, save_every, seed)
        finally:
            torch.set_num_threads(threads_before)


def _pretrain(spec: ModelSpec, datamodule, steps: int, lr: float, warmup: int, weight_decay: float,
              batch_size: int | None, save_every: int, seed: int) -> Path:
    out = Path(spec.name_or_path)
    partial = out.with_name(out.name + ".partial")
    datamodule.setup("fit")
    torch.manual_seed(seed)
    model = spec.build()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    start = 0
    if (partial / "state.pt").exists():
        state = torch.load(partial / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        torch.set_rng_state(state["rng"])
        log.info("teacher pretraining: resuming from step %d (%s)", start, partial)

    bs = batch_size or datamodule.batch_size
    data = datamodule.train_set
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(data), generator=gen) for _ in range(steps * bs // len(data) + 1)])
    collate = datamodule._collate
    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="pretraining the default teacher",
               unit="step", dynamic_ncols=True)
    for step in bar:
        batch = collate([data[int(i)] for i in order[step * bs:(step + 1) * bs]])
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
        mask = targets != -100
        loss = torch.where(mask, cross_entropy(logits, targets), 0.0).sum() / mask.sum().clamp_min(1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            partial.mkdir(parents=True, exist_ok=True)
            tmp = partial / "state.pt.tmp"
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                        "rng": torch.get_rng_state()}, tmp)
            tmp.replace(partial / "state.pt")
    bar.close()
    val = heldout_loss(model, datamodule.val_dataloader())
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    model.save_pretrained(tmp_out)
    datamodule.tokenizer.save_pretrained(tmp_out)
    (tmp_out / "distill_pretrain.json").write_text(json.dumps(
        {"steps": steps, "lr": lr, "batch_size": bs, "heldout_loss": val, "seconds": time.time() - t0}, indent=2))
    tmp_out.replace(out)
    shutil.rmtree(partial, ignore_errors=True)
    log.info("default teacher: held-out loss %.3f after %d steps (%.0f s) -> %s", val, steps, time.time() - t0, out)
    return out
