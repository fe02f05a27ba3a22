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

from distill.validate import build_checked, check_trainer

log = logging.getLogger(__name__)


@dataclass
class Components:
    tokenizer: Any
    datamodule: Any
    teacher: Any
    module: Any


def instantiate(node: DictConfig, what: str, **kwargs):
    """``hydra.utils.instantiate`` that says what it builds and names the config key on failure."""
    target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
    log.info("Instantiating %s <%s>", what, target)
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except Exception as e:  # Hydra wraps the cause; surface it with the key that produced it
        cause = e.__cause__ or e
        raise type(cause)(f"while building `{what}` (<{target}>): {cause}") if isinstance(
            cause, (ValueError, FileNotFoundError, KeyError, TypeError)) else e


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


# An absolute path: Hydra resolves relative paths as Python packages for installed entry points.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def compose_config(config_name: str, overrides: Sequence[str], output_dir: str | Path,
                   root_dir: str | Path | None = None) -> DictConfig:
    """The config ``distill-<cli> <overrides>`` would build, without starting a Hydra app.

    For notebooks, scripts and tests: ``train(compose_config("train", ["loss=ce"], "out/ce"))``.
    Hydra's runtime config is registered (``${hydra:...}`` interpolations and code reading the
    run's choices or overrides work) and then dropped from the returned config, as in a real run.

    Args:
        config_name: a top-level file in ``conf/`` (``train``, ``eval``, ``cache_logits``, ...).
        overrides: command-line style overrides.
        output_dir: becomes ``paths.output_dir`` (the CLI's timestamped run directory).
        root_dir: ``paths.root_dir``; defaults to the current directory, as on the command line.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(root_dir if root_dir is not None else Path.cwd())
        del cfg["hydra"]
    return cfg


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
