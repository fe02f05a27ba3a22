"""On-policy step throughput: distill (sequences=student) vs TRL's GKDTrainer at lmbda=1, side by side.

    DISTILL_CACHE=/tmp/dcache python experiments/benchmarks/onpolicy_throughput.py \
        --teacher <trained teacher folder> --tokenizer <its tokenizer folder>          # a few minutes
    python experiments/benchmarks/onpolicy_throughput.py --steps 4 --rounds 1 --warmup 1 # a quick look

One on-policy GKD step, the same for both: the embedded default's student (2 x 96 Llama) and
teacher (4 x 256 Llama; ``--teacher`` folder, else the same architecture with random weights:
throughput does not depend on the weights beyond when EOS comes), the same packed stdlib blocks,
16 prompts per step = the first ``--prompt-tokens`` tokens of each block, ``--new-tokens`` sampled
at T = 1 (top_k 0, top_p 1, KV cache, stop at EOS), then the generalised JSD (beta 0.5) of student
and teacher on the generated tokens, AdamW 3e-3 (wd 0.1, betas 0.9/0.95), clipping at 1.0,
warmup + cosine, fp32, one torch thread. Methods:

* ``distill``: ``distill-train``'s path with ``sequences=student loss=jsd`` (``build_components`` +
  the configured Lightning ``Trainer``; progress bar and per-step logging on, file loggers,
  checkpoints and validation off);
* ``trl``: ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=1`` (every step generates with the
  student), ``beta=0.5``, ``max_new_tokens`` and ``temperature`` as above, ``bf16=False``, fed by a
  collator that gives it the same left-padded prompts.

The methods alternate for ``--rounds`` rounds (``--warmup`` untimed steps, then ``--steps`` timed
ones each); step time is the gap between optimizer-step ends in CPU seconds of the process
(``--clock cpu``; ``--clock wall`` on a quiet machine), generation included. Tokens/s counts the
tokens each step trains on: 16 x (prompt + new tokens). Comparisons: median over rounds of the
within-round step-time ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import warnings
from functools import partial
from pathlib import Path

import torch

from common import StepClock, compose, fit_timed, machine, median, trl_tick  # noqa: E402  (sets sys.path)

LR, WD, BETAS, WARMUP, CLIP = 3e-3, 0.1, (0.9, 0.95), 30, 1.0


class Setup:
    def __init__(self, args, out: Path):
        from distill.build import build_checked

        self.args, self.out = args, out
        self.overrides = [f"seed={args.seed}", f"data.batch_size={args.batch_size}", "data.seq_len=128",
                          "logger=none", "callbacks=none", "summary.enabled=false", "export.enabled=false",
                          "trainer.limit_val_batches=0", "trainer.enable_model_summary=false", "loss=jsd",
                          "sequences=student", f"sequences.prompts.prompt_tokens={args.prompt_tokens}",
                          f"sequences.sampling.max_new_tokens={args.new_tokens}"]
        if args.teacher:
            self.overrides += ["teacher=hf", f"teacher.model.name_or_path={args.teacher}"]
        else:
            self.overrides.append("teacher.pretrain=null")
        if args.tokenizer:
            self.overrides.append(f"student.tokenizer={args.tokenizer}")
        checked = build_checked(compose("train", self.overrides, out / "probe"))
        self.tokenizer = checked.tokenizer
        self.student_spec, self.teacher_spec = checked.student, checked.teacher.spec
        checked.datamodule.setup("fit")
        self.examples = checked.datamodule.train_set.examples
        self.pad_id = self.tokenizer.pad_token_id
        self.tokens_per_step = args.batch_size * (args.prompt_tokens + args.new_tokens)

    def student(self):
        torch.manual_seed(self.args.seed)
        return self.student_spec.build().train()

    def teacher(self):
        return self.teacher_spec.build().eval().requires_grad_(False)


def run_distill(setup: Setup, total: int, clock: StepClock, generated: list) -> None:
    cfg = compose("train", [*setup.overrides, f"trainer.max_steps={total}", "trainer.log_every_n_steps=1"],
                  setup.out / "distill")
    fit_timed(cfg, clock, on_step=lambda trainer: generated.append(
        float(trainer.callback_metrics.get("train/generated_tokens", float("nan")))))


def trl_collate(examples: list[dict], pad_id: int, prompt_tokens: int) -> dict:
    """The data batch plus the left-padded prompts TRL's GKDTrainer generates from."""
    from distill.data.datamodule import collate
    from distill.onpolicy.prompts import left_pad

    batch = collate(examples, pad_id)
    prompts, mask = left_pad([torch.as_tensor(e["input_ids"][:prompt_tokens]) for e in examples], pad_id)
    batch.update(prompts=prompts, prompt_attention_mask=mask)
    return batch


