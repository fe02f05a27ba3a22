"""Load the weights a :class:`~distill.evaluation.sources.local.LocalModel` names: an HF folder or
hub id, a LoRA adapter on its base, or a training run's checkpoint (exported to an HF folder
first, by :mod:`distill.run_student`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

# ``spec`` is a :class:`~distill.evaluation.sources.local.LocalModel`, which calls this module: it
# is typed loosely so that the import points one way (sources -> loading).
LocalModel = Any

log = logging.getLogger(__name__)


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"model.dtype must be auto, float32, bfloat16 or float16; got {dtype!r}")


def resolve_checkpoint(spec: "LocalModel", work_dir: Path) -> str:
    """A run's checkpoint as an HF folder.

    Accepts an exported student folder, a run directory (uses ``<run>/student`` if the run
    exported one, else exports ``checkpoints/last.ckpt``) or a ``.ckpt`` file (rebuilt from the
    run's saved Hydra config by :func:`distill.run_student.export_checkpoint`).
    """
    ckpt = Path(spec.checkpoint)
    if not ckpt.exists():
        raise FileNotFoundError(f"model.checkpoint: {ckpt} does not exist")
    if ckpt.is_dir():
        if (ckpt / "config.json").exists():
            return str(ckpt)
        if (ckpt / "student" / "config.json").exists():
            return str(ckpt / "student")
        run_dir, ckpt_file = ckpt, ckpt / "checkpoints" / "last.ckpt"
    else:
        ckpt_file = ckpt
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out = work_dir / "exported_student"
    if (out / "config.json").exists():
        return str(out)
    from distill.run_student import export_checkpoint

    log.info("exporting %s (run %s) -> %s", ckpt_file, run_dir, out)
    export_checkpoint(run_dir, ckpt_file, out, merge_lora=True)
    return str(out)


def load_hf_model(spec: "LocalModel", work_dir: Path | None = None):
    """(model, tokenizer, device) for hf / lora / checkpoint specs; model in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = spec.kind
    device = _pick_device(spec.device_name)
    dtype = _pick_dtype(spec.dtype, device)
    path = getattr(spec, "weights_path", None) or spec.path  # a .gguf path: its converted folder
    if kind == "checkpoint":
        path = resolve_checkpoint(spec, Path(work_dir or "."))
    adapter = spec.adapter
    if kind == "lora" and adapter is None:
        adapter, path = path, None
    if kind == "lora" and path is None:
        cfg_file = Path(adapter, "adapter_config.json")
        if not cfg_file.exists():
            raise FileNotFoundError(f"model.adapter: {cfg_file} not found")
        path = json.loads(cfg_file.read_text())["base_model_name_or_path"]
    if path is None:
        raise ValueError(f"model {spec.name}: no weights to load (set path)")
    tok_path = spec.tokenizer_path or (adapter if adapter and Path(adapter, "tokenizer_config.json")
                                  .exists() else path)
    log.info("loading %s model %s from %s%s", spec.role, spec.name, path,
             f" + adapter {adapter}" if adapter else "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                     trust_remote_code=spec.trust_remote_code)
    except OSError as exc:
        raise OSError(f"model {spec.name}: cannot load {path!r}: {exc}") from exc
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if spec.merge_lora:
            model = model.merge_and_unload()
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token else tokenizer.unk_token
    tokenizer.padding_side = "left"
    return model, tokenizer, device
