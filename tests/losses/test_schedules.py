import math

import pytest

from distill.losses.schedules import Constant, Cosine, Linear, Step, Warmup, as_schedule


def test_constant_and_as_schedule():
    assert Constant(0.3)(0) == Constant(0.3)(10_000) == 0.3
    assert as_schedule(2)(5) == 2.0
    with pytest.raises(TypeError):
        as_schedule("fast")


def test_linear_anneals_temperature_4_to_1():
    s = Linear(4.0, 1.0, steps=100)
    assert [s(0), s(50), s(100), s(500)] == [4.0, 2.5, 1.0, 1.0]


def test_linear_with_delay_and_zero_steps():
    s = Linear(0.0, 1.0, steps=10, delay=5)
    assert [s(0), s(5), s(10), s(15)] == [0.0, 0.0, 0.5, 1.0]
    assert [Linear(1, 2, steps=0)(0)] == [2.0]


def test_cosine_endpoints_and_midpoint():
    s = Cosine(1.0, 0.0, steps=100)
    assert s(0) == pytest.approx(1.0)
    assert s(50) == pytest.approx(0.5)
    assert s(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert s(100) == pytest.approx(0.0) and s(1000) == pytest.approx(0.0)


def test_warmup_starts_at_zero():
    s = Warmup(0.8, steps=4, delay=2)
    assert [s(0), s(2), s(4), s(6), s(9)] == [0.0, 0.0, 0.4, 0.8, 0.8]


def test_step_schedule():
    s = Step(milestones=[100, 200], values=[4, 2, 1])
    assert [s(0), s(99), s(100), s(199), s(200), s(10**6)] == [4, 4, 2, 2, 1, 1]


@pytest.mark.parametrize("make", [lambda: Linear(0, 1, steps=-1), lambda: Step([1, 2], [1.0]),
                                  lambda: Step([5, 2], [1, 2, 3])])
def test_bad_schedules_fail_at_construction(make):
    with pytest.raises(ValueError):
        make()
