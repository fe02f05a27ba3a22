"""Client-side token buckets for the API's three limits, kept across restarts.

The Messages API limits requests (RPM), input tokens (ITPM) and output tokens (OTPM) per minute,
separately, per model class, with token buckets that refill continuously: a limit of 60 RPM may
be enforced as about one request per second, so a burst that a "60 per minute" window would allow
still meets 429s. This module mirrors that, one :class:`TokenBucket` per limit:

* **Capacity** (``burst_requests`` requests; ``burst_tokens_s`` seconds of refill for tokens) is
  what may go out at once. The default of one request means requests leave evenly spaced.
* **Refill rate** is ``(limit - capacity) / period_s``, a hair under the limit, so that *every*
  window of ``period_s`` seconds, however placed, holds at most ``limit``: a bucket lets through at
  most ``capacity + rate * T`` in any span ``T``. With one request of capacity a 10 s window holds
  at most ``rpm/6 + 1`` requests.
* **Costs.** A request takes one request token, its input estimate (a deliberately high count of
  the text, see ``client.estimate_tokens``) and ``max_tokens`` of output, all before it is sent;
  when the answer arrives the difference to the billed usage is given back. Input counts
  ``input_tokens + cache_creation_input_tokens``; cache reads count only with
  ``cache_reads_count: true`` (older models), because for current models the API does not count
  them toward ITPM. A request costlier than a bucket's capacity waits for a full bucket and takes
  it into debt, so the long-run rate still holds.
* **Give-backs wake the waiters.** With the default ``max_tokens`` 2048 against an OTPM bucket of
  133 tokens, each request leaves the bucket ~1,900 tokens in debt; a waiter that slept the whole
  refill of that debt (~15 s) would ignore the give-back that arrives 2 s later, when the answer
  turns out to be 20 tokens, and throughput would fall to ``OTPM / max_tokens`` per minute whatever
  the answers' length. So a settle, a header update or a pause change wakes the waiter at once and
  it recomputes its wait from the new levels.
* **Server feedback** (:mod:`~distill.api_client.headers`; OpenAI's ``x-ratelimit-*`` alike).
  ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-remaining``
  lowers a bucket that thinks it holds more than the server says (other clients of the same
  organisation share the limit); a ``-limit`` below the configured one lowers the rate for the
  rest of the run; ``retry-after`` on a 429 pauses every caller of that model.
* **Restarts.** Every take and give-back is appended to a state file in the output folder
  (``ratelimit_state.jsonl``) *before* the request is sent, and a new run replays it. So a run
  killed with ``kill -9`` and restarted at once continues from the level its predecessor left,
  instead of from a full bucket, and the two runs together stay within the limit.

The buckets are pure (time is passed in); :class:`RateLimiter` adds the waiting, with an
injectable clock and sleep so tests can run a minute of traffic in no time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from distill.api_client.headers import rate_headers
from distill.jsonl import iter_jsonl

log = logging.getLogger(__name__)

DIMS = ("requests", "input_tokens", "output_tokens")
# The API rounds token counts in its headers to the nearest thousand; trust them only that far.
HEADER_SLACK = {"requests": 0.0, "input_tokens": 500.0, "output_tokens": 500.0}
STATE_FILE = "ratelimit_state.jsonl"


@dataclass
class Limits:
    """What ``client.*`` configures; ``None`` switches a limit off."""

    requests_per_minute: float | None = None
    input_tokens_per_minute: float | None = None
    output_tokens_per_minute: float | None = None
    burst_requests: float = 1.0
    burst_tokens_s: float = 1.0
    period_s: float = 60.0
    cache_reads_count: bool = False

    def __post_init__(self):
        for name in ("requests_per_minute", "input_tokens_per_minute", "output_tokens_per_minute"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"client.{name} must be > 0 or null, got {v}")
        if self.burst_requests < 1:
            raise ValueError(f"client.burst_requests must be >= 1 (a bucket must hold one request), "
                             f"got {self.burst_requests}")
        if self.burst_tokens_s <= 0 or self.period_s <= 0:
            raise ValueError(f"client.burst_tokens_s and client.rate_period_s must be > 0, got "
                             f"{self.burst_tokens_s} and {self.period_s}")

    def limit(self, dim: str) -> float | None:
        return {"requests": self.requests_per_minute, "input_tokens": self.input_tokens_per_minute,
                "output_tokens": self.output_tokens_per_minute}[dim]

    def capacity(self, dim: str, limit: float) -> float:
        if dim == "requests":
            return float(self.burst_requests)
        return max(1.0, limit * self.burst_tokens_s / self.period_s)


@dataclass
class TokenBucket:
    """``level`` tokens out of ``capacity``, refilled at ``rate`` per second since time ``t``."""

    capacity: float
    rate: float
    level: float
    t: float

    @classmethod
    def for_limit(cls, limit: float, capacity: float, period_s: float, now: float) -> "TokenBucket":
        capacity = min(capacity, limit)
        # limit - capacity per period keeps every period-long window at or under the limit; a
        # capacity that large (limit <= 2 x capacity) would starve, so such a bucket runs at half.
        spare = limit - capacity if limit >= 2 * capacity else limit / 2
        return cls(capacity=capacity, rate=spare / period_s, level=capacity, t=now)

    def refill(self, now: float) -> None:
        if now > self.t:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` may be taken (0 = now). A cost above capacity needs a full bucket."""
        self.refill(now)
        need = min(cost, self.capacity) - self.level
        return 0.0 if need <= 1e-6 else need / self.rate

    def take(self, cost: float, now: float) -> None:
        self.refill(now)
        self.level -= cost

    def give(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level = min(self.capacity, self.level + amount)

    def cap_level(self, most: float, now: float) -> None:
        self.refill(now)
        self.level = min(self.level, most)


@dataclass
class Grant:
    t: float
    cost: dict[str, float]
    settled: bool = False


def _build(limits: Limits, now: float) -> dict[str, TokenBucket]:
    out = {}
    for dim in DIMS:
        lim = limits.limit(dim)
        if lim is not None:
            out[dim] = TokenBucket.for_limit(float(lim), limits.capacity(dim, float(lim)), limits.period_s, now)
    return out


def replay(events: list[Mapping[str, Any]], limits: Limits, name: str, now: float
           ) -> tuple[dict[str, TokenBucket], float]:
    """Bucket levels and pause end at ``now`` after the logged events of limiter ``name``.

    Levels start full before the first event (what a fresh process would assume) and follow every
    logged take, give-back and snapshot in time order, so the result is the level the logging
    process had, minus the refunds it never lived to log: requests in flight at a crash stay
    charged in full, which errs on the safe side.
    """
    mine = sorted((e for e in events if e.get("n") == name), key=lambda e: float(e["t"]))
    start = float(mine[0]["t"]) if mine else now
    buckets = _build(limits, start)
    paused = 0.0
    for e in mine:
        t = min(float(e["t"]), now)
        if "levels" in e:
            for dim, lvl in e["levels"].items():
                if dim in buckets:
                    buckets[dim].refill(t)
                    buckets[dim].level = min(buckets[dim].capacity, float(lvl))
        for dim, d in (e.get("d") or {}).items():
            if dim in buckets:
                if d >= 0:
                    buckets[dim].take(float(d), t)
                else:
                    buckets[dim].give(-float(d), t)
        if "pause" in e:
            paused = max(paused, float(e["pause"]))
    for b in buckets.values():
        b.refill(now)
    return buckets, paused


class StateLog:
    """The append-only state file shared by the limiters of one run (one line per event)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.events: list[dict[str, Any]] = []
        if self.path.exists():  # a line torn by a crash may be followed by a restart's: keep the rest
            self.events = [event for _, event in iter_jsonl(self.path, skip_torn_lines=True)]
        self._fh = None

    def compact(self, snapshots: list[dict[str, Any]]) -> None:
        """Replace the file by one snapshot per limiter (atomically), then append from there."""
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(s) + "\n" for s in snapshots), encoding="utf-8")
        tmp.replace(self.path)
        self.events = list(snapshots)

    def append(self, event: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        # One write, flushed to the OS before the request leaves: a SIGKILL cannot lose it.
        self._fh.write(json.dumps(event) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class RateLimiter:
    """The buckets of one model class, with waiting, server feedback and an optional state log."""

    def __init__(self, limits: Limits | None = None, *, name: str = "default", clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = asyncio.sleep, state: StateLog | None = None):
        self.limits = limits or Limits()
        self.name = name
        self.clock = clock
        self.sleep = sleep
        self.state = state
        now = clock()
        if state is not None:
            self.buckets, self._paused_until = replay(state.events, self.limits, name, now)
        else:
            self.buckets, self._paused_until = _build(self.limits, now), 0.0
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None  # set by anything that may shorten the head waiter's wait
        self.grant_times: list[float] = []  # for tests and the run summary (clock time)
        self.waited_s = 0.0
        self._lowered: set[str] = set()

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        for b in self.buckets.values():
            b.refill(now)
        ev = {"n": self.name, "t": now, "levels": {d: b.level for d, b in self.buckets.items()}}
        if self._paused_until > now:
            ev["pause"] = self._paused_until
        return ev

    def idle(self) -> bool:
        """Every bucket full and no pause: a fresh limiter would be the same, nothing to keep."""
        now = self.clock()
        for b in self.buckets.values():
            b.refill(now)
        return self._paused_until <= now and all(b.level >= b.capacity - 1e-6 for b in self.buckets.values())

    def _log(self, event: dict[str, Any]) -> None:
        if self.state is not None:
            self.state.append({"n": self.name, **event})

    def check_fits(self, cost: Mapping[str, float]) -> None:
        for dim, b in self.buckets.items():
            lim = self.limits.limit(dim)
            if cost.get(dim, 0) > lim:
                key = {"input_tokens": "input_tokens_per_minute", "output_tokens": "output_tokens_per_minute"}[dim]
                raise ValueError(f"one request needs {int(cost[dim])} {dim.replace('_', ' ')}, more than "
                                 f"client.{key}={lim}; raise the limit or lower max_tokens / the prompt size")

    async def acquire(self, input_tokens: float = 0, output_tokens: float = 0) -> Grant:
        """Wait until one request of this size fits every bucket, take it, log it, return the grant.

        The lock serialises waiters so grants go in arrival order (a large request is not starved
        by a stream of small ones).
        """
        cost = {"requests": 1.0, "input_tokens": float(input_tokens), "output_tokens": float(output_tokens)}
        self.check_fits(cost)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                now = self.clock()
                wait = self._paused_until - now
                for dim, b in self.buckets.items():
                    wait = max(wait, b.wait_s(cost[dim], now))
                if wait <= 0:
                    taken = {d: cost[d] for d in self.buckets}
                    for d, b in self.buckets.items():
                        b.take(cost[d], now)
                    self._log({"t": now, "d": taken})
                    self.grant_times.append(now)
                    return Grant(now, taken)
                # At least 0.1 ms: clock readings near 1.7e9 s resolve only ~0.2 us, so a shorter
                # sleep could leave the clock where it was and spin.
                await self._sleep_or_wake(max(wait, 1e-4))
                self.waited_s += max(0.0, self.clock() - now)

    async def _sleep_or_wake(self, wait: float) -> None:
        """Sleep ``wait`` seconds, or less if a give-back (:meth:`_changed`) comes first."""
        self._wake = wake = asyncio.Event()
        sleeper = asyncio.ensure_future(self.sleep(wait))
        woken = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wake = None
            for task in (sleeper, woken):
                if not task.done():
                    task.cancel()
            await asyncio.gather(sleeper, woken, return_exceptions=True)

    def _changed(self) -> None:
        """Levels rose or limits moved: the head waiter must recompute its wait now, not sleep on."""
        if self._wake is not None:
            self._wake.set()

    def settle(self, grant: Grant, usage: Mapping[str, int] | None) -> None:
        """Give back what was reserved but not billed (or charge what was billed beyond it)."""
        if grant.settled or usage is None:
            return
        grant.settled = True
        billed_in = int(usage.get("input_tokens") or 0) + int(usage.get("cache_creation_input_tokens") or 0)
        if self.limits.cache_reads_count:
            billed_in += int(usage.get("cache_read_input_tokens") or 0)
        billed = {"input_tokens": billed_in, "output_tokens": int(usage.get("output_tokens") or 0)}
        now = self.clock()
        delta = {}
        for dim, actual in billed.items():
            if dim in self.buckets:
                d = actual - grant.cost.get(dim, 0.0)  # negative: a give-back
                if d:
                    (self.buckets[dim].take(d, now) if d > 0 else self.buckets[dim].give(-d, now))
                    delta[dim] = d
        if delta:
            self._log({"t": now, "d": delta})
        self._changed()  # a settled request also ends a worst case the waiter may be waiting out

    def pause_until(self, t: float) -> None:
        """Hold every caller until clock time ``t`` (a server ``retry-after`` applies to all)."""
        if t > self._paused_until:
            self._paused_until = t
            self._log({"t": self.clock(), "pause": t})

    def observe(self, headers: Any) -> None:
        """Adapt to the rate-limit response headers of either provider (missing ones are ignored)."""
        seen = rate_headers(headers)
        if not seen:
            return
        now = self.clock()
        for dim, b in self.buckets.items():
            lim, rem = seen.get(dim, (None, None))  # lim: per minute
            mine = self.limits.limit(dim)  # per period_s
            per_period = None if lim is None else lim * self.limits.period_s / 60.0
            if per_period is not None and mine is not None and per_period < mine and dim not in self._lowered:
                self._lowered.add(dim)
                log.warning("the server's %s limit is %g per minute, below client.%s=%g; pacing to the "
                            "server's limit", dim.replace("_", " "), lim, _key(dim), mine)
                nb = TokenBucket.for_limit(per_period, self.limits.capacity(dim, per_period),
                                           self.limits.period_s, now)
                nb.level = min(b.level, nb.capacity)
                self.buckets[dim] = b = nb
            if rem is not None:
                b.cap_level(rem + HEADER_SLACK[dim], now)
        self._changed()  # a lower level only lengthens the wait, but the waiter must see it


def _key(dim: str) -> str:
    return {"requests": "requests_per_minute", "input_tokens": "input_tokens_per_minute",
            "output_tokens": "output_tokens_per_minute"}[dim]


@dataclass
class LimiterPool:
    """One :class:`RateLimiter` per model (the API limits each model class on its own).

    :meth:`open_state` replays a state file (before any limiter is used), compacts it to one
    snapshot per limiter, and from then on every limiter logs to it; :meth:`close` writes a final
    snapshot.
    """

    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Any] = asyncio.sleep
    limiters: dict[str, RateLimiter] = field(default_factory=dict)
    state: StateLog | None = None

    def open_state(self, path: str | Path) -> None:
        if self.limiters and any(lim.grant_times for lim in self.limiters.values()):
            raise RuntimeError("LimiterPool.open_state() must come before the first request")
        self.state = StateLog(path)
        self.limiters = {}
        for n in sorted({e.get("n") for e in self.state.events if e.get("n")}):
            self.limiters[n] = RateLimiter(self.limits, name=n, clock=self.clock, sleep=self.sleep, state=self.state)
        self.state.compact(self._snapshots())

    def _snapshots(self) -> list[dict[str, Any]]:
        return [lim.snapshot() for lim in self.limiters.values() if not lim.idle()]

    def for_model(self, model: str) -> RateLimiter:
        if model not in self.limiters:
            self.limiters[model] = RateLimiter(self.limits, name=model, clock=self.clock, sleep=self.sleep,
                                               state=self.state)
        return self.limiters[model]

    @property
    def grant_times(self) -> list[float]:
        return sorted(t for lim in self.limiters.values() for t in lim.grant_times)

    @property
    def waited_s(self) -> float:
        return sum(lim.waited_s for lim in self.limiters.values())

    def close(self) -> None:
        if self.state is not None:
            self.state.close()
            self.state.compact(self._snapshots())
            self.state = None
            for lim in self.limiters.values():
                lim.state = None


def limits_from_config(c: Mapping[str, Any]) -> Limits:
    """``client.*`` -> :class:`Limits`; the old single ``tokens_per_minute`` is refused by name."""
    if c.get("tokens_per_minute") is not None:
        raise KeyError("client.tokens_per_minute was split: the API limits input and output tokens separately. "
                       "Set client.input_tokens_per_minute and client.output_tokens_per_minute instead.")
    return Limits(requests_per_minute=c.get("requests_per_minute"),
                  input_tokens_per_minute=c.get("input_tokens_per_minute"),
                  output_tokens_per_minute=c.get("output_tokens_per_minute"),
                  burst_requests=float(c.get("burst_requests", 1)), burst_tokens_s=float(c.get("burst_tokens_s", 1.0)),
                  period_s=float(c.get("rate_period_s", 60.0)),
                  cache_reads_count=bool(c.get("cache_reads_count", False)))


def state_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / STATE_FILE


__all__ = ["DIMS", "Grant", "LimiterPool", "Limits", "RateLimiter", "StateLog", "TokenBucket", "limits_from_config",
           "replay", "state_path"]
