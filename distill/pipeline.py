"""``distill-train``: what one command runs, in order.

    build -> fit -> export -> CE-only baseline -> summary -> model card

:func:`run` is that sequence, written out; :func:`main` is the thin Hydra app around it that
returns the configured objective to sweepers. Each step lives in its own module below this one
(:mod:`distill.train`, :mod:`distill.export`, :mod:`distill.baseline`, :mod:`distill.summary`),
and none of them imports this one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from distill.baseline import baseline_dir, is_ce_only, run_baseline
from distill.config import CONF_DIR, app_errors, prepare_app
from distill.deploy.card import write_model_card
from distill.export import export_student
from distill.provenance import record_models
from distill.summary import summarize, write_summary
from distill.train import fit

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Distil one student as ``distill-train`` does; return its final metrics (plus ``summary/*``)."""
    fitted = fit(cfg)
    metrics = dict(fitted.metrics)
    if not fitted.trainer.is_global_zero:  # only rank zero writes exports, baselines and summaries
        return metrics
    out_dir = Path(cfg.paths.output_dir)
    record_models(out_dir, fitted.parts, cfg)
    if cfg.export.enabled:
        export_student(fitted.parts.module.student, fitted.parts.tokenizer, out_dir / "student",
                       merge_lora=cfg.export.merge_lora)
    if cfg.get("summary") and cfg.summary.enabled:
        metrics.update(_summarize(cfg, metrics, fitted.seconds, out_dir, fitted.trainer.global_step))
    if cfg.export.enabled:  # last: the card carries the summary's held-out figures
        card = write_model_card(out_dir, out_dir / "student", steps=fitted.trainer.global_step)
        log.info("model card: %s", card)
    return metrics


def _summarize(cfg: DictConfig, metrics: dict[str, float], seconds: float, out_dir: Path,
               steps: int) -> dict[str, float]:
    """CE-only baseline (trained once, cached) and the summary; returns the ``summary/*`` figures."""
    wants_baseline = cfg.summary.baseline and "val/teacher_loss" in metrics and not is_ce_only(cfg)
    baseline = run_baseline(cfg, expected_seconds=seconds) if wants_baseline else None
    # the steps taken, not trainer.max_steps: an epoch-based run has max_steps -1
    summary = summarize(metrics, baseline, steps, ce_only=is_ce_only(cfg))
    if summary is None:
        log.warning("summary: no val/loss logged (validation is off: trainer.limit_val_batches=0); "
                    "nothing to summarise")
        return {}
    print(summary.text, flush=True)
    write_summary(summary, out_dir, baseline_dir(cfg) if baseline is not None else None)
    return summary.values


def objective_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The metric a sweeper optimises. A single run only warns when it is missing (its results are
    saved either way); a sweep needs it, so there it is an error naming what was logged."""
    objective = cfg.get("objective")
    if objective is None:
        return None
    if objective in metrics:
        return metrics[objective]
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    message = f"objective={objective!r} was not logged; logged metrics: {sorted(metrics)}"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise KeyError(message)
    log.warning(message)
    return None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    with app_errors():
        return objective_value(cfg, run(cfg))


def main() -> None:
    prepare_app()
    _hydra_main()


if __name__ == "__main__":
    main()
