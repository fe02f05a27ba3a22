"""Build the embedded default's teacher by pretraining a small LM on the run's training data.

There is no model hub on a fresh CPU machine, so the default run makes its own teacher once and
caches it as a normal Hugging Face folder; every later run loads it with ``from_pretrained``.
The loop is plain PyTorch (no Lightning) because it is setup, not an experiment: a progress bar,
periodic resumable checkpoints (a crash or Ctrl-C loses at most ``save_every`` steps), and an
atomic rename at the end so a half-trained teacher is never mistaken for a finished one.

The folder is keyed by everything that determines the teacher (:func:`pretrain_key`: the tokenized
training and held-out data, the tokenizer, the model config, the recipe and its seed), so a run
on other data can never load a teacher trained for the default corpus, or the reverse.

Small corpora overfit a fixed step budget. The loop measures held-out loss every ``eval_every``
steps, keeps the best weights (early stopping), reports the epochs it ran, and warns when held-out
loss rose.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.data.tokenizer import tokenizer_fingerprint
from distill.losses.functional import cross_entropy, next_token_targets
from distill.models import ModelSpec
from distill.optim import warmup_cosine_value

log = logging.getLogger(__name__)

#: Settings of :func:`pretrain_teacher` that are not part of the recipe (where and how often to save).
_NOT_RECIPE = ("dir", "name", "save_every", "threads")


def examples_sha256(examples) -> str:
    """Hash of a split's token ids (and loss labels): two splits hash equal iff they train alike."""
    h = hashlib.sha256()
    for e in examples:
        h.update(np.asarray(e["input_ids"], dtype=np.int64).tobytes())
        h.update(np.asarray(e["labels"], dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def pretrain_key(spec: ModelSpec, datamodule, settings: dict) -> str:
    """Everything that determines a pretrained teacher, hashed: the tokenized train and held-out
    splits, the tokenizer, the model config and the recipe (steps, lr, batch, seed, evaluation)."""
    parts = {"train": examples_sha256(datamodule.examples("train")), "val": examples_sha256(datamodule.examples("val")),
             "tokenizer": tokenizer_fingerprint(datamodule.tokenizer)["vocab_sha256"],
             "model": spec.config_kwargs, "dtype": spec.dtype,
             "recipe": {k: v for k, v in sorted(settings.items()) if k not in _NOT_RECIPE}}
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, loader, max_batches: int | None = None) -> float:
    """Mean next-token cross-entropy over a loader's unmasked tokens."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = next_token_targets(batch["labels"])
        ce = cross_entropy(logits, targets)
        mask = targets != -100
        total += ce[mask].sum().item()
        count += int(mask.sum())
    model.train(was_training)
    return total / max(count, 1)


def pretrain_teacher(spec: ModelSpec, datamodule, steps: int = 1000, lr: float = 3e-3, warmup: int = 50,
                     weight_decay: float = 0.1, batch_size: int | None = None, save_every: int = 200,
                     seed: int = 0, threads: int | None = None, eval_every: int = 200) -> Path:
    """Train ``spec`` from its config on ``datamodule``'s train split; save to ``spec.name_or_path``.

    Args:
        spec: the teacher's :class:`ModelSpec` (``config`` set; ``name_or_path`` = where to save).
        datamodule: a connected :class:`DistillDataModule`.
        steps / lr / warmup / weight_decay: AdamW with linear warmup and cosine decay to 10%.
        batch_size: examples per step (defaults to the datamodule's).
        save_every: steps between resumable checkpoints in ``<name_or_path>.partial``.
        eval_every: steps between held-out evaluations (and at the last step); the best weights
            are kept. 0 = evaluate at the end only.
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
            return _pretrain(spec, datamodule, steps, lr, warmup, weight_decay, batch_size, save_every, seed,
                             eval_every)
        finally:
            torch.set_num_threads(threads_before)


def _pretrain(spec: ModelSpec, datamodule, steps: int, lr: float, warmup: int, weight_decay: float,
              batch_size: int | None, save_every: int, seed: int, eval_every: int) -> Path:
    out = Path(spec.name_or_path)
    partial = out.with_name(out.name + ".partial")
    datamodule.setup("fit")
    torch.manual_seed(seed)
    model = spec.build()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    start = 0
    history: list[tuple[int, float]] = []  # (step, held-out loss)
    best: tuple[float, int, dict] | None = None  # (loss, step, state_dict)
    if (partial / "state.pt").exists():
        state = torch.load(partial / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        torch.set_rng_state(state["rng"])
        history = [tuple(h) for h in state.get("history", [])]
        best = state.get("best")
        log.info("teacher pretraining: resuming from step %d (%s)", start, partial)

    bs = batch_size or datamodule.batch_size
    data = datamodule.train_set
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(data), generator=gen) for _ in range(steps * bs // len(data) + 1)])
    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="pretraining the default teacher",
               unit="step", dynamic_ncols=True)
    for step in bar:
        batch = datamodule.collate([data[int(i)] for i in order[step * bs:(step + 1) * bs]])
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_value(step, lr, steps, warmup)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = next_token_targets(batch["labels"])
        mask = targets != -100
        loss = torch.where(mask, cross_entropy(logits, targets), 0.0).sum() / mask.sum().clamp_min(1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done == steps or eval_every and done % eval_every == 0:
            val = heldout_loss(model, datamodule.val_dataloader())
            history.append((done, val))
            if best is None or val < best[0]:
                best = (val, done, copy.deepcopy(model.state_dict()) if done < steps else None)
            bar.set_postfix(loss=f"{loss.item():.3f}", heldout=f"{val:.3f}")
        if save_every and done % save_every == 0 and done < steps:
            partial.mkdir(parents=True, exist_ok=True)
            tmp = partial / "state.pt.tmp"
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                        "rng": torch.get_rng_state(), "history": history, "best": best}, tmp)
            tmp.replace(partial / "state.pt")
    bar.close()
    best_loss, best_step, best_state = best
    if best_state is not None:  # an earlier evaluation beat the last one: keep those weights
        model.load_state_dict(best_state)
    epochs = steps * bs / len(data)
    final = history[-1][1]
    if best_step < steps:
        log.warning("teacher pretraining: held-out loss rose from %.3f at step %d to %.3f at step %d (%.1f epochs "
                    "over %d examples: the corpus is small for this recipe). Keeping the step-%d weights; "
                    "fewer teacher.pretrain.steps or more data would help.", best_loss, best_step, final, steps,
                    epochs, len(data), best_step)
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    model.save_pretrained(tmp_out)
    datamodule.tokenizer.save_pretrained(tmp_out)
    (tmp_out / "distill_pretrain.json").write_text(json.dumps(
        {"steps": steps, "kept_step": best_step, "epochs": epochs, "lr": lr, "batch_size": bs,
         "heldout_loss": best_loss, "heldout_history": history, "seconds": time.time() - t0}, indent=2))
    tmp_out.replace(out)
    shutil.rmtree(partial, ignore_errors=True)
    log.info("default teacher: held-out loss %.3f (step %d of %d, %.2f epochs, %.0f s) -> %s", best_loss, best_step,
             steps, epochs, time.time() - t0, out)
    return out
