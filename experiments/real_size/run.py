"""Real-size shapes without weights: peak memory and step time of one distillation step.

    python experiments/real_size/run.py                 # every configuration, results.json + table
    python experiments/real_size/run.py --only full/kd_fused/512 --budget-gib 12

Student: Qwen2.5-Coder-0.5B's architecture, teacher: Qwen2.5-Coder-1.5B's, both written out below
and built from config with random weights (no download; the shapes, not the values, set memory
and time). One optimizer step of the real training module (``DistillationModule.step_loss`` with
backward, then AdamW) on a random batch, bfloat16 weights as on a GPU (``student.dtype=bfloat16``;
optimizer state in the parameters' dtype), on this machine's CPU.

Each configuration runs in its own child process, so its peak resident memory (``ru_maxrss``) is
its own; a watchdog kills a child whose memory passes ``--budget-gib`` and records it as skipped.
The largest batch that fits 24 GiB is extrapolated from batch 1 and 2 where both ran (memory grows
linearly in the batch for a fixed sequence length): an estimate, marked as such.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

# config.json of Qwen/Qwen2.5-Coder-0.5B and -1.5B (the fields that set shapes)
QWEN_05B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True}
QWEN_15B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
            "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
GIB = 1024 ** 3

# (mode, loss, seq_len, batch): mode is full | lora | gc (full + gradient checkpointing) | lora_gc
CONFIGS = [
    ("full", "kd", 512, 1), ("full", "kd_chunked", 512, 1), ("full", "kd_fused", 512, 1),
    ("full", "kd_fused", 512, 2),
    ("lora", "kd_fused", 512, 1), ("gc", "kd_fused", 512, 1), ("lora_gc", "kd_fused", 512, 1),
    ("lora_gc", "kd_fused", 512, 2),
    ("full", "kd_fused", 1024, 1), ("lora_gc", "kd_fused", 1024, 1),
]


def name(mode: str, loss: str, seq: int, batch: int) -> str:
    return f"{mode}/{loss}/{seq}/b{batch}"


def one(mode: str, loss_name: str, seq: int, batch: int) -> dict:
    """One configuration, in this process: build, one optimizer step, measure."""
    import torch

    from distill.config import instantiate, load_group
    from distill.models import ModelSpec
    from distill.module import DistillationModule
    from distill.teachers.hf import HFTeacher

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    t0 = time.time()
    student = ModelSpec(config=QWEN_05B, tokenizer="unused", dtype="bfloat16", role="student",
                        lora=LORA if mode.startswith("lora") else None, gradient_checkpointing=mode.endswith("gc"))
    teacher = HFTeacher(ModelSpec(config=QWEN_15B, tokenizer="unused", dtype="bfloat16"))
    loss = instantiate(load_group("loss", loss_name), f"loss={loss_name}")
    loss.configure(student.info(), teacher.info(), teacher.kind)
    module = DistillationModule(student, teacher, loss, optimizer=functools.partial(torch.optim.AdamW, lr=1e-5),
                                grad_clip=None)
    module.configure_model()
    module.student.train()
    opt = module.optimizer_factory(module.trainable_parameters())
    built = time.time() - t0
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151_000, (batch, seq), generator=g)
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    t1 = time.time()
    value, _ = module.step_loss(batch_, 0, backward=lambda l: l.backward())
    opt.step()
    opt.zero_grad(set_to_none=True)
    step = time.time() - t1
    trainable = sum(p.numel() for p in module.trainable_parameters())
    return {"config": name(mode, loss_name, seq, batch), "mode": mode, "loss": loss_name, "seq_len": seq,
            "batch": batch, "status": "ran", "loss_value": float(value), "build_s": round(built, 1),
            "step_s": round(step, 1), "tokens_per_s": round(batch * seq / step, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
            "trainable_params": trainable, "threads": torch.get_num_threads()}


def run_child(cfg: tuple, budget_gib: float, timeout_s: float) -> dict:
    """One configuration in a child process, killed if it passes the memory budget."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak, start = 0.0, time.time()
    child = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, child.memory_info().rss / GIB)
        except psutil.NoSuchProcess:
            break
        if peak > budget_gib or time.time() - start > timeout_s:
            proc.kill()
            proc.wait()
            why = f"over the {budget_gib} GiB budget" if peak > budget_gib else f"over {timeout_s:.0f} s"
            return {"config": name(*cfg), "status": f"skipped: {why} (killed at {peak:.1f} GiB)"}
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"config": name(*cfg), "status": f"failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def largest_batch(results: list[dict], limit_gib: float = 24.0) -> dict[str, str]:
    """Batch that fits ``limit_gib`` from the b1 -> b2 slope (an extrapolation, not a run)."""
    ran = {r["config"]: r for r in results if r["status"] == "ran"}
    out = {}
    for r in ran.values():
        if r["batch"] != 1:
            continue
        two = ran.get(r["config"].replace("/b1", "/b2"))
        if two is None:
            continue
        slope = two["peak_rss_gib"] - r["peak_rss_gib"]
        if slope <= 0:
            continue
        fixed = r["peak_rss_gib"] - slope
        out[r["config"].rsplit("/", 1)[0]] = f"~{int((limit_gib - fixed) // slope)} (est.: {fixed:.1f} GiB + {slope:.2f} GiB/example)"
    return out


def table(results: list[dict]) -> str:
    rows = ["| configuration | status | peak RSS (GiB) | step (s) | tokens/s | trainable params |",
            "|---|---|---:|---:|---:|---:|"]
    for r in results:
        if r["status"] == "ran":
            rows.append(f"| {r['config']} | ran | {r['peak_rss_gib']} | {r['step_s']} | {r['tokens_per_s']} | "
                        f"{r['trainable_params']:,} |")
        else:
            rows.append(f"| {r['config']} | {r['status']} | | | | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", help="configurations mode/loss/seq[/bN] to run (default: all)")
    parser.add_argument("--budget-gib", type=float, default=12.0, help="kill a configuration above this RSS")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(*json.loads(args.child))), flush=True)
        return
    configs = [c for c in CONFIGS if not args.only or any(name(*c).startswith(o) for o in args.only)]
    results: list[dict] = []
    for cfg in configs:
        r = run_child(cfg, args.budget_gib, args.timeout_s)
        print(json.dumps(r), flush=True)
        results.append(r)
        summary = {"results": results, "largest_batch_24gib": largest_batch(results), "budget_gib": args.budget_gib,
                   "cpu": _cpu(), "command": " ".join(["python", "experiments/real_size/run.py", *sys.argv[1:]])}
        Path(args.out).write_text(json.dumps(summary, indent=2))  # after each: a killed study keeps its rows
    print(table(results))
    for k, v in summary["largest_batch_24gib"].items():
        print(f"largest batch in 24 GiB, {k}: {v}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
