"""Training-step throughput: distill vs TRL's GKDTrainer (off-policy) vs a hand-written loop.

    DISTILL_CACHE=/tmp/dcache python experiments/benchmarks/throughput.py            # ~10 min on 2 busy cores
    python experiments/benchmarks/throughput.py --steps 4 --rounds 1 --warmup 2      # a quick look

Everything is the embedded default's step: the default student (2-layer, 96-wide Llama) and
teacher (4-layer, 256-wide Llama; the pretrained one under ``$DISTILL_CACHE`` when present, else
the same architecture with random weights: throughput does not depend on the weights), the same
packed stdlib examples (16 x 128 tokens per step, no padding), forward KL at T = 1 over the full
vocabulary, AdamW (lr 3e-3, wd 0.1, betas 0.9/0.95), gradient clipping at 1.0, warmup + cosine
LR, float32, the same number of torch threads. Methods:

* ``minimal``: a hand-written PyTorch loop (DataLoader, student forward, teacher forward under
  no_grad, ``F.kl_div`` over log-softmaxes, backward, clip, step, schedule), no logging;
* ``distill``: ``distill-train``'s real path (``build_components`` + a Lightning ``Trainer`` from
  ``conf/trainer``; progress bar and per-step metric logging on, file loggers, checkpoints and
  validation off);
* ``distill fused``: the same with ``loss=kd_fused`` (student logits never materialised);
* ``distill cached``: the same with ``teacher=cached`` (top-64 cache of the examples the run reads,
  written once before timing; ``loss=kd_chunked``): no teacher forward at all;
* ``trl``: ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0`` (never generates: off-policy),
  ``seq_kd=False``, ``beta=0`` (forward KL), the same collate, optimizer and schedule settings,
  and ``bf16=False`` (TRL's configs default to bf16 autocast, which would compare another precision).

The methods run interleaved for ``--rounds`` rounds (noise from other load on a shared machine
hits them alike), each round ``--warmup`` untimed steps then ``--steps`` timed ones; step time is
the gap between consecutive optimizer-step ends (data loading, hooks and logging included),
by default in **CPU seconds of the process** (``--clock cpu``, with one torch thread): other jobs
on a shared machine stretch the wall clock by up to 10x between rounds but barely move the CPU
time, so tokens per CPU-second is the stable throughput figure there (``--clock wall --threads 2``
on a quiet or dedicated machine). The table reports the median over all steps, and compares
methods by the median over rounds of their within-round step-time ratios. Checks: distill >=
TRL, and distill's overhead over the hand-written loop <= 5%; a missed target is printed as MISS
with the measured figures.

Allocator: ``distill-train`` keeps the memory a step frees in the process (``keep_freed_memory``,
``distill/host_memory.py``); without it glibc hands the step's freed logits back to the OS and the
next step page-faults them in again. The setting is process-wide, so ``--allocator keep`` (the
default) sets it once before every method, the loop and TRL included; ``--allocator default``
leaves glibc's trimming on for all of them. The ``faults`` column counts minor page faults per step.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch

from common import REPO, StepClock, compose, fit_timed, hand_loop, machine, median, trl_tick  # noqa: E402  (sets sys.path)

LR, WD, BETAS, WARMUP, CLIP = 3e-3, 0.1, (0.9, 0.95), 30, 1.0


# ----------------------------------------------------------------------------- shared setup
class Setup:
    """Config, tokenizer, examples, teacher path: built once, shared by every method."""

    def __init__(self, batch_size: int, seq_len: int, seed: int, out: Path, extra: list[str] = ()):
        from distill.build import build_checked

        self.out, self.seed, self.batch_size = out, seed, batch_size
        self.overrides = [f"seed={seed}", f"data.batch_size={batch_size}", f"data.seq_len={seq_len}",
                          "logger=none", "callbacks=none", "summary.enabled=false", "export.enabled=false",
                          "trainer.limit_val_batches=0", "trainer.enable_model_summary=false", *extra]
        cfg = compose("train", self.overrides, out / "probe")
        checked = build_checked(cfg)
        self.tokenizer = checked.tokenizer
        self.student_spec, self.teacher_spec = checked.student, checked.teacher.spec
        dm = checked.datamodule
        folder = checked.teacher.pretrained_folder(dm)
        if folder is not None and folder.exists():
            self.teacher_spec.name_or_path = str(folder)  # the distill methods' own prepare() finds it too
            self.teacher_source = f"pretrained default teacher ({folder})"
        else:
            # Throughput does not depend on the weights: time the same architecture, randomly
            # initialised, rather than pretrain for minutes first (see compose_for).
            self.teacher_source = (f"random teacher of the same shape (no pretrained default teacher at {folder}; "
                                   "run distill-train once to pretrain it)")
            logging.warning("timing a %s", self.teacher_source)
        self.random_teacher = not (folder is not None and folder.exists())
        dm.setup("fit")
        self.examples = dm.train_set.examples
        self.pad_id = self.tokenizer.pad_token_id
        self.tokens_per_step = batch_size * seq_len

    def compose_for(self, config: str, overrides: list[str], out: Path):
        """``compose`` plus, without a pretrained teacher, ``teacher.pretrain=null`` in the configs
        whose teacher has that key: an override would fail on a teacher preset that lacks it
        (``teacher=cached``, the cache writer's), so it is set on the composed config instead."""
        cfg = compose(config, overrides, out)
        if self.random_teacher and "teacher" in cfg and "pretrain" in cfg.teacher:
            cfg.teacher.pretrain = None
        return cfg

    def student(self) -> torch.nn.Module:
        torch.manual_seed(self.seed)
        return self.student_spec.build().train()

    def teacher(self) -> torch.nn.Module:
        return self.teacher_spec.build().eval().requires_grad_(False)

    def loader(self):
        from torch.utils.data import DataLoader

        from distill.data.datamodule import ExampleDataset, collate

        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(ExampleDataset(self.examples), batch_size=self.batch_size, shuffle=True, drop_last=True,
                          generator=g, collate_fn=partial(collate, pad_id=self.pad_id))


# ----------------------------------------------------------------------------- methods
def run_minimal(setup: Setup, total: int, clock: StepClock) -> None:
    hand_loop(setup.student(), setup.teacher(), setup.loader, total, clock, LR, WD, BETAS, WARMUP, CLIP)


def run_distill(setup: Setup, total: int, clock: StepClock, extra: list[str] | None = None) -> None:
    cfg = setup.compose_for("train", [*setup.overrides, f"trainer.max_steps={total}", *(extra or [])],
                            setup.out / "distill")
    fit_timed(cfg, clock)


def run_trl(setup: Setup, total: int, clock: StepClock) -> None:
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from datasets import Dataset

    from distill.data.datamodule import collate

    args = GKDConfig(
        output_dir=str(setup.out / "trl"), per_device_train_batch_size=setup.batch_size, max_steps=total,
        learning_rate=LR, weight_decay=WD, adam_beta1=BETAS[0], adam_beta2=BETAS[1], lr_scheduler_type="cosine",
        warmup_steps=WARMUP, max_grad_norm=CLIP, optim="adamw_torch", logging_steps=10, save_strategy="no",
        report_to="none", use_cpu=True, dataloader_num_workers=0, seed=setup.seed, lmbda=0.0, beta=0.0,
        seq_kd=False, temperature=1.0, max_length=setup.tokens_per_step // setup.batch_size,
        bf16=False, fp16=False,  # TRL's configs default to bf16 autocast: compare at the same fp32 precision
        # TRL's configs also default to gradient checkpointing, which recomputes activations: the
        # distill and hand-written steps keep them, so a fair comparison turns it off (the figures
        # recorded before 2026-12-06 did not, and favoured distill)
        gradient_checkpointing=False,
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GKDTrainer(model=setup.student(), teacher_model=setup.teacher(), args=args,
                             train_dataset=Dataset.from_list(setup.examples),
                             data_collator=partial(collate, pad_id=setup.pad_id), processing_class=setup.tokenizer,
                             callbacks=[trl_tick(clock)])
    trainer.train()


def write_cache(setup: Setup, total: int) -> Path:
    """A top-64 cache of the examples ``total`` steps read (train split only), for ``distill cached``."""
    from distill.teachers.cache.cli import cache_logits

    path = setup.out / "cache" / "tiny_stdlib-topk-k64"
    cfg = setup.compose_for("cache_logits", [*[o for o in setup.overrides if o.startswith(("seed=", "data.", "teacher."))],
                                   f"cache.max_steps={total}", "cache.splits=[train]", f"cache.dir={path}",
                                   "cache.progress=false"], setup.out / "cache_run")
    cache_logits(cfg)
    return path


def loss_costs(setup: Setup, repeats: int = 7) -> dict[str, float]:
    """Forward+backward time of the loss alone on one step's logits: where distill's step differs
    from the hand-written loop's (``F.kl_div``) beyond the framework around it."""
    import torch.nn.functional as F

    from distill.losses.combine import DistillationLoss
    from distill.losses.components import CrossEntropy, ForwardKL
    from distill.types import StudentOutput, TeacherOutput

    g = torch.Generator().manual_seed(0)
    b, v = setup.batch_size, len(setup.tokenizer)
    n = setup.tokens_per_step // b
    s0, t = torch.randn(b, n, v, generator=g), torch.randn(b, n, v, generator=g)
    y = torch.randint(0, v, (b, n), generator=g)
    kd = DistillationLoss({"kl": ForwardKL(), "ce": CrossEntropy()}, {"kl": 1.0, "ce": 0.0})  # = conf/loss/kd.yaml
    kl_only = DistillationLoss({"kl": ForwardKL()}, {"kl": 1.0})

    def loop(s):
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="none", log_target=True).sum(-1)
        kl.mean().backward()

    cases = {"F.kl_div (hand-written loop)": loop,
             "distill ForwardKL": lambda s: kl_only(StudentOutput(logits=s), TeacherOutput(logits=t), y, 0)[0].backward(),
             "distill loss=kd (ForwardKL + CE at weight 0)":
                 lambda s: kd(StudentOutput(logits=s), TeacherOutput(logits=t), y, 0)[0].backward()}
    out = {}
    for name, fn in cases.items():
        ts = []
        for _ in range(repeats):
            s = s0.clone().requires_grad_()
            t0 = time.process_time()
            fn(s)
            ts.append(time.process_time() - t0)
        out[name] = median(ts[1:])
    return out


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per method and round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (methods alternate)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: CPU time is then work, not spin-waiting for a descheduled thread)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="compare by CPU time of the process (robust to other jobs' load) or wall time")
    ap.add_argument("--methods", nargs="+", default=["minimal", "distill", "distill_fused", "distill_cached", "trl"])
    ap.add_argument("--allocator", choices=["keep", "default"], default="keep",
                    help="keep: glibc keeps freed memory (distill-train's keep_freed_memory, set once for every "
                         "method, the loop and TRL included); default: glibc's own trimming, for all methods")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import lightning  # noqa: F401  (it sets its loggers' levels on import: quiet them after)
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric",
                 "distill", "transformers", "trl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator == "keep":
        from distill.host_memory import keep_freed_memory

        args.allocator = "keep (applied)" if keep_freed_memory() else "keep (not glibc: nothing set)"
    out = Path(tempfile.mkdtemp(prefix="distill-throughput-"))
    try:
        setup = Setup(args.batch_size, args.seq_len, args.seed, out,
                      extra=["keep_freed_memory=false"] if args.allocator == "default" else [])
        total = args.warmup + args.steps
        methods = {"minimal": partial(run_minimal, setup), "distill": partial(run_distill, setup),
                   "distill_fused": partial(run_distill, setup, extra=["loss=kd_fused"]),
                   "trl": partial(run_trl, setup)}
        if "distill_cached" in args.methods:
            cache = write_cache(setup, total)
            methods["distill_cached"] = partial(run_distill, setup, extra=[
                "experiment=stdlib_cached", f"teacher.path={cache}"])
        times: dict[str, list[float]] = {m: [] for m in args.methods}
        walls: dict[str, list[float]] = {m: [] for m in args.methods}
        faults: dict[str, list[float]] = {m: [] for m in args.methods}
        per_round: list[dict[str, float]] = []
        start_load = os.getloadavg()[0]
        for r in range(args.rounds):
            per_round.append({})
            for m in args.methods:
                clock = StepClock()
                methods[m](total, clock)
                d = clock.durations(args.warmup, args.clock)
                w = clock.durations(args.warmup, "wall")
                times[m].extend(d)
                walls[m].extend(w)
                faults[m].extend(clock.durations(args.warmup, "faults"))
                per_round[-1][m] = median(d)
                print(f"round {r + 1}/{args.rounds} {m:<15} median step {median(d):.3f} s ({args.clock}), "
                      f"{median(w):.3f} s (wall) over {len(d)} steps", flush=True)
                gc.collect()
        costs = loss_costs(setup)
        report(args, setup, times, walls, per_round, start_load, costs, faults)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def report(args, setup: Setup, times: dict[str, list[float]], walls: dict[str, list[float]],
           per_round: list[dict[str, float]], start_load: float, costs: dict[str, float],
           faults: dict[str, list[float]]) -> None:
    med = {m: median(t) for m, t in times.items()}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of (a's step time / b's) within the round: robust to load that changes
        between rounds, since the methods of one round run back to back."""
        return median([r[a] / r[b] for r in per_round if a in r and b in r])

    tps = {m: setup.tokens_per_step / v for m, v in med.items()}
    labels = {"minimal": "hand-written PyTorch loop", "distill": "distill (online teacher)",
              "distill_fused": "distill (loss=kd_fused)", "distill_cached": "distill (teacher=cached, top-64)",
              "trl": "TRL GKDTrainer (lmbda=0)"}
    print(f"\n=== training-step throughput: {setup.batch_size} x {args.seq_len} tokens/step, student 2x96, teacher "
          f"4x256, V={len(setup.tokenizer)}, forward KL, fp32 ({args.rounds} interleaved rounds x {args.steps} "
          f"timed steps, median; clock: {args.clock})")
    print(f"machine: {machine()} (load avg at start {start_load:.1f}, at end {os.getloadavg()[0]:.1f})")
    print(f"teacher: {setup.teacher_source}; allocator: {args.allocator}")
    print(f"{'method':<36}{'step s':>9}{'tokens/s':>10}{'vs loop':>10}{'vs TRL':>9}{'IQR s':>14}{'wall s':>9}"
          f"{'faults':>9}")
    for m in times:
        t = sorted(times[m])
        iqr = f"{t[len(t) // 4]:.3f}-{t[(3 * len(t)) // 4]:.3f}" if t else "-"
        vs_loop = f"{100 * (ratio(m, 'minimal') - 1):+.1f}%" if "minimal" in med else "-"
        vs_trl = f"{1 / ratio(m, 'trl'):.2f}x" if "trl" in med else "-"
        print(f"{labels.get(m, m):<36}{med[m]:>9.3f}{tps[m]:>10.0f}{vs_loop:>10}{vs_trl:>9}{iqr:>14}"
              f"{median(walls[m]):>9.3f}{median(faults[m]):>9.0f}")
    print(f"(step s, tokens/s: median over all timed steps, {args.clock} clock"
          + (": CPU seconds of the process per step, so tokens per CPU-second" if args.clock == "cpu" else "")
          + "; vs loop: step-time overhead over the hand-written loop, vs TRL: throughput relative to TRL, both "
          "the median over rounds of within-round ratios; wall s: median wall-clock step; faults: median minor page "
          "faults per step)")
    print("per round (median step s): " + "; ".join(
        f"{i + 1}: " + ", ".join(f"{m} {v:.3f}" for m, v in r.items()) for i, r in enumerate(per_round)))
    print("loss alone, forward+backward on one step's logits (median CPU time): " + "; ".join(
        f"{name} {1000 * v:.1f} ms" for name, v in costs.items()))
    checks = []
    for m in ("distill", "distill_fused"):
        if {m, "minimal"} <= med.keys():
            over = 100 * (ratio(m, "minimal") - 1)
            checks.append((f"{labels[m]} overhead vs hand-written loop <= 5%: {over:+.1f}%", over <= 5.0))
    for m in ("distill", "distill_fused"):
        if {m, "trl"} <= med.keys():
            rel = 1 / ratio(m, "trl")
            checks.append((f"{labels[m]} throughput >= TRL's: {rel:.2f}x", rel >= 1.0))
    for text, ok in checks:
        print(f"{'PASS' if ok else 'MISS'}  {text}")
    if "distill" in med and "minimal" in med and ratio("distill", "minimal") > 1.05:
        extra = median(faults["distill"]) - median(faults["minimal"])
        print(f"why, as far as this run shows: distill's step takes {extra:+.0f} page faults over the loop's"
              + (" (memory glibc handed back to the OS at the end of the last step; --allocator keep, distill-train's "
                 "default, keeps it)" if extra > 1000 else "")
              + ". Breakdown by A/B runs and profiles: experiments/benchmarks/RESULTS.md.")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_step_s": med, "tokens_per_s": tps, "times": times,
                                               "wall_times": walls, "faults": faults, "per_round": per_round, "loss_costs": costs,
                                               "machine": machine(), "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
