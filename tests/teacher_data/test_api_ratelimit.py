"""Token buckets as the API enforces them: pacing, separate input/output limits, headers, restarts.

The unit tests drive :class:`RateLimiter` with an injected clock, so a simulated minute of traffic
takes milliseconds; the tests at the bottom run against the local server's own token bucket.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from distill.api_client.ratelimit import (
    LimiterPool, Limits, RateLimiter, StateLog, TokenBucket, limits_from_config, replay,
)

from api_teacher_helpers import generator, go, make_prompts, max_in_window, records


class FakeTime:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.t += s


def drive(limiter: RateLimiter, n: int, cost=(0, 0)) -> list[float]:
    async def main():
        for _ in range(n):
            await limiter.acquire(*cost)
    asyncio.run(main())
    return list(limiter.grant_times)


def test_requests_leave_evenly_spaced_and_every_window_stays_within_the_limit():
    ft = FakeTime()
    rpm = 600
    lim = RateLimiter(Limits(requests_per_minute=rpm), clock=ft.clock, sleep=ft.sleep)
    times = drive(lim, 1500)  # two and a half simulated minutes
    assert max_in_window(times, 60.0) <= rpm
    assert max_in_window(times, 10.0) <= rpm / 6 + 1
    assert max_in_window(times, 1.0) <= rpm / 60 + 1
    # Not slower than needed either: the long-run rate is the limit less one request per minute.
    assert (times[-1] - times[0]) / (len(times) - 1) == pytest.approx(60 / (rpm - 1), rel=1e-3)


def test_a_larger_burst_is_allowed_up_front_and_still_bounded_per_window():
    ft = FakeTime()
    lim = RateLimiter(Limits(requests_per_minute=120, burst_requests=10), clock=ft.clock, sleep=ft.sleep)
    times = drive(lim, 400)
    assert times[9] == times[0]  # ten at once, then paced
    assert max_in_window(times, 60.0) <= 120
    assert max_in_window(times, 10.0) <= 10 + (120 - 10) / 6 + 1


def test_input_and_output_tokens_are_separate_buckets_and_cache_reads_do_not_count():
    ft = FakeTime()
    lim = RateLimiter(Limits(input_tokens_per_minute=6000, output_tokens_per_minute=60000),
                      clock=ft.clock, sleep=ft.sleep)

    async def main():
        g = await lim.acquire(100, 50)
        # Billed: 100 plain input, 900 cache reads (free toward ITPM), 10 output (40 given back).
        lim.settle(g, {"input_tokens": 100, "cache_read_input_tokens": 900, "output_tokens": 10})
    asyncio.run(main())
    b_in, b_out = lim.buckets["input_tokens"], lim.buckets["output_tokens"]
    assert b_in.level == pytest.approx(b_in.capacity - 100)
    assert b_out.level == pytest.approx(b_out.capacity - 10)

    old = RateLimiter(Limits(input_tokens_per_minute=6000, cache_reads_count=True), clock=ft.clock, sleep=ft.sleep)

    async def main_old():
        g = await old.acquire(100, 0)
        old.settle(g, {"input_tokens": 10, "cache_read_input_tokens": 40})
    asyncio.run(main_old())
    assert old.buckets["input_tokens"].level == pytest.approx(old.buckets["input_tokens"].capacity - 50)


def test_a_request_larger_than_the_bucket_waits_for_a_full_bucket_and_the_rate_holds():
    ft = FakeTime()
    # 8000 OTPM holds ~133 tokens (one second); each request reserves max_tokens=2048.
    lim = RateLimiter(Limits(output_tokens_per_minute=8000), clock=ft.clock, sleep=ft.sleep)
    times = drive(lim, 30, cost=(0, 2048))
    assert max_in_window(times, 60.0) * 2048 <= 8000 + 2048  # at most the limit plus the one in debt
    assert (times[-1] - times[0]) / 29 == pytest.approx(2048 / lim.buckets["output_tokens"].rate, rel=1e-3)
    with pytest.raises(ValueError, match="client.output_tokens_per_minute=8000"):
        drive(lim, 1, cost=(0, 9000))


def test_headers_lower_the_bucket_and_a_lower_server_limit_slows_the_rate():
    ft = FakeTime()
    lim = RateLimiter(Limits(requests_per_minute=600, input_tokens_per_minute=60000, burst_requests=5),
                      clock=ft.clock, sleep=ft.sleep)
    lim.observe({"anthropic-ratelimit-requests-remaining": "0"})
    assert lim.buckets["requests"].level == 0  # other clients used it: wait for the refill
    lim.observe({"anthropic-ratelimit-input-tokens-remaining": "0"})
    assert lim.buckets["input_tokens"].level == 500  # token counts are rounded to thousands: +-500
    lim.observe({"anthropic-ratelimit-requests-limit": "60"})
    assert lim.buckets["requests"].rate == pytest.approx((60 - 5) / 60)
    lim.observe({"anthropic-ratelimit-requests-limit": "6000", "something-else": "x"})  # higher: ignored
    assert lim.buckets["requests"].rate == pytest.approx((60 - 5) / 60)


def test_state_survives_a_crash_and_the_restart_waits(tmp_path):
    ft = FakeTime()
    path = tmp_path / "ratelimit_state.jsonl"
    rpm, burst = 60, 5
    limits = Limits(requests_per_minute=rpm, burst_requests=burst)
    pool = LimiterPool(limits, clock=ft.clock, sleep=ft.sleep)
    pool.open_state(path)
    first = drive(pool.for_model("m"), 10)  # the burst and a few more, then SIGKILL: no close()
    ft.t += 0.2  # an immediate restart

    restarted = LimiterPool(limits, clock=ft.clock, sleep=ft.sleep)
    restarted.open_state(path)
    second = drive(restarted.for_model("m"), 60)
    assert second[0] - first[-1] >= 60 / (rpm - burst) - 1e-6  # continued from the empty bucket
    assert max_in_window(first + second, 60.0) <= rpm

    # Without the state the restart starts from a full bucket: a second burst in the same minute.
    ft2 = FakeTime()
    t1 = drive(RateLimiter(limits, clock=ft2.clock, sleep=ft2.sleep), 10)
    ft2.t += 0.2
    t2 = drive(RateLimiter(limits, clock=ft2.clock, sleep=ft2.sleep), 60)
    assert max_in_window(t1 + t2, 60.0) > rpm

    # The file was compacted on open (one snapshot line per limiter, then the new grants).
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert "levels" in lines[0] and sum("levels" in e for e in lines) == 1 and len(lines) == 61
    restarted.close()
    assert len(path.read_text().splitlines()) == 1  # the bucket is not full yet: its level is kept
    ft.t += 120
    idle = LimiterPool(limits, clock=ft.clock, sleep=ft.sleep)
    idle.open_state(path)
    assert path.read_text() == ""  # refilled since: nothing left worth keeping


def test_replay_keeps_in_flight_requests_charged_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "s.jsonl"
    t0 = 5000.0
    events = [{"n": "m", "t": t0, "d": {"requests": 1, "output_tokens": 1000}},
              {"n": "m", "t": t0 + 0.1, "d": {"output_tokens": -500}},   # settled: 500 billed
              {"n": "m", "t": t0 + 0.2, "d": {"requests": 1, "output_tokens": 1000}}]  # in flight at the crash
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"n": "m", "t": 50')
    log = StateLog(path)
    assert len(log.events) == 3
    limits = Limits(requests_per_minute=600, output_tokens_per_minute=60000)
    buckets, _ = replay(log.events, limits, "m", t0 + 0.2)
    assert limits.capacity("output_tokens", 60000) == 1000  # full at the start, then:
    assert buckets["output_tokens"].level == pytest.approx(1000 - 1000 + 500 - 1000 + 0.2 * buckets["output_tokens"].rate)


def test_old_single_token_limit_is_refused_by_name():
    with pytest.raises(KeyError, match="input_tokens_per_minute and client.output_tokens_per_minute"):
        limits_from_config({"tokens_per_minute": 100000})
    with pytest.raises(ValueError, match="burst_requests"):
        Limits(requests_per_minute=10, burst_requests=0)
    b = TokenBucket.for_limit(60, 1, 60.0, now=0.0)
    assert b.rate == pytest.approx(59 / 60) and b.wait_s(1, 0.0) == 0


# -- against the local server's own token bucket -------------------------------------------------
def test_long_run_at_the_limit_gets_no_429_from_pacing_and_injected_429s_are_retried(fake_api, api_key_env,
                                                                                      tmp_path):
    rpm = 1200
    server = fake_api(rate_limits={"rpm": rpm})
    markers = ["[[429x1@0.2]]", "[[429x2@0.1]]"] + [""] * 238
    prompts = make_prompts(markers)
    gen = generator(server, tmp_path, prompts, rpm=rpm, concurrency=8)
    summary = go(gen)
    assert summary.done_now == 240 and summary.failed == 0
    assert server.ratelimited() == 0, "pacing itself caused a 429 from the server's bucket"
    injected = [e for e in server.log if e["fault"] == "429"]
    assert len(injected) == 3  # scripted 429s still happen and are retried
    by = {r["prompt_id"]: r for r in records(tmp_path)}
    assert by[prompts[0].id]["attempts"] == 2 and by[prompts[1].id]["attempts"] == 3
    arrivals = server.message_times()
    assert arrivals[-1] - arrivals[0] > 10.0  # long enough for the 10 s check to mean something
    assert max_in_window(arrivals, 10.0) <= rpm / 6 + 1
    state = [json.loads(x) for x in (tmp_path / "ratelimit_state.jsonl").read_text().splitlines()]
    assert all(e["n"] == "claude-sonnet-4-5" and "levels" in e for e in state)  # compacted at the end


def test_without_client_pacing_the_same_traffic_meets_the_servers_bucket(fake_api, api_key_env, tmp_path):
    """The control for the test above: the server's bucket is real, so a burst is refused."""
    server = fake_api(rate_limits={"rpm": 1200})
    gen = generator(server, tmp_path, make_prompts([""] * 30), concurrency=8, attempts=6)
    assert go(gen).done_now == 30
    assert server.ratelimited() > 0


def test_output_token_pacing_meets_no_429_from_the_servers_output_bucket(fake_api, api_key_env, tmp_path):
    server = fake_api(rate_limits={"rpm": 6000, "itpm": 600000, "otpm": 30000})
    gen = generator(server, tmp_path, make_prompts([""] * 30), rpm=6000, itpm=600000, otpm=30000, concurrency=6)
    s = go(gen)
    assert s.done_now == 30 and server.ratelimited() == 0
    assert s.rate_limit_wait_s > 0  # the output bucket (256 reserved per request) did bind


def test_a_server_limit_below_the_configured_one_is_read_from_the_headers(fake_api, api_key_env, tmp_path, caplog):
    server = fake_api(rate_limits={"rpm": 600})  # the organisation's real limit ...
    gen = generator(server, tmp_path, make_prompts([""] * 40), rpm=6000, concurrency=4)  # ... configured too high
    assert go(gen).done_now == 40
    assert "below client.requests_per_minute=6000; pacing to the server's limit" in caplog.text
    assert server.ratelimited() <= 2  # at most the requests sent before the first response came back
    arrivals = server.message_times()
    assert max_in_window(arrivals, 2.0) <= 600 / 30 + 10 + 2  # the server's own bound (capacity 10) held
