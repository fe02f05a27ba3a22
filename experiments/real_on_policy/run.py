"""Instruction distillation with an instruct teacher (issue 24, study 2): which sequences and loss
teach a healed pruned SmolLM2 to answer like SmolLM2-135M-Instruct?

    python experiments/real_on_policy/run.py                                   # the study: seeds 0 1 2, every row, eval, report
    python experiments/real_on_policy/run.py --seeds 0 2 --threads 1 & python experiments/real_on_policy/run.py --seeds 1 --threads 1
    python experiments/real_on_policy/run.py --report                          # reprint results.json, the table and the chart

One process at a time per seed (resumable: a finished stage is skipped):

1. **start** (once, shared by every row and seed): the healed student of ``experiment=smollm2_prune``
   (``experiments/smollm2_prune/runs/seed0/student``: 12 of the teacher's 30 layers, healed by forward
   KL), briefly SFT'd on teacher-written answers (``sequences=seqkd loss=ce``, ``--sft-steps``), as GKD
   prescribes;
2. **rows**: from that start, ``distill-train experiment=real_on_policy`` with the row's ``sequences``
   and ``loss`` (same steps and prompts; the seed sets the data order and the sampled answers);
3. **eval** (in this process): on held-out prompts (the first ``--mbpp`` MBPP *test* tasks and the
   first ``--humaneval`` HumanEval tasks, in the chat template), greedy and sampled (T = 1) answers of
   up to ``--new-tokens`` tokens: the teacher's per-token NLL of them and KL(student || teacher) per
   token; pass@1 of each in the sandbox (the unit-test reward ``loss=opd`` trains on); answer length;
   the share of answers that end at <|im_end|>; generation seconds. Written to ``<run>/eval.json``,
   which ``distill-compare`` reads beside the run's own metrics (``eval/...`` columns).

The teacher, the healed student and the start are evaluated the same way (``runs/teacher``,
``runs/healed``, ``runs/start``), once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

log = logging.getLogger("real_on_policy")

ROWS = {
    "seqkd": ["sequences=seqkd", "loss=ce"],                    # SFT on teacher-written answers
    "sup_fkl": ["sequences=seqkd", "loss=kd"],                  # supervised forward KL on teacher answers
    "gkd_l0.5": ["sequences=gkd", "loss=jsd"],                  # GKD, half on-policy (off-policy half: teacher answers)
    "gkd_l1": ["sequences=student", "loss=jsd"],                # GKD, fully on-policy, JSD(0.5)
    "onpolicy_rkl": ["sequences=student", "loss=rkl"],          # on-policy reverse KL (MiniLLM-style objective)
    "speculative": ["sequences=speculative", "loss=jsd"],       # speculative KD (top-25 acceptance)
    "opd": ["sequences=student", "loss=opd"],                   # on-policy distillation as RL (policy gradient)
}
EVAL_METRICS = ["eval/greedy_teacher_nll", "eval/sampled_teacher_nll", "eval/greedy_kl_s_t", "eval/sampled_kl_s_t",
                "eval/greedy_mbpp_pass", "eval/greedy_humaneval_pass", "eval/greedy_len", "eval/greedy_eot",
                "eval/gen_s_per_answer_token"]


def train(overrides: list[str], run_dir: Path, args, steps: int) -> None:
    """One ``distill-train`` process (its own output dir; the student exported to ``<run_dir>/student``)."""
    if (run_dir / "student" / "model.safetensors").exists():
        log.info("%s: trained (skipped)", run_dir)
        return
    cmd = ["distill-train", "experiment=real_on_policy", *overrides, f"data.source.sets.mbpp.path={args.mbpp_path}",
           f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", f"threads={args.threads}",
           "summary.baseline=false", "~callbacks.model_checkpoint", "+trainer.enable_checkpointing=false",
           f"hydra.run.dir={run_dir}"]
    log.info("%s", " ".join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    (run_dir / "wall_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")


def heldout_prompts(tokenizer, args) -> list[dict]:
    """The held-out chat prompts: MBPP test tasks and HumanEval tasks, as ``{"ids", "meta"}``."""
    from distill.onpolicy.prompt_sets import HumanEvalPrompts, MBPPPrompts

    mbpp = MBPPPrompts(path=args.mbpp_path, train_split="train", val_split="test", answers="none")
    # HumanEval: every task held out (val_fraction just under 1 keeps the split's hashing out of the way)
    he = HumanEvalPrompts(val_fraction=0.999999, answers="none")
    out = []
    for source, n in ((mbpp, args.mbpp), (he, args.humaneval)):
        examples = source.examples("val", tokenizer, max_length=4096)
        examples.sort(key=lambda e: _task_number(e["meta"]["task_id"]))
        out += [{"ids": torch.tensor(e["input_ids"]), "meta": e["meta"]} for e in examples[:n]]
    return out


def _task_number(task_id) -> int:
    return int(str(task_id).rsplit("/", 1)[-1])


@torch.no_grad()
def evaluate(model, teacher, tokenizer, prompts: list[dict], args, seed: int) -> dict[str, float]:
    """Teacher NLL / KL(S||T) per generated token, pass@1, length and end-of-turn share of the model's
    greedy and sampled answers to ``prompts`` (batches of ``--eval-batch``)."""
    from distill.data.conventions import end_of_turn_id
    from distill.losses.functional import reverse_kl
    from distill.onpolicy.generation import HFGenerator, Sampling
    from distill.onpolicy.prompts import left_pad
    from distill.onpolicy.rewards import CodeReward

    eot = end_of_turn_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    vocab = len(tokenizer)
    reward = CodeReward(timeout=5.0, workers=1)
    out: dict[str, float] = {}
    try:
        for mode in ("greedy", "sampled"):
            s = {"nll": 0.0, "kl": 0.0, "tokens": 0.0, "eot": 0, "gen_s": 0.0, "mbpp": [], "humaneval": []}
            lengths = []
            for start in range(0, len(prompts), args.eval_batch):
                chunk = prompts[start:start + args.eval_batch]
                ids, mask = left_pad([p["ids"] for p in chunk], pad)
                torch.manual_seed(seed * 1000 + start)
                t0 = time.perf_counter()
                gen = HFGenerator()(model, ids, mask, Sampling(max_new_tokens=args.new_tokens, greedy=mode == "greedy"),
                                    eot, pad, vocab)
                s["gen_s"] += time.perf_counter() - t0
                full, full_mask = torch.cat([ids, gen.completion], 1), torch.cat([mask, gen.completion_mask], 1)
                pos = (full_mask.cumsum(-1) - 1).clamp_min(0)
                p = ids.shape[1]
                t = teacher(input_ids=full, attention_mask=full_mask, position_ids=pos).logits[:, p - 1:-1, :vocab]
                st = model(input_ids=full, attention_mask=full_mask, position_ids=pos).logits[:, p - 1:-1, :vocab]
                keep = gen.completion_mask == 1
                nll = -torch.log_softmax(t.float(), -1).gather(-1, gen.completion.unsqueeze(-1)).squeeze(-1)
                s["nll"] += float(nll[keep].sum())
                s["kl"] += float(reverse_kl(st, t)[keep].sum())
                s["tokens"] += float(keep.sum())
                ended = (gen.completion == eot) & keep
                s["eot"] += int(ended.any(-1).sum())
                lengths += [int(n) for n in gen.completion_mask.sum(-1)]
                answers = [tokenizer.decode(row[m == 1], skip_special_tokens=True)
                           for row, m in zip(gen.completion, gen.completion_mask)]
                passed = reward(answers, [c["meta"] for c in chunk])
                for c, ok in zip(chunk, passed.tolist()):
                    s["mbpp" if c["meta"].get("benchmark", "").lower().startswith("mbpp") else "humaneval"].append(ok)
            n = max(s["tokens"], 1.0)
            out.update({f"eval/{mode}_teacher_nll": s["nll"] / n, f"eval/{mode}_kl_s_t": s["kl"] / n,
                        f"eval/{mode}_len": statistics.mean(lengths), f"eval/{mode}_eot": s["eot"] / len(prompts),
                        f"eval/{mode}_mbpp_pass": statistics.mean(s["mbpp"]) if s["mbpp"] else float("nan"),
                        f"eval/{mode}_humaneval_pass": statistics.mean(s["humaneval"]) if s["humaneval"] else float("nan"),
                        f"eval/{mode}_gen_s": s["gen_s"]})
            if mode == "greedy":
                out["eval/gen_s_per_answer_token"] = s["gen_s"] / n
    finally:
        reward.close()
    return out


def eval_dir(run_dir: Path, teacher, tokenizer, prompts, args, seed: int, model_path: Path | None = None) -> None:
    from transformers import AutoModelForCausalLM

    target = run_dir / "eval.json"
    if target.exists():
        return
    path = model_path or run_dir / "student"
    model = teacher if path == "teacher" else AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    t0 = time.time()
    res = evaluate(model, teacher, tokenizer, prompts, args, seed)
    res["eval/seconds"] = time.time() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(res, indent=2) + "\n")
    log.info("%s: %s", run_dir, {k: round(v, 4) for k, v in res.items()})


def teacher_folder(run_dir: Path) -> Path:
    """The teacher's HF folder as the run resolved it (the installed GGUF's conversion in the cache)."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    return Path(cfg["teacher"]["loaded"]["name_or_path"])