def run_trl(setup: Setup, total: int, clock: StepClock) -> None:
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    a = setup.args
    args = GKDConfig(
        output_dir=str(setup.out / "trl"), per_device_train_batch_size=a.batch_size, max_steps=total,
        learning_rate=LR, weight_decay=WD, adam_beta1=BETAS[0], adam_beta2=BETAS[1], lr_scheduler_type="cosine",
        warmup_steps=WARMUP, max_grad_norm=CLIP, optim="adamw_torch", logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, dataloader_num_workers=0, seed=a.seed, lmbda=1.0, beta=0.5,
        seq_kd=False, temperature=1.0, max_new_tokens=a.new_tokens, max_length=128, bf16=False, fp16=False,
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GKDTrainer(model=setup.student(), teacher_model=setup.teacher(), args=args,
                             train_dataset=Dataset.from_list(setup.examples),
                             data_collator=partial(trl_collate, pad_id=setup.pad_id, prompt_tokens=a.prompt_tokens),
                             processing_class=setup.tokenizer, callbacks=[trl_tick(clock)])
        trainer.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per method and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--methods", nargs="+", default=["distill", "trl"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    start_load = os.getloadavg()[0]
    out = Path(tempfile.mkdtemp(prefix="onpolicy_bench_"))
    setup = Setup(args, out)
    total = args.warmup + args.steps
    times = {m: [] for m in args.methods}
    walls = {m: [] for m in args.methods}
    per_round = []
    generated: list[float] = []
    for r in range(args.rounds):
        this = {}
        for m in args.methods:
            clock = StepClock()
            if m == "distill":
                run_distill(setup, total, clock, generated)
            else:
                run_trl(setup, total, clock)
            d = clock.durations(args.warmup, args.clock)
            times[m] += d
            walls[m] += clock.durations(args.warmup, "wall")
            this[m] = median(d)
        per_round.append(this)
    med = {m: median(t) for m, t in times.items()}
    tps = {m: setup.tokens_per_step / v for m, v in med.items()}

    def ratio(a: str, b: str) -> float:
        return median([rd[a] / rd[b] for rd in per_round])

    print(f"\n=== on-policy GKD step (lmbda=1): {args.batch_size} prompts x ({args.prompt_tokens} prompt + "
          f"{args.new_tokens} new tokens), JSD beta 0.5, student 2x96, teacher 4x256, V={len(setup.tokenizer)}, fp32 "
          f"({args.rounds} interleaved rounds x {args.steps} timed steps, median; clock: {args.clock})")
    print(f"machine: {machine()} (load avg at start {start_load:.1f}, at end {os.getloadavg()[0]:.1f})")
    print(f"{'method':<40}{'step s':>9}{'tokens/s':>10}{'vs TRL':>9}{'wall s':>9}")
    labels = {"distill": "distill (sequences=student loss=jsd)", "trl": "TRL GKDTrainer (lmbda=1, beta=0.5)"}
    for m in args.methods:
        vs = f"{1 / ratio(m, 'trl'):.2f}x" if "trl" in med else "-"
        print(f"{labels[m]:<40}{med[m]:>9.3f}{tps[m]:>10.0f}{vs:>9}{median(walls[m]):>9.3f}")
    print("per round (median step s): " + "; ".join(
        f"{i + 1}: " + ", ".join(f"{m} {v:.3f}" for m, v in rd.items()) for i, rd in enumerate(per_round)))
    gen = [g for g in generated if g == g]
    if gen:
        print(f"distill generated tokens per step (median): {median(gen):.0f} of {args.batch_size * args.new_tokens} "
              "possible (EOS ends a continuation early)")
    if {"distill", "trl"} <= med.keys():
        rel = 1 / ratio("distill", "trl")
        print(f"{'PASS' if rel >= 1.0 else 'MISS'}  distill on-policy throughput >= TRL's: {rel:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_step_s": med, "tokens_per_s": tps, "times": times,
                                               "per_round": per_round, "machine": machine(), "args": vars(args)},
                                              indent=2))


if __name__ == "__main__":
    main()
