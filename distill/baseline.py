"""The CE-only baseline: the same student, data and steps, trained on hard labels only.

It is composed from the ``loss=ce`` config group (``conf/loss/ce.yaml``) with no teacher and the
data's own sequences (``teacher=none``, no ``sequences``): a CE-only student learns nothing from a
teacher, so every teacher of a sweep (each ensemble combination, say) shares one baseline. It is
trained once and cached under ``paths.cache_dir/baselines/<key>``, keyed by everything that
determines it (:func:`baseline_key`), so later runs and sweeps reuse it. A new key says so before
it trains, with the time it should take.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from distill.config import load_group
from distill.train import train

log = logging.getLogger(__name__)


def is_ce_only(cfg: DictConfig) -> bool:
    comps = cfg.loss.get("components") or {}
    return all(str(c.get("_target_", "")).endswith("CrossEntropy") for c in comps.values())


#: Trainer settings that change neither what the baseline learns nor what it measures (where it
#: writes, what it prints); every other one (steps, precision, devices, validation schedule) is keyed.
_TRAINER_UNKEYED = ("default_root_dir", "logger", "callbacks", "enable_progress_bar", "enable_model_summary",
                    "log_every_n_steps", "enable_checkpointing", "profiler")


def baseline_key(cfg: DictConfig) -> str:
    """Hash of what determines the CE-only student: the student (its tokenizer included), the data
    (held-out split included), the module (optimizer, scheduler, micro-batching), the seed and the
    trainer settings. Not the teacher, the loss, on-policy sequences, logging or exports: the
    baseline runs without them (:func:`baseline_config`)."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("student", "data", "module")}
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    parts["trainer"] = {k: v for k, v in trainer.items() if k not in _TRAINER_UNKEYED}
    parts["seed"] = cfg.seed
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def baseline_dir(cfg: DictConfig) -> Path:
    """Where the CE-only student of ``cfg`` is trained and cached (``metrics.json``, ``csv/``)."""
    return Path(cfg.paths.cache_dir) / "baselines" / baseline_key(cfg)


def baseline_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``loss=ce``, ``teacher=none`` and no ``sequences``, writing into the baseline
    folder, CSV only, no export or summary."""
    out_dir = baseline_dir(cfg)
    base = copy.deepcopy(cfg)
    with open_dict(base):
        base.loss = load_group("loss", "ce")
        # pin what the student reads of the teacher (student=pruned cuts itself from it) before the teacher goes
        base.student = OmegaConf.create(OmegaConf.to_container(cfg.student, resolve=True))
        # no teacher to load, prepare or pretrain, and the data's own sequences: what the key leaves out
        base.teacher = load_group("teacher", "none")
        base.sequences = None
        base.paths.output_dir = str(out_dir)
        base.summary.enabled = False
        base.validate_at_start = False  # the run itself reports the student at initialisation
        base.export.enabled = False
        base.ckpt_path = None
        # CSV only (never the run's W&B project): its curve is drawn in the run's summary.png.
        base.logger = {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(out_dir),
                               "name": "csv"}}
        base.callbacks = {}
        base.trainer.enable_checkpointing = False
    return base


def run_baseline(cfg: DictConfig, expected_seconds: float | None = None) -> dict[str, float]:
    """Train (or reuse) the CE-only student of ``cfg``; return its final metrics.

    Args:
        expected_seconds: how long the distilled run took; the baseline (no teacher forward) takes
            at most about that long, which the notice before training says.
    """
    out_dir = baseline_dir(cfg)
    result = out_dir / "metrics.json"
    if result.exists():
        log.info("CE-only baseline: reusing %s", result)
        return json.loads(result.read_text())
    took = f"; expect at most about {expected_seconds / 60:.1f} min (this run took that long)" \
        if expected_seconds else ""
    log.warning("CE-only baseline: none cached for this student, data, module, seed and %d steps, so it is "
                "trained now with loss=ce -> %s%s. Skip it with summary.baseline=false.",
                cfg.trainer.max_steps, out_dir, took)
    metrics = train(baseline_config(cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(metrics, indent=2))
    return metrics