def run_seed(seed: int, args, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    healed = Path(args.healed)
    if not (healed / "model.safetensors").exists():
        sys.exit(f"no healed student at {healed}: run `SEEDS=0 bash experiments/smollm2_prune/run.sh` first "
                 "(or pass --healed)")
    # one starting point for every row and seed: the healed student after a short SFT on teacher answers
    # (seed 0); the seeds vary the rows' own randomness (data order, sampled answers)
    start = out / "start"
    train([f"student.name_or_path={healed}", "seed=0", *ROWS["seqkd"]], start, args, args.sft_steps)
    for row in args.rows:
        train([f"student.name_or_path={start / 'student'}", f"seed={seed}", *ROWS[row]], out / f"seed{seed}" / row,
              args, args.steps)
    if args.no_eval:
        return
    tfolder = args.teacher or teacher_folder(start)
    tokenizer = AutoTokenizer.from_pretrained(tfolder)
    teacher = AutoModelForCausalLM.from_pretrained(tfolder, dtype=torch.float32).eval()
    prompts = heldout_prompts(tokenizer, args)
    if seed == min(args.all_seeds):  # the references, once: the teacher, the healed student, the start
        eval_dir(out / "teacher", teacher, tokenizer, prompts, args, 0, model_path="teacher")
        eval_dir(out / "healed", teacher, tokenizer, prompts, args, 0, model_path=healed)
        eval_dir(start, teacher, tokenizer, prompts, args, 0)
    for name in args.rows:
        eval_dir(out / f"seed{seed}" / name, teacher, tokenizer, prompts, args, seed)


# ---------------------------------------------------------------------------------------- report
def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x == x]
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (float("nan"), 0.0)


