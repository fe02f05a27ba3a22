"""A training run's student outside training: rebuilt from the run's saved Hydra config and a
checkpoint (:func:`load_student`), and saved as a Hugging Face folder (:func:`export_student`).

Its own module, below both ``distill-export`` and ``distill-eval`` (which evaluates a run's
``.ckpt`` by exporting it first), so that neither app imports the other.
"""

from __future__ import annotations

import logging
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


def load_student(run_dir: str | Path, ckpt: str | Path | None = None):
    """``(student, tokenizer, global_step)`` rebuilt from ``<run_dir>/.hydra/config.yaml`` and a
    checkpoint. Only the student is built: the teacher's weights are never loaded."""
    from omegaconf import OmegaConf

    from distill.build import build_checked

    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found: pass the run directory that holds .hydra/config.yaml")
    ckpt = Path(ckpt) if ckpt else run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} not found (pass --ckpt <file>)")
    checked = build_checked(OmegaConf.load(cfg_path))
    student = checked.student.build()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    prefix = "student."
    weights = {k[len(prefix):]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise KeyError(f"{ckpt}: no '{prefix}*' weights in the checkpoint's state_dict")
    if state.get("frozen_base"):
        # a LoRA checkpoint holds the adapters only (distill.checkpointing.TrainableOnlyCheckpoint):
        # the frozen base came from its path when the student was built above
        result = student.load_state_dict(weights, strict=False)
        if result.unexpected_keys:
            raise KeyError(f"{ckpt}: weights this student does not have: {result.unexpected_keys[:5]}")
        trainable = {k for k, p in student.named_parameters() if p.requires_grad}
        missing = sorted(set(result.missing_keys) & trainable)
        if missing:
            raise KeyError(f"{ckpt}: trainable weights missing from the checkpoint: {missing[:5]}")
    else:
        student.load_state_dict(weights)
    return student.eval(), checked.tokenizer, state.get("global_step")


def export_checkpoint(run_dir: str | Path, ckpt: str | Path | None = None, out: str | Path | None = None,
                      merge_lora: bool = True) -> Path:
    """Rebuild a run's student, load a checkpoint, export it as an HF folder."""
    student, tokenizer, _ = load_student(run_dir, ckpt)
    return export_student(student, tokenizer, out or Path(run_dir) / "student", merge_lora)
