"""Cached training step and batch reading, one cache encoding against another, side by side (issue 15).

    DISTILL_CACHE=/tmp/cache15 python experiments/benchmarks/cached_read.py \
        --tokenizer /tmp/cache15/tokenizers/stdlib-bpe-2048 --json experiments/cache_bytes/step_time.json

Takes the caches ``experiments/cache_bytes/run.py cache`` wrote (600 steps of the embedded default;
``--caches NAME=PATH ...`` for others) and, in one process, for ``--rounds`` rounds, runs each in turn:

* ``step``: ``distill-train``'s real cached path (``experiment=stdlib_cached``: ``build_components``
  + a Lightning ``Trainer``; loggers, checkpoints and validation off), ``--warmup`` untimed then
  ``--steps`` timed optimizer steps; a step is the gap between consecutive step ends (reading,
  collating, the loss and the optimizer all count), in CPU seconds of the process by default
  (robust to other jobs on a shared machine, see ``throughput.py``);
* ``read``: the DataModule alone, ``--read-batches`` training batches through the cache's hook and
  the collate (what reading costs without the model).

Ratios are the median over rounds of the within-round ratio to the same mode's ``v1`` cache
(int32 ids, float16 values, float32 tail: the layout before issue 15).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from common import REPO, StepClock, compose, fit_timed, machine, median  # noqa: E402  (sets sys.path)

ROOT = "data/teacher_logits/cache-bytes-s600-seed0"


def overrides(args, path: Path, total: int) -> list[str]:
    from distill.teachers.cache import CacheReader

    m = CacheReader(path).manifest
    out = [f"seed={args.seed}", "experiment=stdlib_cached", "teacher=cached", f"teacher.path={path}",
           f"teacher.mode={m['mode']}", f"teacher.k={m['k']}", "logger=none", "callbacks=none",
           "summary.enabled=false", "export.enabled=false", "trainer.limit_val_batches=0",
           "trainer.enable_model_summary=false", f"trainer.max_steps={total}"]
    if args.tokenizer:
        out.append(f"student.tokenizer={args.tokenizer}")
    return [*args.extra, *out]


def time_steps(args, path: Path, out: Path):
    clock = StepClock()

    cfg = compose("train", overrides(args, path, args.warmup + args.steps), out)
    parts = fit_timed(cfg, clock)
    return clock.durations(args.warmup, args.clock), parts.datamodule


def time_reads(args, datamodule) -> float:
    """CPU (or wall) seconds per training batch of the DataModule with the cache's hook."""
    loader = datamodule.train_dataloader()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    it = iter(loader)
    next(it)  # opens the shard files
    t0 = clock()
    n = 0
    for _ in range(args.read_batches):
        batch = next(it, None)
        if batch is None:
            break
        assert "teacher_topk_ids" in batch
        n += 1
    return (clock() - t0) / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caches", nargs="*", default=None, help="NAME=PATH (default: the cache_bytes study's caches)")
    ap.add_argument("--tokenizer", default=None, help="the tokenizer the caches were written with")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--read-batches", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--root", default=ROOT, help="the caches' folder under $DISTILL_CACHE")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides (smoke tests: debug=tiny ...)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import lightning  # noqa: F401
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric",
                 "distill", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    if args.caches:
        caches = {c.split("=", 1)[0]: Path(c.split("=", 1)[1]) for c in args.caches}
    else:
        root = Path(os.environ.get("DISTILL_CACHE", str(REPO / ".cache"))) / args.root
        caches = {p.name: p for p in sorted(root.iterdir()) if (p / "manifest.json").exists()}
    out = Path(tempfile.mkdtemp(prefix="distill-cached-read-"))
    steps: dict[str, list[float]] = {c: [] for c in caches}
    per_round: list[dict[str, dict[str, float]]] = []
    for r in range(args.rounds):
        per_round.append({})
        for name, path in caches.items():
            d, datamodule = time_steps(args, path, out / name)
            read = time_reads(args, datamodule)
            steps[name].extend(d)
            per_round[-1][name] = {"step": median(d), "read": read}
            print(f"round {r + 1}/{args.rounds} {name:<26} median step {median(d):.4f} s, read {1000 * read:.2f} ms/batch "
                  f"({args.clock})", flush=True)
            gc.collect()

    def ratio(a: str, b: str, what: str) -> float:
        return median([x[a][what] / x[b][what] for x in per_round if a in x and b in x])

    from distill.teachers.cache import CacheReader

    rows = []
    for name, path in caches.items():
        mode = CacheReader(path).mode
        base = f"{mode}-k64-v1"
        rows.append({"cache": name, "median_step_s": median(steps[name]),
                     "read_ms_per_batch": 1000 * median([x[name]["read"] for x in per_round]),
                     "baseline": base if base in caches else None,
                     "ratio_vs_v1": ratio(name, base, "step") if base in caches else None,
                     "read_ratio_vs_v1": ratio(name, base, "read") if base in caches else None})
    result = {"clock": args.clock, "rounds": args.rounds, "steps": args.steps, "machine": machine(), "rows": rows,
              "per_round": per_round}
    print(f"\n=== cached training step by cache encoding ({args.rounds} interleaved rounds x {args.steps} timed steps, "
          f"median, {args.clock} clock; read: {args.read_batches} batches through the hook + collate)")
    print(f"machine: {machine()}")
    print(f"{'cache':<26}{'step s':>9}{'vs v1':>8}{'read ms/batch':>15}{'vs v1':>8}")
    for x in rows:
        vs = f"{x['ratio_vs_v1']:.3f}" if x["ratio_vs_v1"] else "-"
        rv = f"{x['read_ratio_vs_v1']:.2f}" if x["read_ratio_vs_v1"] else "-"
        print(f"{x['cache']:<26}{x['median_step_s']:>9.4f}{vs:>8}{x['read_ms_per_batch']:>15.2f}{rv:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
