"""Sweep cost: K runs with the online teacher vs one cache pass plus K runs from the cache.

    DISTILL_CACHE=/tmp/dcache python experiments/benchmarks/sweep_cost.py              # K=3 lrs x 30 steps
    DISTILL_CACHE=/tmp/dcache python experiments/benchmarks/sweep_cost.py --lrs 1e-3 3e-3 1e-2 3e-2 --steps 60

A learning-rate sweep of the embedded default (``distill-train module.optimizer.lr=...``), run
twice, timed end to end as a user pays for it (config checks, data loading, model building,
training, the final validation):

* **online**: K runs with ``teacher=tiny_stdlib`` (the teacher runs on every batch);
* **cached**: one ``distill-cache-logits`` pass (top-64, ``cache.max_steps`` = the run length, so
  it holds exactly the examples the runs read, plus the val split), then K runs with
  ``experiment=stdlib_cached`` (no teacher forward at all).

Online and cached runs alternate (same lr back to back) so that load from other processes on a
shared machine hits both alike. The table gives the wall and CPU time (``process_time``: other
jobs' load barely moves it) of each run, the totals, the speed-up, and the break-even sweep size
``K* = cache pass / (online run - cached run)``; it also
lists each run's held-out loss, to show the cached sweep ranks the learning rates like the online
one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import compose, machine  # noqa: E402  (sets sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="one run per value (K = count)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    ap.add_argument("--k", type=int, default=64, help="cache entries per token")
    ap.add_argument("--mode", default="topk", choices=["topk", "sampled"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every run and of the cache pass")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import lightning  # noqa: F401  (sets its loggers' levels on import: quiet them after)
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric",
                 "distill", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from distill.teachers.cache.cli import cache_logits
    from distill import pipeline

    out = Path(tempfile.mkdtemp(prefix="distill-sweep-"))
    steps = args.steps
    common = [f"seed={args.seed}", f"threads={args.threads}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
              "summary.enabled=false", "export.enabled=false", "logger=none"]
    try:
        start_load = os.getloadavg()[0]
        cache_dir = out / "cache" / f"tiny_stdlib-{args.mode}-k{args.k}"
        t0, c0 = time.perf_counter(), time.process_time()
        cache_logits(compose("cache_logits", [f"seed={args.seed}", f"threads={args.threads}",
                                              f"cache.max_steps={steps}", f"cache.k={args.k}",
                                              f"cache.mode={args.mode}", f"cache.dir={cache_dir}",
                                              "cache.progress=false"], out / "cache_run"))
        cache_s, cache_cpu = time.perf_counter() - t0, time.process_time() - c0
        rows = []
        for i, lr in enumerate(args.lrs):
            row = {"lr": lr}
            for kind, extra in (("online", []), ("cached", ["experiment=stdlib_cached", f"teacher.path={cache_dir}",
                                                            f"teacher.mode={args.mode}", f"teacher.k={args.k}"])):
                cfg = compose("train", [*common, f"module.optimizer.lr={lr}", *extra], out / f"{kind}{i}")
                t, c = time.perf_counter(), time.process_time()
                metrics = pipeline.run(cfg)
                row[f"{kind}_s"] = time.perf_counter() - t
                row[f"{kind}_cpu"] = time.process_time() - c
                row[f"{kind}_val_loss"] = metrics.get("val/loss", math.nan)
                print(f"lr={lr:g} {kind}: {row[f'{kind}_s']:.1f} s ({row[f'{kind}_cpu']:.1f} CPU s), val/loss {row[f'{kind}_val_loss']:.4f}", flush=True)
            rows.append(row)
        report(args, rows, cache_s, cache_cpu, start_load)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def report(args, rows: list[dict], cache_s: float, cache_cpu: float, start_load: float) -> None:
    k = len(rows)
    print(f"\n=== sweep cost: K={k} runs x {args.steps} steps (lr sweep), online teacher vs one {args.mode}-{args.k} "
          f"cache pass + K cached runs (end to end, {args.threads} torch thread(s))")
    print(f"machine: {machine()} (load avg at start {start_load:.1f}, at end {os.getloadavg()[0]:.1f})")
    print(f"{'lr':>8}{'online s':>10}{'cached s':>10}{'online CPU s':>14}{'cached CPU s':>14}"
          f"{'val/loss online':>17}{'val/loss cached':>17}")
    for r in rows:
        print(f"{r['lr']:>8g}{r['online_s']:>10.1f}{r['cached_s']:>10.1f}{r['online_cpu']:>14.1f}{r['cached_cpu']:>14.1f}"
              f"{r['online_val_loss']:>17.4f}{r['cached_val_loss']:>17.4f}")
    summary = {}
    for clock, suffix, pass_s in (("wall", "s", cache_s), ("CPU", "cpu", cache_cpu)):
        online = sum(r[f"online_{suffix}"] for r in rows)
        cached = sum(r[f"cached_{suffix}"] for r in rows)
        per_on, per_ca = online / k, cached / k
        breakeven = pass_s / (per_on - per_ca) if per_on > per_ca else math.inf
        summary[clock] = {"online": online, "cached_runs": cached, "cache_pass": pass_s, "breakeven_runs": breakeven}
        print(f"{clock:>4} total: online {online:.1f} s vs cached {pass_s + cached:.1f} s ({pass_s:.1f} s cache pass + "
              f"{cached:.1f} s runs): per run {per_on:.1f} vs {per_ca:.1f} s ({per_on / per_ca:.2f}x), sweep "
              f"{online / (pass_s + cached):.2f}x faster; the cache pays off from K* = {breakeven:.2f} runs")
    best_on = min(rows, key=lambda r: r["online_val_loss"])["lr"]
    best_ca = min(rows, key=lambda r: r["cached_val_loss"])["lr"]
    print(f"best lr: online {best_on:g}, cached {best_ca:g} ({'same' if best_on == best_ca else 'DIFFERENT'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "machine": machine(),
                                               "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
