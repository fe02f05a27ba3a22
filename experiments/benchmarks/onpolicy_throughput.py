"""On-policy step throughput on real models: distill's OPD and GKD steps against TRL's DistillationTrainer, in one run.

    python experiments/benchmarks/onpolicy_throughput.py --mbpp /data/mbpp/mbpp.jsonl            # the measurement
    python experiments/benchmarks/onpolicy_throughput.py --mbpp /data/mbpp/mbpp.jsonl \\
        --steps 1 --warmup 0 --rounds 1 --batch-size 1 --new-tokens 4                             # does it run

The three methods run at equal settings:

* teacher: SmolLM2-135M-Instruct (``teacher=smollm2-135m-instruct``, float32);
* student: the one cut from it (``student=pruned``: 12 of its 30 layers by block influence, cut
  once on the run's data and cached), the same weights at the start of every method's run;
* prompts: the same MBPP chat prompts (the first ``--prompts`` of the train split, rendered with
  SmolLM2's chat template), ``--batch-size`` per step, in the same order;
* every prompt answered by the student each step (lmbda 1: ``sequences=student``, one generation
  per step, ``sequences.reuse=1``; TRL's DistillationTrainer always generates), up to
  ``--new-tokens`` tokens at T = 1 (top-k 0, top-p 1), stopping at ``<|im_end|>``;
* AdamW at the ``smollm2_opd`` preset's learning rate 3e-4 without weight decay, warmup 5, clipping
  at 1.0, fp32, ``--threads`` torch threads.

Methods:

* ``opd``: ``distill-train experiment=smollm2_opd`` (``loss=opd``: the teacher scores only the
  sampled tokens, its head over the last hidden states);
* ``gkd``: the same run with ``loss=jsd`` (generalised JSD, beta 0.5, the teacher's full logits);
* ``trl``: ``trl.DistillationTrainer`` (TRL 1.16; generalised JSD at ``beta`` 0.5,
  ``max_completion_length``, ``temperature`` 1, ``top_k`` 0), given the same rendered prompt text as
  a plain-text ``prompt`` column, the same student weights and the same loaded teacher model.

Step time is the gap between optimizer-step ends (``--clock cpu``: CPU seconds of the process,
steady on a machine shared with other jobs; ``--clock wall`` on a quiet one), generation included.
The methods alternate for ``--rounds`` rounds of ``--warmup`` untimed and ``--steps`` timed steps;
each distill method's speed-up is the median over rounds of (TRL step time / its step time), and
the goal is 1.5x: printed ``OK`` or ``MISS``. Record the output in ``RESULTS.md``, misses included.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from common import StepClock, compose, fit_timed, machine, median, trl_tick  # noqa: E402  (sets sys.path)

LR, WARMUP, CLIP, BETA = 3e-4, 5, 1.0, 0.5
GOAL = 1.5
METHODS = ("opd", "gkd", "trl")
LABELS = {"opd": "distill OPD (loss=opd)", "gkd": "distill GKD (loss=jsd, beta 0.5)",
          "trl": "TRL DistillationTrainer (beta 0.5)"}


def overrides(args, method: str) -> list[str]:
    """The distill-train overrides of ``method`` (the TRL run reads its student, teacher and prompts
    from the ``opd`` config)."""
    out = ["experiment=smollm2_opd", f"data.source.path={args.mbpp}", f"data.source.max_examples={args.prompts}",
           f"data.batch_size={args.batch_size}", f"sequences.sampling.max_new_tokens={args.new_tokens}",
           "sequences.reuse=1", f"seed={args.seed}", "logger=none", "callbacks=none", "summary.enabled=false",
           "export.enabled=false", "trainer.limit_val_batches=0", "trainer.enable_model_summary=false",
           f"module.optimizer.lr={LR}", "module.optimizer.weight_decay=0.0", f"module.grad_clip={CLIP}"]
    if method == "gkd":
        out += ["loss=jsd", f"loss.components.jsd.beta={BETA}"]
    return out


def prompt_texts(parts) -> list[str]:
    """Each training example's prompt as the text distill samples from (chat template rendered,
    special tokens kept): the tokens before the first one that carries a loss."""
    parts.datamodule.setup("fit")
    texts = []
    for e in parts.datamodule.train_set.examples:
        labels = list(e["labels"])
        start = next((i for i, y in enumerate(labels) if y != -100), len(labels))
        texts.append(parts.tokenizer.decode(list(e["input_ids"])[:start], skip_special_tokens=False))
    return texts


def run_distill(args, method: str, total: int, clock: StepClock, out: Path, generated: list) -> None:
    cfg = compose("train", [*overrides(args, method), f"trainer.max_steps={total}", "trainer.log_every_n_steps=1"],
                  out / method)
    fit_timed(cfg, clock, on_step=lambda trainer: generated.append(
        float(trainer.callback_metrics.get("train/generated_tokens", float("nan")))))


def run_trl(args, total: int, clock: StepClock, out: Path) -> None:
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from distill.build import build_components

    # the pruned student (cached after the first cut) and the loaded teacher, as distill builds them
    parts = build_components(compose("train", overrides(args, "opd"), out / "trl_build")).load()
    student, teacher = parts.module.student.train(), parts.module.teacher.causal_lm()
    config = DistillationConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_steps=total, learning_rate=LR, weight_decay=0.0, lr_scheduler_type="cosine", warmup_steps=WARMUP,
        max_grad_norm=CLIP, optim="adamw_torch", logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=args.seed, beta=BETA,
        temperature=1.0, top_k=0, top_p=1.0, max_completion_length=args.new_tokens, bf16=False, fp16=False,
        gradient_checkpointing=False,  # TRL's default recomputes activations; distill's step keeps them
        shuffle_dataset=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config,
                                      train_dataset=Dataset.from_list([{"prompt": p} for p in prompt_texts(parts)]),
                                      processing_class=parts.tokenizer, callbacks=[trl_tick(clock)])
        trainer.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mbpp", required=True, help="a local mbpp.jsonl (as experiment=smollm2_opd's data.source.path)")
    ap.add_argument("--prompts", type=int, default=64, help="MBPP train prompts read (the first N)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method and round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    start_load = os.getloadavg()[0]
    out = Path(tempfile.mkdtemp(prefix="onpolicy_bench_"))
    total = args.warmup + args.steps
    times = {m: [] for m in args.methods}
    walls = {m: [] for m in args.methods}
    per_round: list[dict[str, float]] = []
    generated: dict[str, list[float]] = {m: [] for m in args.methods}
    for _ in range(args.rounds):
        this = {}
        for m in args.methods:
            clock = StepClock()
            if m == "trl":
                run_trl(args, total, clock, out)
            else:
                run_distill(args, m, total, clock, out, generated[m])
            d = clock.durations(args.warmup, args.clock)
            times[m] += d
            walls[m] += clock.durations(args.warmup, "wall")
            this[m] = median(d)
        per_round.append(this)
    med = {m: median(t) for m, t in times.items()}
    tokens = args.batch_size * args.new_tokens

    def speedup(m: str) -> float:
        """Median over rounds of TRL's step time over ``m``'s (> 1: ``m`` is faster)."""
        return median([rd["trl"] / rd[m] for rd in per_round])

    print(f"\n=== on-policy step (lmbda 1): SmolLM2-135M-Instruct teacher, pruned 12-layer student, {args.batch_size} "
          f"MBPP prompts x up to {args.new_tokens} new tokens, T=1, fp32 ({args.rounds} interleaved rounds x "
          f"{args.steps} timed steps after {args.warmup} warm-up, median; clock: {args.clock})")
    print(f"machine: {machine()} (load avg at start {start_load:.1f}, at end {os.getloadavg()[0]:.1f})")
    print(f"{'method':<38}{'step s':>9}{'wall s':>9}{'vs TRL':>9}")
    for m in args.methods:
        vs = f"{speedup(m):.2f}x" if "trl" in med and m != "trl" else "-"
        print(f"{LABELS[m]:<38}{med[m]:>9.3f}{median(walls[m]):>9.3f}{vs:>9}")
    print("per round (median step s): " + "; ".join(
        f"{i + 1}: " + ", ".join(f"{m} {v:.3f}" for m, v in rd.items()) for i, rd in enumerate(per_round)))
    for m in ("opd", "gkd"):
        gen = [g for g in generated.get(m, []) if g == g]
        if gen:
            print(f"{m}: generated tokens per step (median) {median(gen):.0f} of {tokens} possible "
                  "(<|im_end|> ends an answer early)")
    if "trl" in med:
        for m in (m for m in ("opd", "gkd") if m in med):
            s = speedup(m)
            print(f"{'OK  ' if s >= GOAL else 'MISS'}  {LABELS[m]} vs TRL: {s:.2f}x (goal {GOAL}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_step_s": med, "times": times, "walls": walls,
                                               "per_round": per_round, "machine": machine(), "args": vars(args)},
                                              indent=2))


if __name__ == "__main__":
    main()
