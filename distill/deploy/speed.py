"""CPU inference speed and quality of one student in every deployable form, side by side.

``python -m distill.deploy.speed --model <HF folder> --out <dir>`` (or ``--student tiny_stdlib``
to build the default student's architecture from its config) exports the model to ONNX (fp32 and
int8) and, where llama.cpp's converter is available, to GGUF (f16 and Q8_0); checks each against
PyTorch on held-out stdlib text; then times greedy generation of the same prompts with every
backend, in one process, at one thread count, interleaved round by round, so the ratios are
comparable even on a busy machine. Writes ``results.json`` and ``table.md``.

Tokens/s counts new tokens over the wall time of whole generations (prompt processing included),
each generation forced to ``--new-tokens`` tokens (no early stop at EOS).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

PROMPTS = ["def add(a, b):\n", "import os\n\n\nclass ", "for i in range(10):\n    ",
           "def read_file(path):\n    with open(path) as f:\n"]


def machine() -> dict[str, Any]:
    """The CPU as ``lscpu`` names it, core count, and the library versions that matter."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "").strip()
        info["cpus"] = fields.get("CPU(s)", "").strip()
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    for mod in ("onnxruntime", "llama_cpp", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def _torch_generator(model, n_new: int) -> Callable[[list[int]], int]:
    import torch

    def gen(ids: list[int]) -> int:
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=n_new, min_new_tokens=n_new,
                                 pad_token_id=model.config.pad_token_id or 0)
        return out.shape[1] - x.shape[1]

    return gen


def _ort_generator(runner, n_new: int) -> Callable[[list[int]], int]:
    return lambda ids: len(runner.greedy(ids, n_new, eos_token_id=None))


def _llama_generator(llm, n_new: int) -> Callable[[list[int]], int]:
    def gen(ids: list[int]) -> int:
        count = 0
        for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            count += 1
            if count >= n_new:
                break
        return count

    return gen


def time_backends(generators: dict[str, Callable[[list[int]], int]], prompts: Sequence[list[int]],
                  rounds: int = 3) -> dict[str, dict[str, float]]:
    """Tokens/s per backend: one warm-up, then ``rounds`` rounds that visit every backend in turn
    (interleaved, so a load change on the machine hits all of them alike); median over rounds."""
    for gen in generators.values():
        gen(prompts[0])
    per: dict[str, list[float]] = {name: [] for name in generators}
    for _ in range(rounds):
        for name, gen in generators.items():
            start = time.perf_counter()
            tokens = sum(gen(p) for p in prompts)
            per[name].append(tokens / (time.perf_counter() - start))
    return {name: {"tokens_per_s": statistics.median(v), "min": min(v), "max": max(v)}
            for name, v in per.items()}


def build_default_student(out_dir: Path, student: str = "tiny_stdlib") -> Path:
    """The architecture of ``conf/student/<student>.yaml`` with its tokenizer, saved as an HF folder
    (random weights: for speed only; pass a trained ``--model`` for meaningful quality numbers)."""
    from distill.build import build_checked
    from distill.config import compose_config

    cfg = compose_config("train", [f"student={student}", "teacher=none", "loss=ce"],
                         out_dir / "compose")
    checked = build_checked(cfg)
    model = checked.student.build()
    model.save_pretrained(out_dir / "student")
    checked.tokenizer.save_pretrained(out_dir / "student")
    return out_dir / "student"


def heldout_texts(max_chars: int = 60_000) -> list[str]:
    from distill.data.corpus import read_stdlib_texts

    return read_stdlib_texts("val", max_chars=max_chars)


