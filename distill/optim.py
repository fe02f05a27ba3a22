"""Learning-rate schedules for ``module.scheduler`` (configs give them as ``_partial_: true``)."""

from __future__ import annotations

import math

import torch


def warmup_cosine_value(step: int, peak: float, total_steps: int, warmup_steps: int = 0,
                        min_ratio: float = 0.1) -> float:
    """The learning rate at ``step``: linear warmup to ``peak``, then cosine decay to
    ``min_ratio * peak`` at ``total_steps`` (the one definition, for the student's scheduler and the
    default teacher's pretraining loop; ``peak=1`` gives the scheduler's multiplier)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_ratio: float = 0.1, warmup_ratio: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base LR, then cosine decay to ``min_ratio`` of it at ``total_steps``.

    ``warmup_ratio`` (a share of ``total_steps``, rounded up) replaces ``warmup_steps`` when set: an
    epoch-based run (``trainer.max_steps=-1``) learns its step count only from the data, so a recipe
    written as "warmup 10%" cannot name the steps in its config.
    """
    if total_steps < 1:
        raise ValueError(f"scheduler.total_steps must be >= 1, got {total_steps} (set trainer.max_steps)")
    if warmup_ratio is not None:
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        warmup_steps = math.ceil(warmup_ratio * total_steps)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_value(step, 1.0, total_steps, warmup_steps, min_ratio))
