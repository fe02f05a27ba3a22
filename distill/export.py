"""Export a trained student as a Hugging Face folder (LoRA merged, or as an adapter).

``distill-export ckpt=<run>/checkpoints/last.ckpt out=<dir>`` rebuilds the run's module from its
saved Hydra config, loads the checkpoint and writes the student so that
``AutoModelForCausalLM.from_pretrained(<dir>)`` (or ``PeftModel.from_pretrained``) reloads it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def export_student(student: torch.nn.Module, tokenizer, out_dir: str | Path, merge_lora: bool = True) -> Path:
    """Save ``student`` (and its tokenizer) to ``out_dir``.

    A PEFT model is merged into its base weights (``merge_lora=True``: a plain HF model that needs
    no peft to load) or saved as an adapter folder that names its base model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = student
    if hasattr(student, "merge_and_unload"):
        if merge_lora:
            import copy

            model = copy.deepcopy(student).merge_and_unload()
        else:
            log.info("saving the LoRA adapter only (load with PeftModel.from_pretrained(base, %s))", out)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    log.info("exported student -> %s", out)
    return out


def export_checkpoint(run_dir: str | Path, ckpt: str | Path | None = None, out: str | Path | None = None,
                      merge_lora: bool = True) -> Path:
    """Rebuild a run from ``<run_dir>/.hydra/config.yaml``, load a checkpoint, export the student."""
    from omegaconf import OmegaConf

    from distill.train import build_components

    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found: pass the run directory that holds .hydra/config.yaml")
    cfg = OmegaConf.load(cfg_path)
    ckpt = Path(ckpt) if ckpt else run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} not found")
    parts = build_components(cfg)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    parts.module.load_state_dict(state["state_dict"])
    return export_student(parts.module.student, parts.tokenizer, out or run_dir / "student", merge_lora)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a training run's output directory")
    p.add_argument("--ckpt", help="checkpoint (default: <run_dir>/checkpoints/last.ckpt)")
    p.add_argument("--out", help="output folder (default: <run_dir>/student)")
    p.add_argument("--adapter", action="store_true", help="save a LoRA adapter instead of merged weights")
    a = p.parse_args(argv if argv is not None else sys.argv[1:])
    print(export_checkpoint(a.run_dir, a.ckpt, a.out, merge_lora=not a.adapter))
