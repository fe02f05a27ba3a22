"""GPU check: the paths CPU tests cannot run, on one CUDA device, with tokens/s and peak memory.

    python experiments/gpu_check/run.py                   # all checks; results.json next to this file
    python experiments/gpu_check/run.py --out /tmp/r.json --steps 3

On a machine without CUDA it prints why and writes a results file saying it skipped (exit 0), so
CI and CPU users can run it too. Checks, each in this process, one after another:

1. ``bf16``: a real-size student (Qwen2.5-Coder-0.5B's architecture, random weights from config)
   trained with bf16 weights under bf16 autocast against a 1.5B teacher, through the training
   module's step (``loss=kd_fused``), for ``--steps`` optimizer steps.
2. ``qlora``: the same pair with the teacher in 4-bit NF4 and a QLoRA student (NF4 base,
   bf16 LoRA adapters, gradient checkpointing). bitsandbytes loads k-bit weights only through
   ``from_pretrained``, so both random models are first saved to a temporary folder.
3. ``liger``: Liger-Kernel's fused linear JSD against our PyTorch fused forward KL (value and
   gradients), where ``liger-kernel`` is installed.

Each records tokens/s, ``torch.cuda.max_memory_allocated`` and the loss; a failing check records
its error and the others still run. The GPU's name is in the results.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent / "real_size"))

GIB = 1024 ** 3


def _module(student_spec, teacher_spec, loss_name: str):
    import torch

    from distill.config import instantiate, load_group
    from distill.module import DistillationModule
    from distill.teachers.hf import HFTeacher

    teacher = HFTeacher(teacher_spec)
    loss = instantiate(load_group("loss", loss_name), f"loss={loss_name}")
    loss.configure(student_spec.info(), teacher.info(), teacher.kind)
    module = DistillationModule(student_spec, teacher, loss, optimizer=functools.partial(torch.optim.AdamW, lr=1e-5),
                                grad_clip=1.0)
    module.configure_model()
    module.student.cuda().train()
    teacher.to(torch.device("cuda"))
    return module


def _train(module, steps: int, batch: int, seq: int) -> dict:
    import torch

    opt = module.optimizer_factory(module.trainable_parameters())
    g = torch.Generator().manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(steps):
        ids = torch.randint(0, 151_000, (batch, seq), generator=g).cuda()
        b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        torch.cuda.synchronize()
        t = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            value, _ = module.step_loss(b, 0, backward=lambda l: l.backward())
        torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.time() - t)
        losses.append(float(value))
    timed = times[1:] or times  # the first step allocates the optimizer state
    return {"steps": steps, "batch": batch, "seq_len": seq, "loss": losses,
            "tokens_per_s": round(batch * seq / (sum(timed) / len(timed)), 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
            "finite": all(v == v and abs(v) != float("inf") for v in losses)}


def check_bf16(args) -> dict:
    from distill.models import ModelSpec
    from run import QWEN_05B, QWEN_15B  # experiments/real_size/run.py

    module = _module(ModelSpec(config=QWEN_05B, tokenizer="unused", dtype="bfloat16", role="student"),
                     ModelSpec(config=QWEN_15B, tokenizer="unused", dtype="bfloat16"), "kd_fused")
    return _train(module, args.steps, args.batch, args.seq)


def check_qlora(args) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill.models import ModelSpec
    from run import LORA, QWEN_05B, QWEN_15B

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for role, cfg in (("student", QWEN_05B), ("teacher", QWEN_15B)):
            kwargs = dict(cfg)
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs),
                                                     dtype=torch.bfloat16)
            model.save_pretrained(Path(tmp) / role)
            paths[role] = str(Path(tmp) / role)
            del model
        student = ModelSpec(paths["student"], tokenizer="unused", dtype="bfloat16", quantization="4bit", lora=LORA,
                            gradient_checkpointing=True, role="student")
        teacher = ModelSpec(paths["teacher"], tokenizer="unused", dtype="bfloat16", quantization="4bit")
        module = _module(student, teacher, "kd_fused")
        out = _train(module, args.steps, args.batch, args.seq)
        out["teacher_4bit_linear"] = type(module.teacher.model.model.layers[0].mlp.down_proj).__name__
        return out


def check_liger(args) -> dict:
    import importlib.util

    import torch

    if importlib.util.find_spec("liger_kernel") is None:
        return {"status": "skipped: liger-kernel is not installed (pip install liger-kernel)"}
    from distill.losses.components import ForwardKL
    from distill.losses.fused import Fused
    from distill.types import StudentOutput, TeacherOutput

    torch.manual_seed(0)
    n, d, v = 2048, 896, 151936
    results = {}
    for backend in ("torch", "liger"):
        h = torch.randn(1, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = (torch.randn(v, d, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
        th = torch.randn(1, n, 1536, device="cuda", dtype=torch.bfloat16)
        tw = torch.randn(v, 1536, device="cuda", dtype=torch.bfloat16) * 0.02
        comp = ForwardKL(execution=Fused(backend=backend))
        inputs = _loss_inputs(StudentOutput(last_hidden=h, lm_head_weight=w),
                              TeacherOutput(last_hidden=th, lm_head_weight=tw), n)
        value = comp(inputs).value
        value.backward()
        results[backend] = (value.detach().float(), h.grad.float(), w.grad.float())
    t, lg = results["torch"], results["liger"]
    return {"value_torch": float(t[0]), "value_liger": float(lg[0]),
            "rel_value_diff": float((t[0] - lg[0]).abs() / t[0].abs().clamp_min(1e-12)),
            "max_rel_grad_hidden": float((t[1] - lg[1]).abs().max() / t[1].abs().max()),
            "max_rel_grad_head": float((t[2] - lg[2]).abs().max() / t[2].abs().max())}


def _loss_inputs(student, teacher, n: int):
    import torch

    from distill.losses.components import LossInputs

    targets = torch.randint(0, 151936, (1, n), device="cuda")
    mask = torch.ones_like(targets, dtype=torch.bool)
    return LossInputs(student=student, teacher=teacher, targets=targets, mask=mask, temperature=1.0,
                      token_weights=mask.float() / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--only", nargs="*", choices=["bf16", "qlora", "liger"])
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        reason = f"no CUDA device (torch {torch.__version__}); nothing to check on this machine"
        print(f"gpu_check: skipped: {reason}")
        Path(args.out).write_text(json.dumps({"skipped": reason}, indent=2))
        return
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
               "settings": vars(args), "checks": {}}
    for name, fn in (("bf16", check_bf16), ("qlora", check_qlora), ("liger", check_liger)):
        if args.only and name not in args.only:
            continue
        t = time.time()
        try:
            results["checks"][name] = {**fn(args), "wall_s": round(time.time() - t, 1)}
        except Exception as e:
            results["checks"][name] = {"status": f"failed: {type(e).__name__}: {e}",
                                       "traceback": traceback.format_exc()[-2000:]}
        print(name, json.dumps(results["checks"][name])[:500], flush=True)
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"gpu_check: results in {args.out}")


if __name__ == "__main__":
    main()
