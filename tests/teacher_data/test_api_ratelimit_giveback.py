"""The limiter must not starve on its own give-backs (issue 22, "A bug to fix first").

Each request reserves ``max_tokens`` of output; with the defaults (2048 against an OTPM bucket of
133 tokens) that takes the bucket ~1,900 tokens into debt. When the answer is 20 tokens long the
settle gives back ~2,000 of them, and the waiting request must go at once, not sleep out the refill
of a debt that no longer exists. Everything here runs on :class:`SimClock`, with requests really in
flight concurrently, so minutes of traffic take well under a second and no assertion reads a real
clock.
"""

from __future__ import annotations

import asyncio

from distill.api_client.ratelimit import LimiterPool, Limits, RateLimiter

from api_teacher_helpers import max_in_window
from simclock import SimClock

DEFAULTS = dict(requests_per_minute=50, input_tokens_per_minute=30000, output_tokens_per_minute=8000)


async def traffic(lim: RateLimiter, sim: SimClock, n: int, *, latency_s: float, used: int = 20,
                  concurrency: int = 8, max_tokens: int = 2048, unsettled_last: bool = False) -> None:
    """``n`` requests through ``concurrency`` workers; each answers after ``latency_s`` with ``used``
    output tokens. ``unsettled_last``: the last request is granted but never answered (a SIGKILL)."""
    todo = list(range(n))

    async def worker():
        while todo:
            i = todo.pop(0)
            g = await lim.acquire(60, max_tokens)
            if unsettled_last and i == n - 1:
                return
            await sim.sleep(latency_s)
            lim.settle(g, {"input_tokens": 40, "output_tokens": used})

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class NoWake(RateLimiter):
    """The limiter as it was: a give-back wakes nobody (the control that shows the test bites)."""

    def _changed(self) -> None:
        pass


def run(limiter_cls, latency_s: float, n: int = 100) -> list[float]:
    sim = SimClock()
    lim = limiter_cls(Limits(**DEFAULTS), clock=sim.clock, sleep=sim.sleep)
    asyncio.run(sim.run(traffic(lim, sim, n, latency_s=latency_s)))
    return [t - lim.grant_times[0] for t in lim.grant_times]


def test_100_short_answers_at_default_limits_take_about_two_minutes_not_25():
    times = run(RateLimiter, latency_s=1.0)
    assert len(times) == 100
    rpm_alone = 99 * 60 / 49  # the request bucket's refill rate is (50 - 1) per minute
    assert rpm_alone - 1e-6 <= times[-1] <= rpm_alone * 1.05  # ~121 s: the RPM limit binds, not OTPM
    assert max_in_window(times, 10.0) <= 50 / 6 + 1
    assert max_in_window(times, 60.0) <= 50

    slow = run(NoWake, latency_s=1.0, n=20)  # before the fix: one request per 15.4 s debt refill
    assert slow[-1] > 19 * 15.0


def test_slow_answers_pace_by_their_latency_not_by_max_tokens():
    # The server answered in ~2 s: a request in debt holds the next until it settles (the
    # API counts the reservation too), so the pace is the latency, ~3.3 min for 100, not 25 min.
    times = run(RateLimiter, latency_s=2.0)
    assert times[-1] <= 99 * 2.0 + 1.0
    assert max_in_window(times, 10.0) <= 50 / 6 + 1


def test_a_restart_after_a_kill_still_pays_the_in_flight_reservation(tmp_path):
    sim = SimClock()
    limits = Limits(**DEFAULTS)
    path = tmp_path / "ratelimit_state.jsonl"

    pool = LimiterPool(limits, clock=sim.clock, sleep=sim.sleep)
    pool.open_state(path)
    first = pool.for_model("m")
    asyncio.run(sim.run(traffic(first, sim, 30, latency_s=1.0, unsettled_last=True)))
    sim.t += 0.2  # SIGKILL with one request in flight, restarted at once: no close(), no give-back

    again = LimiterPool(limits, clock=sim.clock, sleep=sim.sleep)
    again.open_state(path)
    second = again.for_model("m")
    asyncio.run(sim.run(traffic(second, sim, 30, latency_s=1.0)))

    both = first.grant_times + second.grant_times
    assert max_in_window(both, 10.0) <= 50 / 6 + 1 and max_in_window(both, 60.0) <= 50
    # The killed request stays charged its 2048 tokens: the restart waits out that debt ...
    otpm = second.buckets["output_tokens"]
    assert second.grant_times[0] - first.grant_times[-1] >= (2048 - 2 * otpm.capacity) / otpm.rate
    # ... and then runs at the RPM pace again, its give-backs waking it as before.
    pace = (second.grant_times[-1] - second.grant_times[1]) / 28
    assert pace <= 60 / 49 * 1.05
    again.close()
