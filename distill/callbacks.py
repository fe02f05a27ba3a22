"""Callbacks a training run names by ``_target_``: one Hydra callback and one Lightning callback.

They live here, below the apps, so that ``conf/train.yaml`` and the Lightning trainer import only
what a run needs; the comparison tool (:mod:`distill.compare`) reads what they write.

* :class:`SaveResolvedConfig` (``hydra.callbacks`` in ``conf/train.yaml``) writes
  ``<run dir>/config_resolved.yaml``;
* :class:`StepTimer` (``+callbacks.step_timer={_target_: distill.callbacks.StepTimer}``) logs
  ``time/step_s``.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.experimental.callback import Callback as HydraCallback

from distill.provenance import RESOLVED_CONFIG

log = logging.getLogger(__name__)


class SaveResolvedConfig(HydraCallback):
    """Hydra callback: write ``<run dir>/config_resolved.yaml``, the job's config with every ``${...}``
    filled in (Hydra's ``.hydra/config.yaml`` keeps the interpolations). Written when the job starts,
    so a run that fails still says exactly what it was.
    """

    def on_job_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        out = Path(config.hydra.runtime.output_dir)
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            text = OmegaConf.to_yaml(task, resolve=True)
        except Exception as e:  # the job itself will raise with the full context; keep going
            log.warning("could not resolve the config for %s: %s", out / RESOLVED_CONFIG, e)
            return
        out.mkdir(parents=True, exist_ok=True)
        (out / RESOLVED_CONFIG).write_text(text)


class StepTimer(L.Callback):
    """Lightning callback: log ``time/step_s``, the median wall-clock seconds of an optimizer step.

    Measured from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, optimizer;
    validation excluded), skipping the first ``skip`` steps (allocation, warm-up). The median rather
    than the mean, because on a shared machine a few steps stall on other jobs. Add it to a run with
    ``+callbacks.step_timer={_target_: distill.callbacks.StepTimer}``; distill-compare shows it and,
    with ``--relative-to loss=kd``, each row's step time relative to that setting.
    """

    def __init__(self, skip: int = 10):
        self.skip, self._t0, self._times = int(skip), None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        elapsed, self._t0 = time.perf_counter() - self._t0, None
        if trainer.global_step > self.skip:
            self._times.append(elapsed)
        if self._times:
            pl_module.log("time/step_s", statistics.median(self._times), on_step=True, on_epoch=False,
                          batch_size=1)
