"""Teacher-cache bytes per token vs training quality, one row per (mode, k, encoding) (issue 15).

    T=/tmp/cache15/teachers/stdlib-llama-4x256-s1200 TOK=/tmp/cache15/tokenizers/stdlib-bpe-2048
    export DISTILL_CACHE=/tmp/cache15
    python experiments/cache_bytes/run.py cache  --teacher $T --tokenizer $TOK   # one teacher pass, every row's cache
    python experiments/cache_bytes/run.py train  --teacher $T --tokenizer $TOK   # online + one run per row (resumable)
    python experiments/cache_bytes/run.py score  --teacher $T --tokenizer $TOK   # every student vs the real teacher
    python experiments/cache_bytes/run.py report                                 # the table (results.json)

``train ROW ...`` trains only the named rows (``online`` included); finished rows are skipped, so
an interrupted study resumes. The embedded default in every respect (stdlib corpus, 16 x 128 tokens
per step, the 2x96 student, the pretrained 4x256 teacher, forward KL at T = 1, seed 0, 600 steps),
with the teacher and tokenizer pinned to the given folders (``--teacher``/``--tokenizer``) so no run
pretrains a teacher of its own. Cached runs are ``experiment=stdlib_cached`` (``teacher=cached
loss=kd_chunked``) on each row's cache. Scoring: held-out CE, ``KL(teacher || student)`` against
the real teacher (``experiments/cached_vs_online/run.py``'s scorer); for top-k rows also the
reconstruction error of the stored log-probs against the teacher's exact ones on the held-out
split. Bytes per token: the train split's shard files on disk divided by its tokens. The step
time of each encoding is measured separately, side by side in one process:
``experiments/benchmarks/cached_read.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1].parent
sys.path.insert(0, str(REPO))
HERE = Path(__file__).resolve().parent
STEPS = 600
QWEN_V = 151_936

# (row, mode, k, encoding): "v1" is today's layout (int32 ids, float16 values, float32 tail).
V1 = {"layout": "dense", "ids": "int32", "values": "float16", "tail": "float32"}
ROWS = [
    ("sampled-k64-v1", "sampled", 64, V1),
    ("sampled-k64-counts", "sampled", 64, {}),
    ("sampled-k64-counts-zstd", "sampled", 64, {"compression": "zstd"}),
    ("sampled-k32-counts", "sampled", 32, {}),
    ("sampled-k16-counts", "sampled", 16, {}),
    ("sampled-k8-counts", "sampled", 8, {}),
    ("topk-k64-v1", "topk", 64, V1),
    ("topk-k64-q8", "topk", 64, {}),
    ("topk-k64-q8-zstd", "topk", 64, {"compression": "zstd"}),
]
# Training order: the reference first, then the rows the acceptance bars are about.
TRAIN_ORDER = ["online", "sampled-k64-counts", "sampled-k32-counts", "sampled-k16-counts", "sampled-k64-v1",
               "sampled-k8-counts", "topk-k64-q8", "topk-k64-v1", "sampled-k64-counts-zstd", "topk-k64-q8-zstd"]

log = logging.getLogger("cache_bytes")


def compose(config_name: str, overrides: list[str], output_dir: Path):
    from distill.config import compose_config

    return compose_config(config_name, overrides, output_dir, root_dir=REPO)


def pinned(args, teacher: bool = True) -> list[str]:
    """Overrides that make every run use the given tokenizer and (``teacher``) teacher folders."""
    out = [f"seed={args.seed}", f"threads={args.threads}", *args.extra]
    if args.tokenizer:
        out.append(f"student.tokenizer={args.tokenizer}")
    if args.teacher and teacher:
        out += ["teacher.pretrain=null", f"teacher.model.name_or_path={args.teacher}"]
        if args.tokenizer:
            out.append(f"teacher.model.tokenizer={args.tokenizer}")
    return out


def cache_root(args) -> Path:
    return Path(os.environ.get("DISTILL_CACHE", str(REPO / ".cache"))) / "data" / "teacher_logits" / \
        f"cache-bytes-s{args.steps}-seed{args.seed}"


def encoding_overrides(prefix: str, enc: dict) -> list[str]:
    return [f"{prefix}.{k}={v}" for k, v in enc.items()]


def cmd_cache(args) -> None:
    from distill.teachers.cache.cli import cache_logits

    root = cache_root(args)
    first, *rest = ROWS
    also = ",".join("{mode:%s,k:%d,dir:'%s',encoding:{%s}}" % (m, k, root / name, ",".join(f"{a}:{b}" for a, b in e.items()))
                    for name, m, k, e in rest)
    name, mode, k, enc = first
    cfg = compose("cache_logits", [*pinned(args), f"cache.max_steps={args.steps}", f"cache.mode={mode}", f"cache.k={k}",
                                   f"cache.dir={root / name}", *encoding_overrides("cache.encoding", enc),
                                   f"cache.also=[{also}]", "cache.teacher_name=tiny_stdlib",
                                   f"cache.progress={str(args.progress).lower()}"], args.out / "cache")
    t0 = time.time()
    cache_logits(cfg)
    (args.out / "cache_pass.json").write_text(json.dumps({"seconds": time.time() - t0, "root": str(root)}))


def row_overrides(args, row: str) -> list[str]:
    common = [*pinned(args, teacher=row == "online"), f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
              "summary.enabled=false"]
    if row == "online":
        return common
    _, mode, k, _ = next(r for r in ROWS if r[0] == row)
    return [*common, "experiment=stdlib_cached", "teacher=cached", f"teacher.path={cache_root(args) / row}", f"teacher.mode={mode}",
            f"teacher.k={k}"]


def cmd_train(args) -> None:
    from distill import pipeline

    results = args.out / "runs"
    results.mkdir(parents=True, exist_ok=True)
    for row in args.rows or TRAIN_ORDER:
        done = results / f"{row}.json"
        if done.exists():
            log.info("%s: done before, skipped", row)
            continue
        t0, cpu0 = time.time(), time.process_time()
        metrics = pipeline.run(compose("train", row_overrides(args, row), args.out / row))
        rec = {"row": row, "seconds": time.time() - t0, "cpu_seconds": time.process_time() - cpu0,
               "val_loss": metrics.get("val/loss"), "dir": str(args.out / row), "overrides": row_overrides(args, row)}
        done.write_text(json.dumps(rec, indent=1))
        log.info("%s: val/loss %.4f in %.0f s", row, rec["val_loss"] or float("nan"), rec["seconds"])


def _scorer():
    spec = importlib.util.spec_from_file_location("cached_vs_online_run", REPO / "experiments/cached_vs_online/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.score


@torch.no_grad()
def reconstruction(reader, teacher, val_examples, pad_id: int) -> dict:
    """Top-k rows: stored log-probs vs the teacher's exact (float32) top-k log-probs on held-out text."""
    from distill.data.datamodule import collate
    from distill.teachers.cached import renormalize

    rows = reader.split("val")
    err_max = err_sum = kl_sum = 0.0
    n = 0
    for a in range(0, len(val_examples), 16):
        idx = list(range(a, min(a + 16, len(val_examples))))
        batch = collate([val_examples[i] for i in idx], pad_id)
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for j, i in enumerate(idx):
            ids, values, tail = rows[i]
            lp_true = torch.log_softmax(logits[j, :ids.shape[0]].float(), -1).gather(-1, ids.long())
            lp = renormalize(values, tail, sampled=False)  # what CachedTeacher hands the loss
            d = (lp - lp_true).abs()
            err_max, err_sum, n = max(err_max, float(d.max())), err_sum + float(d.mean(-1).sum()), n + ids.shape[0]
            # KL over the k+1 buckets (support + tail), true vs stored
            tail_true = (1 - lp_true.exp().sum(-1)).clamp_min(1e-12)
            p = torch.cat([lp_true, tail_true.log().unsqueeze(-1)], -1)
            q = torch.cat([lp, torch.log(tail.clamp_min(1e-12)).unsqueeze(-1)], -1)
            kl_sum += float((p.exp() * (p - q)).sum())
    return {"logprob_abs_err_mean": err_sum / max(n, 1), "logprob_abs_err_max": err_max,
            "bucket_kl_mean": kl_sum / max(n, 1)}