def collect(out: Path) -> dict:
    rows = {}
    for name in ["healed", "start", *ROWS]:
        dirs = [out / name] if name in ("healed", "start") else sorted(out.glob(f"seed*/{name}"))
        per_seed = {}
        for d in dirs:
            ev = d / "eval.json"
            if ev.exists():
                rec = json.loads(ev.read_text())
                rec.update(_train_metrics(d))
                per_seed[d.parent.name if name not in ("healed", "start") else "-"] = rec
        if per_seed:
            keys = sorted({k for r in per_seed.values() for k in r})
            stats = {k: mean_std([r.get(k, float("nan")) for r in per_seed.values()]) for k in keys}
            rows[name] = {"n": len(per_seed), "per_seed": per_seed,
                          "mean": {k: m for k, (m, _) in stats.items()}, "std": {k: sd for k, (_, sd) in stats.items()}}
    teacher = out / "teacher" / "eval.json"
    return {"teacher": json.loads(teacher.read_text()) if teacher.exists() else None, "rows": rows}


def _train_metrics(run_dir: Path) -> dict[str, float]:
    """Median step and generation seconds from the run's CSV (the first step, which warms up, left out)."""
    from distill.runs import read_metrics

    hist = read_metrics(run_dir) if (run_dir / "csv").exists() else []
    out = {}
    for key in ("train/step_s", "train/generation_s"):
        xs = [r[key] for r in hist if key in r][1:]
        if xs:
            out[key] = statistics.median(xs)
    final = [r for r in hist if "val/loss" in r]
    if final:
        out["val/loss"], out["val/kl"] = final[-1]["val/loss"], final[-1].get("val/kl", float("nan"))
    return out


