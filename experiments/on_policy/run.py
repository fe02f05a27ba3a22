"""On-policy distillation on the embedded default: off-policy KD vs GKD vs on-policy reverse KL vs speculative KD vs SeqKD.

    DISTILL_CACHE=/tmp/dcache python experiments/on_policy/run.py                     # 600 steps x 3 seeds (hours on CPU)
    DISTILL_CACHE=/tmp/dcache python experiments/on_policy/run.py --steps 40 --seeds 0 1 2 --threads 1
    python experiments/on_policy/run.py --report --results experiments/on_policy/results.json

Every method trains the default student (2 x 96 Llama from scratch) against the default teacher
(4 x 256 Llama; pass ``--teacher`` for a trained folder, else the default pretrained one under
``$DISTILL_CACHE``) on the stdlib corpus, same optimizer steps, data order and seed; only the
training sequences and the divergence differ. On-policy continuations start from the first
``--prompt-tokens`` tokens of each 128-token block and run ``--new-tokens`` tokens (T = 1).

Measured on held-out data (the val split):

* held-out CE and the share of the teacher / CE-only-student gap it closes (as ``distill-train``'s summary);
* on the student's own continuations of held-out prompts (the first ``--prompt-tokens`` tokens of
  ``--eval-prompts`` val blocks), greedy and sampled at T = 1: the teacher's per-token NLL of the
  generated tokens (what on-policy training optimises), and the per-token KL(student || teacher)
  and KL(teacher || student) on those continuations;
* wall time per step (median) and its generation part (median ``train/generation_s``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

log = logging.getLogger("on_policy")

METHODS = {
    "ce_only": ["loss=ce"],
    "off_policy_fkl": ["loss=kd"],
    "gkd_jsd_l0.5": ["loss=jsd", "sequences=gkd"],
    "gkd_jsd_l1": ["loss=jsd", "sequences=student"],
    "on_policy_rkl": ["loss=rkl", "sequences=student"],
    "speculative_jsd": ["loss=jsd", "sequences=speculative"],
    "seqkd_fkl": ["loss=kd", "sequences=seqkd"],
}


def compose(overrides: list[str], output_dir: Path):
    from distill.config import compose_config

    return compose_config("train", overrides, output_dir, root_dir=REPO)


@torch.no_grad()
def continuation_metrics(student, teacher, prompts: list[torch.Tensor], new_tokens: int, eos_id: int, pad_id: int,
                         vocab: int, seed: int, batch_size: int = 32) -> dict[str, float]:
    """Teacher NLL and both KLs per generated token of the student's greedy and sampled continuations."""
    from distill.losses.functional import forward_kl, reverse_kl
    from distill.onpolicy.generation import HFGenerator, Sampling
    from distill.onpolicy.prompts import left_pad

    out = {}
    for mode in ("greedy", "sampled"):
        sums = {"nll": 0.0, "rkl": 0.0, "fkl": 0.0, "tokens": 0.0}
        for start in range(0, len(prompts), batch_size):
            ids, mask = left_pad(prompts[start:start + batch_size], pad_id)
            torch.manual_seed(seed + start)
            gen = HFGenerator()(student, ids, mask, Sampling(max_new_tokens=new_tokens, greedy=mode == "greedy"),
                                eos_id, pad_id, vocab)
            full, full_mask = torch.cat([ids, gen.completion], 1), torch.cat([mask, gen.completion_mask], 1)
            pos = (full_mask.cumsum(-1) - 1).clamp_min(0)
            t = teacher(input_ids=full, attention_mask=full_mask, position_ids=pos).logits[..., :vocab]
            s = student(input_ids=full, attention_mask=full_mask, position_ids=pos).logits[..., :vocab]
            p = ids.shape[1]
            t, s = t[:, p - 1:-1], s[:, p - 1:-1]  # the distributions each generated token was drawn from
            keep = gen.completion_mask == 1
            nll = -torch.log_softmax(t.float(), -1).gather(-1, gen.completion.unsqueeze(-1)).squeeze(-1)
            sums["nll"] += float(nll[keep].sum())
            sums["rkl"] += float(reverse_kl(s, t)[keep].sum())
            sums["fkl"] += float(forward_kl(s, t)[keep].sum())
            sums["tokens"] += float(keep.sum())
        n = max(sums["tokens"], 1.0)
        out.update({f"{mode}_teacher_nll": sums["nll"] / n, f"{mode}_kl_s_t": sums["rkl"] / n,
                    f"{mode}_kl_t_s": sums["fkl"] / n, f"{mode}_tokens": sums["tokens"]})
    return out