def cmd_score(args) -> None:
    from transformers import AutoModelForCausalLM

    from distill.build import build_components
    from distill.teachers.cache import CacheReader

    runs = {p.stem: json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*.json"))}
    if "online" not in runs:
        raise SystemExit("score: the online run is not finished yet (python experiments/cache_bytes/run.py train online)")
    parts = build_components(compose("train", row_overrides(args, "online"), args.out / "score"))
    dm = parts.datamodule
    dm.setup("fit")
    teacher_path = args.score_teacher or args.teacher or parts.teacher.spec.name_or_path
    scores = _scorer()({n: Path(r["dir"]) / "student" for n, r in runs.items()}, teacher_path, dm.val_dataloader(),
                       reference="online")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path).eval()
    ref = scores["online"]["loss"]
    rows = []
    for name, mode, k, _ in ROWS:
        path = cache_root(args) / name
        if not (path / "manifest.json").exists():
            continue
        reader = CacheReader(path)
        entry = reader.manifest["splits"]["train"]
        n_bytes = sum((path / i["file"]).stat().st_size for i in entry["shards"].values() if i["file"])
        n_tok = sum(i["tokens"] for i in entry["shards"].values())
        row = {"row": name, "mode": mode, "k": k, "encoding": reader.encoding.to_dict(), "bytes_per_token": n_bytes / n_tok,
               "layout_bytes_per_token": reader.encoding.bytes_per_token(k, reader.mean_entries("train")),
               "mean_entries": reader.mean_entries("train"),
               "qwen_bytes_per_token": qwen_projection(reader.encoding, k, reader.mean_entries("train")),
               "qwen_bytes_per_token_max": qwen_projection(reader.encoding, k, float(k)),
               "train_tokens": n_tok}
        if mode == "topk":
            row.update(reconstruction(reader, teacher, dm.examples("val"), dm.tokenizer.pad_token_id))
        if name in scores:
            s = scores[name]
            row.update(heldout_ce=s["loss"], delta_pct=100 * (s["loss"] - ref) / ref, kl_teacher_student=s["kl"],
                       agreement=s["agreement"], kl_to_online_student=s["kl_to_online_student"],
                       train_seconds=runs[name]["seconds"])
        rows.append(row)
    online = scores["online"]
    result = {"steps": args.steps, "seed": args.seed, "teacher": teacher_path, "teacher_heldout_ce": online.get("teacher_loss"),
              "online": {"heldout_ce": online["loss"], "kl_teacher_student": online["kl"],
                         "agreement": online["agreement"], "train_seconds": runs["online"]["seconds"]},
              "rows": rows, "missing": [r for r in TRAIN_ORDER if r not in runs],
              "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, threads={args.threads}"}
    step = HERE / "step_time.json"
    if step.exists():
        result["step_time"] = json.loads(step.read_text())
    args.results.write_text(json.dumps(result, indent=1))
    print_report(result)


