"""The warmup-cosine schedule: warmup given as a share of the run's steps."""

import pytest
import torch

from distill.optim import warmup_cosine


def _lrs(steps: int, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_ratio_is_the_same_schedule_as_its_rounded_up_steps():
    # 10% of 25 steps = 2.5 -> 3 warmup steps, as a recipe's "warmup 10%" means
    by_ratio = _lrs(25, total_steps=25, warmup_ratio=0.1)
    assert by_ratio == _lrs(25, total_steps=25, warmup_steps=3)
    assert by_ratio[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert by_ratio != _lrs(25, total_steps=25, warmup_steps=2)


def test_warmup_ratio_overrides_warmup_steps_and_rejects_nonsense():
    assert _lrs(10, total_steps=10, warmup_steps=5, warmup_ratio=0.0) == _lrs(10, total_steps=10, warmup_steps=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        _lrs(1, total_steps=10, warmup_ratio=1.5)
