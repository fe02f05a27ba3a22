"""Shared helpers of the throughput and sweep-cost benchmarks: configs, models, data, timing."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def compose(config_name: str, overrides: list[str], output_dir: Path):
    """The config the CLI would build (Hydra compose API), writing into ``output_dir``."""
    from distill.config import compose_config

    return compose_config(config_name, overrides, output_dir, root_dir=REPO)


def machine() -> str:
    """One line: CPU model, cores, threads, load, library versions (the context of the timings)."""
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lightning
    import transformers

    try:
        import trl
        trl_v = trl.__version__
    except ImportError:
        trl_v = "not installed"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {gpu}; load avg "
            f"{load:.1f}; torch {torch.__version__}, lightning {lightning.__version__}, transformers "
            f"{transformers.__version__}, trl {trl_v}")


class StepClock:
    """Timestamps at the end of each optimizer step; durations are the gaps between them, so data
    loading, hooks, logging and the optimizer step all count, as they do for a user.

    Two clocks: ``wall`` (``perf_counter``) and ``cpu`` (``process_time``: CPU seconds of every
    thread of this process). On a machine shared with other jobs the wall clock measures them as
    much as us; the CPU clock barely moves with their load.
    """

    def __init__(self):
        self.stamps: dict[str, list[float]] = {"wall": [], "cpu": [], "faults": []}

    def tick(self) -> None:
        self.stamps["wall"].append(time.perf_counter())
        self.stamps["cpu"].append(time.process_time())
        # minor page faults: memory the allocator handed back to the OS and takes again
        self.stamps["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    def durations(self, skip: int, clock: str = "wall") -> list[float]:
        """Step times after the first ``skip`` steps (warm-up: allocator, caches, lazy inits)."""
        st = self.stamps[clock]
        d = [b - a for a, b in zip(st, st[1:])]
        return d[max(0, skip - 1):]


def fit_timed(cfg, clock: StepClock, on_step=None, callbacks=()):
    """Fit ``cfg``'s run (seeded, weights loaded, no logger or checkpoints) with ``clock`` ticking at
    the start of training and after every optimizer step; ``on_step(trainer)`` runs after each tick;
    ``callbacks``: more Lightning callbacks for the trainer. Returns the built components."""
    import lightning as L

    from distill.build import build_components
    from distill.config import instantiate
    from distill.host_memory import keep_freed_memory

    class Tick(L.Callback):
        def on_train_start(self, trainer, pl_module):
            clock.tick()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.tick()
            if on_step is not None:
                on_step(trainer)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("keep_freed_memory", True):  # as distill.train.fit does (process-wide from here on)
        keep_freed_memory()
    parts = build_components(cfg).load()
    trainer = instantiate(cfg.trainer, "trainer", callbacks=[Tick(), *callbacks], logger=False,
                          enable_checkpointing=False)
    trainer.fit(parts.module, datamodule=parts.datamodule)
    return parts


def trl_tick(clock: StepClock):
    """A ``transformers.TrainerCallback`` ticking ``clock`` where :func:`fit_timed` ticks it."""
    from transformers import TrainerCallback

    class Tick(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.tick()

        def on_step_end(self, args, state, control, **kw):
            clock.tick()

    return Tick()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def proc_status(field: str) -> int:
    """A size field of ``/proc/self/status`` in bytes (``VmRSS``: resident now, ``VmHWM``: its peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def hand_loop(student, teacher, loader, total: int, clock: StepClock, lr: float, wd: float, betas, warmup: int,
              clip: float) -> None:
    """The hand-written PyTorch KD loop every throughput benchmark compares against: student
    forward, teacher forward under no_grad, ``F.kl_div`` over log-softmaxes (forward KL, T = 1,
    mean over target tokens), backward, clip, AdamW step, warmup + cosine; no logging.
    ``loader()`` gives a fresh epoch's batches."""
    import torch.nn.functional as F

    from distill.optim import warmup_cosine

    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=wd, betas=betas)
    sched = warmup_cosine(opt, total, warmup)
    step = 0
    clock.tick()
    while step < total:
        for batch in loader():
            targets = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
            mask = targets != -100
            # use_cache=False: training needs no KV cache (distill and TRL's trainer do not build one)
            s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            with torch.no_grad():
                t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            use_cache=False).logits
            kl = F.kl_div(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1), reduction="none",
                          log_target=True).sum(-1)
            loss = kl[mask].sum() / mask.sum().clamp_min(1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            clock.tick()
            step += 1
            if step >= total:
                break
