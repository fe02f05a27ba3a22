"""``distill-train``: compose a config, check it, distill, export, summarise.

``train(cfg)`` is short and linear so tests call it directly; :func:`main` is the thin Hydra
wrapper that returns the configured objective for sweepers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from distill.config import CONF_DIR, compose_config, instantiate  # noqa: F401 (re-exported)
from distill.validate import build_checked, check_trainer

log = logging.getLogger(__name__)


@dataclass
class Components:
    tokenizer: Any
    datamodule: Any
    teacher: Any
    module: Any


def build_components(cfg: DictConfig) -> Components:
    """Everything ``fit`` needs. Config checks run first; weights load last."""
    checked = build_checked(cfg)  # specs, loss, teacher, tokenizer: no model weights yet
    datamodule = instantiate(cfg.data, "data").connect(checked.tokenizer)
    checked.teacher.prepare(datamodule)  # e.g. pretrain the default teacher once, then cached
    module = instantiate(cfg.module, "module", student=checked.student, teacher=checked.teacher,
                         loss=checked.loss, vocab_size=checked.vocab_size)
    return Components(checked.tokenizer, datamodule, checked.teacher, module)


def _callbacks(cfg: DictConfig) -> list:
    return [instantiate(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c]


def _loggers(cfg: DictConfig) -> list:
    return [instantiate(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c]


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one distillation; return the final metrics (``val/*``, ``train/*``) as floats."""
    check_trainer(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    parts = build_components(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, "trainer", callbacks=_callbacks(cfg), logger=_loggers(cfg) or False)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        ckpt = str(last) if last.exists() else None
        log.info("resuming from %s", ckpt) if ckpt else log.info("no last.ckpt in %s: starting fresh", last.parent)
    trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=ckpt)
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
        # ModelCheckpoint saves on validation; make last.ckpt the true end state so that a
        # resume with more steps continues exactly where this run stopped.
        trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.export.enabled and trainer.is_global_zero:
        from distill.export import export_student

        export_student(parts.module.student, parts.tokenizer, Path(cfg.paths.output_dir) / "student",
                       merge_lora=cfg.export.merge_lora)
    if cfg.get("summary") and cfg.summary.enabled and trainer.is_global_zero:
        from distill.summary import summarize

        metrics.update(summarize(cfg, metrics))
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    objective = cfg.get("objective")
    if objective is None:
        return None
    if objective not in metrics:
        raise KeyError(f"objective={objective!r} was not logged; logged metrics: {sorted(metrics)}")
    return metrics[objective]


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _hydra_main()


if __name__ == "__main__":
    main()
