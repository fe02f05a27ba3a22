"""Checkpoints that fit a real run: no frozen base inside, and the random state a resume needs.

Two Lightning callbacks, both optional and independent:

* :class:`TrainableOnlyCheckpoint` drops every *frozen* parameter from ``checkpoint["state_dict"]``
  (a LoRA or QLoRA student's base: 14 GB per checkpoint for a 7B model) and records the base by
  path and fingerprint instead. The trainable parameters (adapters, projections), the buffers,
  the optimizer and scheduler states and the loop state stay. On resume it refuses a checkpoint
  trained on another base, and it checks the keys itself, since Lightning's strict loading must be
  off for the absent base keys.
* :class:`RNGState` saves the global torch / numpy / Python random states and puts them back when
  training restarts, so dropout (LoRA dropout included) draws what the uninterrupted run drew.
  The data order is the data loader's business (:mod:`distill.data.resumable`).

Wire them through the callbacks config (``+callbacks.trainable_only._target_=
distill.checkpointing.TrainableOnlyCheckpoint``) or a module's ``configure_callbacks``.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from distill.config import ConfigError

log = logging.getLogger(__name__)

#: values hashed per tensor for the fingerprint (evenly strided): cheap on a 7B base, and a
#: different checkpoint, seed or quantisation changes them.
SAMPLE = 4096


class BaseMismatchError(ConfigError, RuntimeError):
    """A checkpoint's trainable weights were trained on top of another frozen base."""


def frozen_keys(module: torch.nn.Module) -> list[str]:
    """``state_dict`` keys of the parameters that do not train (tied weights: every key)."""
    return sorted(k for k, v in module.state_dict(keep_vars=True).items()
                  if isinstance(v, torch.nn.Parameter) and not v.requires_grad)


def fingerprint(module: torch.nn.Module, keys: list[str]) -> str:
    """sha256 over the names, shapes, dtypes and a strided sample of the values of ``keys``."""
    state = module.state_dict(keep_vars=True)
    h = hashlib.sha256()
    for k in keys:
        t = state[k].detach()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        flat = t.reshape(-1)
        if flat.numel() and t.is_floating_point():
            step = max(1, flat.numel() // SAMPLE)
            h.update(flat[::step][:SAMPLE].float().cpu().numpy().tobytes())
        elif flat.numel():  # quantised (uint8 packed) or integer storage
            step = max(1, flat.numel() // SAMPLE)
            h.update(flat[::step][:SAMPLE].cpu().numpy().tobytes())
    return h.hexdigest()


def _base_path(module: L.LightningModule) -> str | None:
    spec = getattr(module, "student_spec", None)
    return getattr(spec, "name_or_path", None) if spec is not None else None


class TrainableOnlyCheckpoint(L.Callback):
    """Checkpoints without the frozen base weights; resuming onto another base is refused."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The base keys are absent from our checkpoints on purpose; on_load_checkpoint does the
        # strict check (every other key present, no unknown key) once the weights are in.
        pl_module.strict_loading = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        keys = frozen_keys(pl_module)
        if not keys:
            return
        state = checkpoint["state_dict"]
        for k in keys:
            state.pop(k, None)
        checkpoint["frozen_base"] = {"path": _base_path(pl_module), "fingerprint": fingerprint(pl_module, keys),
                                     "num_keys": len(keys)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        saved = set(checkpoint["state_dict"])
        own = set(pl_module.state_dict())
        frozen = set(frozen_keys(pl_module))
        base = checkpoint.get("frozen_base")
        unknown = sorted(saved - own)
        missing = sorted(own - saved - (frozen if base else set()))
        if unknown or missing:
            raise KeyError(f"resume: the checkpoint does not fit this run's module: missing {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}, unexpected {unknown[:5]}"
                           f"{' ...' if len(unknown) > 5 else ''}. Resume with the student and loss it was "
                           "trained with.")
        if base is None:
            return
        here = {"path": _base_path(pl_module), "fingerprint": fingerprint(pl_module, sorted(frozen))}
        if here["fingerprint"] != base["fingerprint"]:
            raise BaseMismatchError(
                f"resume: the checkpoint's trainable weights were trained on the frozen base {base['path']!r} "
                f"(fingerprint {base['fingerprint'][:12]}), but this run's student base is {here['path']!r} "
                f"(fingerprint {here['fingerprint'][:12]}). Point student.name_or_path (and its dtype, "
                "quantization and seed) at the base the checkpoint was trained on.")


class RNGState(L.Callback):
    """Saves the global random states with each checkpoint and restores them when training starts."""

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Restored at on_train_start: between loading and the first batch Lightning still sets up.
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, inner, gauss = state["python"]
        random.setstate((version, tuple(inner), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