def qwen_projection(encoding, k: int, mean_entries: float) -> float:
    """Bytes per token of this encoding at V = 151,936: ids need 3 bytes (uint24) unless int32 is asked for."""
    from dataclasses import replace

    enc = encoding if encoding.ids == "int32" else replace(encoding, ids="uint24")
    return enc.bytes_per_token(k, mean_entries)


def print_report(result: dict) -> None:
    on = result["online"]
    print(f"\n=== teacher cache bytes vs quality: embedded default, {result['steps']} steps, seed {result['seed']} "
          f"(teacher held-out CE {result['teacher_heldout_ce']:.4f}; online student {on['heldout_ce']:.4f})")
    step = {r["cache"]: r for r in (result.get("step_time") or {}).get("rows", [])}
    print(f"{'row':<25}{'B/token':>9}{'layout B':>9}{'entries':>8}{'held-out CE':>12}{'vs online':>10}{'KL(T||S)':>10}"
          f"{'step vs v1':>11}{'Qwen B':>8}")
    print(f"{'online':<25}{'-':>9}{'-':>9}{'-':>8}{on['heldout_ce']:>12.4f}{'+0.00%':>10}{on['kl_teacher_student']:>10.4f}"
          f"{'-':>11}{'-':>8}")
    for r in result["rows"]:
        ce = f"{r['heldout_ce']:.4f}" if "heldout_ce" in r else "not run"
        d = f"{r['delta_pct']:+.2f}%" if "delta_pct" in r else "-"
        kl = f"{r['kl_teacher_student']:.4f}" if "kl_teacher_student" in r else "-"
        st = f"{step[r['row']]['ratio_vs_v1']:.3f}x" if r["row"] in step else "-"
        print(f"{r['row']:<25}{r['bytes_per_token']:>9.1f}{r['layout_bytes_per_token']:>9.1f}{r['mean_entries']:>8.1f}"
              f"{ce:>12}{d:>10}{kl:>10}{st:>11}{r['qwen_bytes_per_token']:>8.1f}")
    print("(B/token: train shard files on disk / train tokens; layout B: the encoding's exact per-token layout at "
          "the measured entries per token; entries: stored ids per token (distinct draws for ragged rows); Qwen B: "
          "the same layout at V=151,936 (3-byte ids), before compression; step vs v1: cached step time relative to "
          "the same mode's v1 row, measured side by side in one process)")
    print(f"projection to V={QWEN_V:,} (Qwen; 3-byte ids, the exact layout, no compression, no per-example offsets): "
          + "; ".join(f"{r['row']} {r['qwen_bytes_per_token']:.1f} B"
                      + (f" (at most {r['qwen_bytes_per_token_max']:.0f} B with all {r['k']} draws distinct)"
                         if r["qwen_bytes_per_token_max"] != r["qwen_bytes_per_token"] else "")
                      for r in result["rows"] if "zstd" not in r["row"]))
    for r in result["rows"]:
        if "logprob_abs_err_mean" in r:
            print(f"reconstruction {r['row']}: |log p - stored| mean {r['logprob_abs_err_mean']:.5f}, max "
                  f"{r['logprob_abs_err_max']:.4f}; bucket KL(true || stored) {r['bucket_kl_mean']:.2e}")
    sampled = [r for r in result["rows"] if r["mode"] == "sampled" and "delta_pct" in r]
    bar1 = [r for r in sampled if r["bytes_per_token"] <= 64 and r["delta_pct"] <= 0.5]
    small = [r for r in sampled if r["bytes_per_token"] <= 64]
    print(("PASS" if bar1 else "MISS") + "  a sampled cache at <= 64 B/token within 0.5% of online: "
          + (", ".join(f"{r['row']} {r['bytes_per_token']:.1f} B {r['delta_pct']:+.2f}%" for r in bar1) if bar1 else
             "closest: " + ", ".join(f"{r['row']} {r['bytes_per_token']:.1f} B {r['delta_pct']:+.2f}%" for r in small)))
    trained = [r for r in result["rows"] if "delta_pct" in r]
    if trained:
        smallest = min(trained, key=lambda r: r["bytes_per_token"])
        print(("PASS" if smallest["delta_pct"] <= 2.0 else "MISS") + f"  the smallest cache within 2% of online: "
              f"{smallest['row']} {smallest['bytes_per_token']:.1f} B/token, {smallest['delta_pct']:+.2f}%")
    if result.get("missing"):
        print("not run yet: " + ", ".join(result["missing"]) + " (python experiments/cache_bytes/run.py train "
              + " ".join(result["missing"]) + ", then score)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["cache", "train", "score", "report"])
    ap.add_argument("rows", nargs="*", help="train: only these rows (online included)")
    ap.add_argument("--teacher", default=None, help="the trained default teacher's folder (pins it: no pretraining)")
    ap.add_argument("--tokenizer", default=None, help="the tokenizer folder that teacher was trained with")
    ap.add_argument("--score-teacher", default=None, help="score against this teacher folder (default: --teacher)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per run (the default run: 600)")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every config (smoke tests: debug=tiny)")
    ap.add_argument("--results", type=Path, default=HERE / "results.json")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "cache_bytes", help="run folders")
    args = ap.parse_args()
    if args.command == "report":
        print_report(json.loads(args.results.read_text()))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    {"cache": cmd_cache, "train": cmd_train, "score": cmd_score}[args.command](args)


if __name__ == "__main__":
    main()
