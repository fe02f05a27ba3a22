"""``distill-export``: a trained student as files to ship, each checked against PyTorch.

``distill-export <run dir>`` rebuilds the student from the run's saved Hydra config, loads a
checkpoint and writes a Hugging Face folder (LoRA merged, or as an adapter) with a model card
(``README.md``: teacher, student, loss, data, steps, held-out metrics, pass@k, the command).
Options add deployable formats, verified as they are written:

* ``--onnx``: ONNX with past key values, fp32 and int8 (dynamic quantisation); ONNX Runtime
  logits must equal PyTorch's within ``--atol`` on held-out text and greedy tokens must match;
* ``--gguf f16,q8_0``: GGUF files by llama.cpp's converter; with llama-cpp-python installed,
  their next-token distributions are compared with PyTorch's.

See ``docs/deploy.md``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

# Re-exported: scripts and studies import them from here (distill.export.load_student).
from distill.run_student import export_checkpoint, export_student, load_student  # noqa: F401

log = logging.getLogger(__name__)

CHECK_PROMPTS = ["def add(a, b):\n", "import os\n\n\nclass ", "for i in range(10):\n    "]


def _heldout_texts(source: str) -> list[str]:
    from distill.evaluation.heldout import HeldoutSettings, load_texts

    return load_texts(HeldoutSettings(source=source, max_chars=100_000))


def export_onnx_checked(hf_dir: Path, texts: Sequence[str], atol: float, int8: bool = True
                        ) -> dict[str, Any]:
    """ONNX (+ int8) into ``<hf_dir>/onnx``, checked; raises if fp32 does not match PyTorch."""
    from distill.deploy.onnx import export_onnx, quantize_int8
    from distill.deploy.verify import check_onnx

    path = export_onnx(hf_dir, hf_dir / "onnx")
    if int8:
        quantize_int8(path)
    report = check_onnx(hf_dir, hf_dir / "onnx", texts, CHECK_PROMPTS, atol=atol)
    if not report["ok"]:
        raise RuntimeError(f"ONNX check failed: max |logits diff| {report['logits_max_abs_diff']:.3g} "
                           f"(tolerance {atol:g}), greedy tokens equal: {report['greedy_equal']}; "
                           f"see {hf_dir / 'deploy_checks.json'}")
    return report


def export_gguf_checked(hf_dir: Path, types: Sequence[str]) -> dict[str, Any]:
    """GGUF files into ``<hf_dir>/gguf``; checked with llama-cpp-python when it is installed."""
    from distill.deploy.gguf import check_gguf, export_gguf

    out: dict[str, Any] = {}
    for kind in types:
        f = export_gguf(hf_dir, hf_dir / "gguf" / f"model-{kind}.gguf", kind)
        try:
            out[kind] = check_gguf(hf_dir, f, CHECK_PROMPTS)
        except ImportError as exc:
            out[kind] = {"file": str(f), "check": f"skipped: {exc}"}
    return out


def _card_summary(onnx: dict | None, gguf: dict | None) -> dict[str, Any]:
    exports: dict[str, Any] = {}
    if onnx:
        exports["onnx"] = {"files": "onnx/model.onnx, onnx/model_int8.onnx",
                           "max_abs_logits_diff_vs_pytorch": f"{onnx['logits_max_abs_diff']:.2e}",
                           "greedy_tokens_equal": onnx["greedy_equal"],
                           "int8_heldout_ce_change": (f"{onnx['int8_ce_change']:+.4f}"
                                                      if "int8_ce_change" in onnx else None)}
    if gguf:
        exports["gguf"] = {k: (f"max TV {v['max_tv']:.2e}, top-1 agreement {v['top1_agreement']:.2f}"
                               if "max_tv" in v else v.get("check")) for k, v in gguf.items()}
    return exports


def main(argv: list[str] | None = None) -> None:
    import argparse

    from distill.config import prepare_app
    from distill.deploy.card import read_eval_summaries, write_model_card
    from distill.deploy.verify import LOGITS_ATOL

    prepare_app()

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a training run's output directory")
    p.add_argument("--ckpt", help="checkpoint (default: <run_dir>/checkpoints/last.ckpt)")
    p.add_argument("--out", help="output folder (default: <run_dir>/student)")
    p.add_argument("--adapter", action="store_true", help="save a LoRA adapter instead of merged weights")
    p.add_argument("--onnx", action="store_true", help="also export ONNX (fp32 + int8) and check it")
    p.add_argument("--no-int8", action="store_true", help="with --onnx: skip int8 quantisation")
    p.add_argument("--gguf", default="", help="comma-separated GGUF types, e.g. f16,q8_0")
    p.add_argument("--eval", action="append", default=[],
                   help="a distill-eval output folder or summary.json to put pass@k in the card")
    p.add_argument("--heldout", default="stdlib",
                   help="text for the ONNX checks: stdlib, a .jsonl, a text file or a folder")
    p.add_argument("--atol", type=float, default=LOGITS_ATOL, help="ONNX logits tolerance")
    a = p.parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("distill").setLevel(logging.INFO)

    student, tokenizer, step = load_student(a.run_dir, a.ckpt)
    out = export_student(student, tokenizer, a.out or Path(a.run_dir) / "student", not a.adapter)
    onnx = gguf = None
    checks: dict[str, Any] = {}
    if (a.onnx or a.gguf) and a.adapter:
        raise SystemExit("--onnx/--gguf need merged weights: drop --adapter")
    if a.onnx:
        onnx = checks["onnx"] = export_onnx_checked(out, _heldout_texts(a.heldout), a.atol,
                                                    int8=not a.no_int8)
    if a.gguf:
        gguf = checks["gguf"] = export_gguf_checked(out, [t.strip() for t in a.gguf.split(",") if t.strip()])
    if checks:
        (out / "deploy_checks.json").write_text(json.dumps(checks, indent=2, default=str))
    card = write_model_card(a.run_dir, out, steps=step, evals=read_eval_summaries(a.eval),
                            exports=_card_summary(onnx, gguf))
    print(out)
    log.info("model card -> %s", card)
