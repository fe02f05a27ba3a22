"""``train(cfg)``: fit one model, validate it at the end, return its metrics.

Short and linear so tests, studies and the CE-only baseline call it directly. It builds the run
(:mod:`distill.build`: checks first, weights last), fits it with Lightning, makes sure the final
weights were validated (a run that ends before its first scheduled validation still reports
held-out metrics), and leaves ``checkpoints/last.ckpt`` as the true end state, written inside the
fit lifecycle. Exporting, the baseline and the summary belong to :mod:`distill.pipeline`, which
is what ``distill-train`` runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from distill.build import Components, build_components
from distill.config import instantiate
from distill.host_memory import keep_freed_memory

log = logging.getLogger(__name__)


@dataclass
class Fitted:
    """A fitted run: its final metrics (``val/*``, ``train/*``), its parts, the trainer and wall time."""

    metrics: dict[str, float]
    parts: Components
    trainer: L.Trainer
    seconds: float


class SaveLastCheckpoint(L.Callback):
    """``last.ckpt`` = the state at the end of fit, so a resume with more steps continues exactly
    where this run stopped (ModelCheckpoint's own ``last`` is written at validation time only)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.dirpath:
            trainer.save_checkpoint(Path(ckpt.dirpath) / "last.ckpt")


def _callbacks(cfg: DictConfig) -> list:
    built = [instantiate(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c]
    return built + [SaveLastCheckpoint()]


def _loggers(cfg: DictConfig) -> list:
    return [instantiate(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c]


def _resume_path(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt != "last":
        return ckpt
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if last.exists():
        log.info("resuming from %s", last)
        return str(last)
    log.info("no last.ckpt in %s: starting fresh", last.parent)
    return None


def fit(cfg: DictConfig) -> Fitted:
    """Build and fit one run; validate the final weights if the last scheduled validation missed them."""
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.get("keep_freed_memory", True):
        keep_freed_memory()
    t0 = time.time()
    parts = build_components(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, "trainer", callbacks=_callbacks(cfg), logger=_loggers(cfg) or False)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    resume = _resume_path(cfg)
    at_start = {}
    if cfg.get("validate_at_start") and resume is None:
        # The student before any update: for a student cut from its teacher, the figure that says
        # how much the training healed (the summary's "at initialisation" row).
        trainer.validate(parts.module, datamodule=parts.datamodule, verbose=False)
        at_start = {f"init/{k[4:]}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=resume)
    metrics = {**at_start, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
    if parts.module.last_validated_step != trainer.global_step and trainer.limit_val_batches != 0:
        log.info("validating the final weights (step %d; the last validation ran at %s)", trainer.global_step,
                 parts.module.last_validated_step)
        trainer.validate(parts.module, datamodule=parts.datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    return Fitted(metrics, parts, trainer, time.time() - t0)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit one model; return its final metrics as floats."""
    return fit(cfg).metrics