COLUMNS = [("eval/greedy_teacher_nll", "teacher NLL, greedy"), ("eval/sampled_teacher_nll", "teacher NLL, sampled"),
           ("eval/greedy_kl_s_t", "KL(S||T), greedy"), ("eval/sampled_kl_s_t", "KL(S||T), sampled"),
           ("eval/greedy_mbpp_pass", "MBPP pass@1"), ("eval/greedy_humaneval_pass", "HumanEval pass@1"),
           ("eval/greedy_len", "length (greedy)"), ("eval/greedy_eot", "ends at EOT (greedy)"),
           ("eval/sampled_eot", "ends at EOT (sampled)"), ("train/step_s", "s/step"),
           ("train/generation_s", "gen s/step")]


def table(results: dict) -> str:
    head = "| row | n | " + " | ".join(c for _, c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    t = results.get("teacher")
    if t:
        lines.append("| teacher | 1 | " + " | ".join(f"{t[k]:.3f}" if k in t else "-" for k, _ in COLUMNS) + " |")
    for name, r in results["rows"].items():
        cells = []
        for k, _ in COLUMNS:
            m, s = r["mean"].get(k, float("nan")), r["std"].get(k, 0.0)
            cells.append("-" if m != m else f"{m:.3f} ± {s:.3f}")
        lines.append(f"| {name} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["rows"])
    panels = [("eval/greedy_teacher_nll", "teacher NLL of greedy answers (nats/token)"),
              ("eval/sampled_kl_s_t", "KL(student || teacher), sampled answers"),
              ("eval/greedy_eot", "share of greedy answers ending at <|im_end|>")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for ax, (key, title) in zip(axes, panels):
        means = [results["rows"][n]["mean"].get(key, float("nan")) for n in names]
        stds = [results["rows"][n]["std"].get(key, 0.0) for n in names]
        ax.barh(names, means, xerr=stds, color=["#999999" if n in ("healed", "start") else "#3a6ea5" for n in names])
        t = results.get("teacher") or {}
        if key in t:
            ax.axvline(t[key], color="#c0392b", ls="--", label="teacher")
            ax.legend(loc="lower right")
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
    fig.suptitle("real_on_policy: healed pruned SmolLM2 students vs SmolLM2-135M-Instruct (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(args) -> None:
    out = Path(args.out)
    results = collect(out)
    results["settings"] = {k: getattr(args, k) for k in ("steps", "sft_steps", "mbpp", "humaneval", "new_tokens")}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = table(results)
    (HERE / "table.md").write_text(md + "\n")
    print(md)
    if results["rows"]:
        chart(results, HERE / "chart.png")
    subprocess.run(["distill-compare", str(out), "--out", str(HERE / "results"), "--objective",
                    "eval/greedy_teacher_nll", "--direction", "min", "--metrics", *EVAL_METRICS, "val/loss"],
                   check=False, cwd=REPO)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--all-seeds", type=int, nargs="+", default=[0, 1, 2], help="the study's seeds (the teacher "
                    "is evaluated by the process that runs the smallest)")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps of every row (batch 4)")
    ap.add_argument("--sft-steps", type=int, default=6, help="SFT steps on teacher answers before the rows")
    ap.add_argument("--healed", default=str(REPO / "experiments/smollm2_prune/runs/seed0/student"),
                    help="the healed pruned student (experiment=smollm2_prune's export)")
    ap.add_argument("--teacher", default=None, help="the teacher's HF folder (default: the installed SmolLM2 GGUF's)")
    ap.add_argument("--mbpp-path", default=str((REPO / "../shared/data/mbpp/mbpp.jsonl").resolve()))
    ap.add_argument("--mbpp", type=int, default=8, help="held-out MBPP test tasks (the first N)")
    ap.add_argument("--humaneval", type=int, default=8, help="held-out HumanEval tasks (the first N)")
    ap.add_argument("--new-tokens", type=int, default=128, help="the most tokens of an evaluated answer")
    ap.add_argument("--eval-batch", type=int, default=16, help="prompts per generate call (every model the same)")
    ap.add_argument("--threads", default="null")
    ap.add_argument("--out", default=str(HERE / "runs"))
    ap.add_argument("--no-eval", action="store_true", help="train only")
    ap.add_argument("--report", action="store_true", help="only collect what the runs hold")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads != "null":
        torch.set_num_threads(int(args.threads))
    if not args.report:
        for seed in args.seeds:
            run_seed(seed, args, Path(args.out))
    report(args)


if __name__ == "__main__":
    main()