def run_one(name: str, seed: int, args, out: Path) -> dict:
    from distill.runs import read_metrics
    from distill.train import fit

    run_dir = out / f"{name}-seed{seed}"
    result_file = run_dir / "result.json"
    if result_file.exists():  # resumable study: finished runs are kept
        return json.loads(result_file.read_text())
    overrides = [*args.base, f"seed={seed}", *METHODS[name]]
    if any(o.startswith("sequences=") for o in METHODS[name]):
        overrides += [f"sequences.sampling.max_new_tokens={args.new_tokens}",
                      f"sequences.prompts.prompt_tokens={args.prompt_tokens}"]
    cfg = compose(overrides, run_dir)
    t0 = time.time()
    fitted = fit(cfg)
    seconds = time.time() - t0
    rows = read_metrics(run_dir)
    steps = [r for r in rows if "train/loss" in r]
    gen = [r["train/generation_s"] for r in steps if "train/generation_s" in r][2:]
    step_s = [r["time/step_s"] for r in rows if "time/step_s" in r]
    res = {"method": name, "seed": seed, "overrides": overrides, "val_loss": fitted.metrics.get("val/loss"),
           "teacher_loss": fitted.metrics.get("val/teacher_loss"), "val_kl": fitted.metrics.get("val/kl"),
           "seconds": seconds, "step_s": step_s[-1] if step_s else None,
           "generation_s": statistics.median(gen) if gen else 0.0}
    module, dm = fitted.parts.module, fitted.parts.datamodule
    tok = fitted.parts.tokenizer
    dm.setup("fit")
    val = dm.val_set.examples[: args.eval_prompts]
    prompts = [torch.as_tensor(e["input_ids"][: args.prompt_tokens]) for e in val]
    student = module.student.eval()
    teacher = module.teacher.model
    res.update(continuation_metrics(student, teacher, prompts, args.new_tokens, tok.eos_token_id, tok.pad_token_id,
                                    module.vocab_size or len(tok), seed=1000 + seed))
    result_file.write_text(json.dumps(res, indent=2))
    log.info("%s seed %d: %s", name, seed, {k: v for k, v in res.items() if k != "overrides"})
    return res


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = statistics.mean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}"


def report(results: dict) -> str:
    rows = results["runs"]
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    base = {r["seed"]: r["val_loss"] for r in by.get("ce_only", [])}
    lines = [f"=== on-policy study: {results['steps']} steps, seeds {results['seeds']}, prompt {results['prompt_tokens']} "
             f"+ {results['new_tokens']} new tokens, {results['eval_prompts']} held-out prompts "
             f"(teacher held-out CE {mean_std([r['teacher_loss'] for r in rows if r['teacher_loss']])})",
             "| method | n | held-out CE | gap closed % | teacher NLL (greedy) | teacher NLL (sampled) | KL(S‖T) sampled "
             "| KL(T‖S) sampled | step s | generation s |", "|---" * 10 + "|"]
    for name in METHODS:
        rs = by.get(name)
        if not rs:
            continue
        gaps = [100 * (base[r["seed"]] - r["val_loss"]) / (base[r["seed"]] - r["teacher_loss"])
                for r in rs if r["seed"] in base and r["teacher_loss"] and name != "ce_only"]
        lines.append(f"| {name} | {len(rs)} | {mean_std([r['val_loss'] for r in rs])} | {mean_std(gaps) if gaps else '-'} "
                     f"| {mean_std([r['greedy_teacher_nll'] for r in rs])} | {mean_std([r['sampled_teacher_nll'] for r in rs])} "
                     f"| {mean_std([r['sampled_kl_s_t'] for r in rs])} | {mean_std([r['sampled_kl_t_s'] for r in rs])} "
                     f"| {mean_std([r['step_s'] for r in rs])} | {mean_std([r['generation_s'] for r in rs])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--eval-prompts", type=int, default=64)
    ap.add_argument("--teacher", default=None, help="a trained teacher folder (teacher=hf); default: the pretrained default")
    ap.add_argument("--tokenizer", default=None, help="the student's tokenizer folder (must match the teacher's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "outputs" / "on_policy"))
    ap.add_argument("--max-val-examples", type=int, default=256, help="held-out blocks for the CE (data.max_val_examples)")
    ap.add_argument("--results", nargs="+", default=[str(Path(__file__).with_name("results.json"))],
                    help="where to write the results (the first path); with --report, files to merge")
    ap.add_argument("--report", action="store_true", help="print the table of earlier --results files (merged)")
    args = ap.parse_args()
    if args.report:
        merged = [json.loads(Path(p).read_text()) for p in args.results]
        unique = {(r["method"], r["seed"]): r for m in merged for r in m["runs"]}  # a run listed twice counts once
        first = dict(merged[0], runs=list(unique.values()),
                     seeds=sorted({s for m in merged for s in m["seeds"]}))
        print(report(first))
        return
    args.results = args.results[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.base = [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
                 "trainer.log_every_n_steps=1", "summary.enabled=false", "export.enabled=false", "callbacks=none",
                 "+callbacks.step_timer={_target_: distill.callbacks.StepTimer, skip: 2}",
                 f"module.scheduler.warmup_steps={min(30, max(1, args.steps // 10))}",
                 f"data.max_val_examples={args.max_val_examples}"]
    if args.threads:
        args.base.append(f"threads={args.threads}")
    if args.teacher:
        args.base += ["teacher=hf", f"teacher.model.name_or_path={args.teacher}"]
    if args.tokenizer:
        args.base.append(f"student.tokenizer={args.tokenizer}")
    out = Path(args.out)
    runs = []
    results = {"steps": args.steps, "seeds": args.seeds, "prompt_tokens": args.prompt_tokens,
               "new_tokens": args.new_tokens, "eval_prompts": args.eval_prompts, "runs": runs,
               "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, threads {args.threads}"}
    for seed in args.seeds:  # seed-major: a partial study still has whole seeds of every method
        for name in args.methods:
            runs.append(run_one(name, seed, args, out))
            Path(args.results).write_text(json.dumps(results, indent=2))
            print(report(results), flush=True)


if __name__ == "__main__":
    main()
