"""Progressive schedules for loss weights and the distillation temperature.

A schedule is a callable ``step -> float`` (``step`` = optimizer steps taken so far). Configs
build them by ``_target_``; a bare number in a config means :class:`Constant`. Ranges are checked
at construction so a bad sweep value fails before any weights load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class Schedule:
    """Base class: subclasses implement ``__call__(step) -> float``."""

    def __call__(self, step: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError


def _check_steps(name: str, steps: int) -> None:
    if steps < 0:
        raise ValueError(f"{name}: steps must be >= 0, got {steps}")


class Constant(Schedule):
    """``v(step) = value``."""

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class Linear(Schedule):
    """Linear ramp from ``start`` to ``end`` over ``steps`` optimizer steps (after ``delay``), then flat.

    ``v(s) = start + (end - start) * clamp((s - delay) / steps, 0, 1)``
    """

    def __init__(self, start: float, end: float, steps: int, delay: int = 0):
        _check_steps("Linear", steps)
        _check_steps("Linear.delay", delay)
        self.start, self.end, self.steps, self.delay = float(start), float(end), int(steps), int(delay)

    def _progress(self, step: int) -> float:
        if self.steps == 0:
            return 1.0 if step >= self.delay else 0.0
        return min(max((step - self.delay) / self.steps, 0.0), 1.0)

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * self._progress(step)


class Cosine(Linear):
    """Cosine ramp from ``start`` to ``end`` (half a cosine period), then flat.

    ``v(s) = end + (start - end) * (1 + cos(pi * p)) / 2`` with ``p`` as in :class:`Linear`.
    """

    def __call__(self, step: int) -> float:
        p = self._progress(step)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * p))


class Warmup(Linear):
    """Zero for ``delay`` steps, then a linear ramp from 0 to ``value`` over ``steps``.

    The common "switch the KD term on gently" schedule.
    """

    def __init__(self, value: float, steps: int, delay: int = 0):
        super().__init__(0.0, value, steps, delay)


class Step(Schedule):
    """Piecewise constant: ``values[i]`` from ``milestones[i-1]`` on (``values[0]`` before the first).

    Example: ``Step(milestones=[100, 200], values=[4, 2, 1])`` gives 4 for steps 0-99, 2 for
    100-199 and 1 from 200 on.
    """

    def __init__(self, milestones: Sequence[int], values: Sequence[float]):
        milestones = [int(m) for m in milestones]
        if len(values) != len(milestones) + 1:
            raise ValueError(f"Step: need len(values) == len(milestones) + 1, got {len(values)} values "
                             f"for {len(milestones)} milestones")
        if milestones != sorted(milestones):
            raise ValueError(f"Step: milestones must increase, got {milestones}")
        self.milestones, self.values = milestones, [float(v) for v in values]

    def __call__(self, step: int) -> float:
        i = sum(1 for m in self.milestones if step >= m)
        return self.values[i]


def as_schedule(value: float | Schedule) -> Schedule:
    """Numbers become :class:`Constant`; schedules pass through."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (int, float)):
        return Constant(value)
    raise TypeError(f"expected a number or a Schedule, got {type(value).__name__}: {value!r}")