def run(model_dir: Path, out_dir: Path, threads: int, new_tokens: int, rounds: int,
        gguf: bool = True) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.deploy import gguf as gguf_mod
    from distill.deploy.onnx import INT8_FILE, ONNX_FILE, OrtCausalLM, export_onnx, quantize_int8
    from distill.deploy.verify import check_onnx, heldout_batches, heldout_ce

    torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_dir = out_dir / "onnx"
    export_onnx(model_dir, onnx_dir)
    quantize_int8(onnx_dir / ONNX_FILE)
    tok = AutoTokenizer.from_pretrained(model_dir)
    batches = heldout_batches(tok, heldout_texts(), max_length=256, max_tokens=8192)
    onnx_check = check_onnx(model_dir, onnx_dir, [], PROMPTS, max_new_tokens=16, threads=threads,
                            batches=batches)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gens = {"PyTorch fp32": _torch_generator(model, new_tokens),
            "ONNX Runtime fp32": _ort_generator(OrtCausalLM(onnx_dir / ONNX_FILE, threads),
                                                new_tokens),
            "ONNX Runtime int8": _ort_generator(OrtCausalLM(onnx_dir / INT8_FILE, threads),
                                                new_tokens)}
    sizes = {"PyTorch fp32": sum(p.stat().st_size for p in model_dir.glob("*.safetensors")),
             "ONNX Runtime fp32": _onnx_size(onnx_dir / ONNX_FILE),
             "ONNX Runtime int8": _onnx_size(onnx_dir / INT8_FILE)}
    quality = {"PyTorch fp32": onnx_check["heldout"]["torch"],
               "ONNX Runtime fp32": onnx_check["heldout"]["onnx_fp32"],
               "ONNX Runtime int8": onnx_check["heldout"]["onnx_int8"]}
    gguf_report: dict[str, Any] = {}
    if gguf and gguf_mod.find_converter() is None:
        gguf_report["skipped"] = f"llama.cpp converter not found ({gguf_mod.FETCH_HINT})"
    elif gguf:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            gguf_report["skipped"] = "llama-cpp-python not installed"
        else:
            for kind in ("f16", "q8_0"):
                f = gguf_mod.export_gguf(model_dir, out_dir / "gguf" / f"model-{kind}.gguf", kind)
                gguf_report[kind] = gguf_mod.check_gguf(model_dir, f, PROMPTS, threads=threads)
                name = f"llama.cpp GGUF {kind}"
                # Timed without logits_all (llama.cpp's fast path); CE needs every position.
                gens[name] = _llama_generator(
                    gguf_mod.load_llama(f, threads=threads, logits_all=False), new_tokens)
                sizes[name] = f.stat().st_size
                quality[name] = heldout_ce(
                    _llama_logits_fn(gguf_mod.load_llama(f, n_ctx=512, threads=threads)), batches)
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    speed = time_backends(gens, prompts, rounds)
    base = speed["PyTorch fp32"]["tokens_per_s"]
    result = {"machine": machine(), "threads": threads, "new_tokens": new_tokens,
              "rounds": rounds, "prompts": PROMPTS, "model": str(model_dir),
              "speed": speed, "speedup": {k: v["tokens_per_s"] / base for k, v in speed.items()},
              "size_bytes": sizes, "heldout": quality,
              "onnx_check": {k: v for k, v in onnx_check.items() if k != "greedy"},
              "gguf": {k: ({kk: vv for kk, vv in v.items() if kk != "prompts"}
                           if isinstance(v, dict) else v) for k, v in gguf_report.items()}}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out_dir / "table.md").write_text(table(result))
    return result


def _onnx_size(path: Path) -> int:
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def _llama_logits_fn(llm):
    """Full-sequence logits from llama.cpp, one row at a time (for held-out CE)."""
    import numpy as np

    def fn(input_ids, attention_mask):
        out = []
        for ids, mask in zip(np.asarray(input_ids), np.asarray(attention_mask)):
            n = int(mask.sum())
            llm.reset()
            llm.eval(ids[:n].tolist())
            rows = np.asarray(llm.scores[:n], dtype=np.float32)
            pad = np.zeros((len(ids) - n, rows.shape[1]), dtype=np.float32)
            out.append(np.concatenate([rows, pad]))
        return np.stack(out)

    return fn


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"CPU: {m.get('cpu')} ({m.get('cpus')} CPUs), {r['threads']} thread(s); "
             f"{r['new_tokens']} new tokens x {len(r['prompts'])} prompts, median of "
             f"{r['rounds']} interleaved rounds.", "",
             "| backend | tokens/s | vs PyTorch | size (MB) | held-out CE | CE change |",
             "|---|---|---|---|---|---|"]
    ref = r["heldout"]["PyTorch fp32"]["loss"]
    for name, s in r["speed"].items():
        q = r["heldout"].get(name)
        ce = f"{q['loss']:.4f}" if q else "-"
        delta = f"{q['loss'] - ref:+.4f}" if q else "-"
        lines.append(f"| {name} | {s['tokens_per_s']:.0f} | {r['speedup'][name]:.2f}x | "
                     f"{r['size_bytes'][name] / 1e6:.2f} | {ce} | {delta} |")
    c = r["onnx_check"]
    lines += ["", f"ONNX fp32 vs PyTorch: max |logits diff| {c['logits_max_abs_diff']:.2e} "
                  f"(tolerance {c['atol']:g}); greedy tokens equal: {c['greedy_equal']}; "
                  f"int8 greedy equal: {c.get('int8_greedy_equal')}."]
    for kind, g in r["gguf"].items():
        if kind == "skipped":
            lines.append(f"GGUF: skipped ({g}).")
        else:
            lines.append(f"GGUF {kind} vs PyTorch next-token distribution: max TV {g['max_tv']:.2e}, "
                         f"max KL {g['max_kl']:.2e}, top-1 agreement {g['top1_agreement']:.2f}, "
                         f"tokenization equal: {g['tokenization_equal']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="an exported HF folder (e.g. <run>/student)")
    src.add_argument("--student", help="build conf/student/<name>.yaml from config (random weights)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-gguf", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = a.model or build_default_student(a.out, a.student)
    r = run(model, a.out, a.threads, a.new_tokens, a.rounds, gguf=not a.no_gguf)
    print(table(r))


if __name__ == "__main__":
    main()
