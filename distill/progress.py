"""The training progress bar: optimizer steps out of ``trainer.max_steps``.

Runs here are sized in steps (``trainer.max_epochs=-1``), so Lightning's per-epoch bar shows an
epoch count with no end (``Epoch 0/-2`` in its rich variant) and restarts every epoch. This bar
counts optimizer steps against ``max_steps`` across epochs and resumes, and falls back to
Lightning's per-epoch bar for epoch-sized runs.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    def _by_steps(self, trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        if self._by_steps(trainer):
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.n = trainer.global_step
            bar.set_description(f"step (epoch {trainer.current_epoch})")
            bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._by_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
