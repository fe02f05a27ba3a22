"""Client-side sliding-window limiter for requests and tokens per window (per minute by default).

Why client-side when the API enforces its own limits: a 429 costs a round trip and a back-off, and
a burst of ``concurrency`` requests at start-up would trip it every time. Keeping under the
organisation's limit on our side turns the 429 path into the exception it should be.

Why a sliding window log and not a token bucket: a bucket allows a burst of ``capacity`` on top of
the refill rate, so "at most N per minute" can be exceeded in any 60 s window that straddles a
refill; a log of grants guarantees that **every** window of ``window_s`` seconds holds at most
``requests_per_window`` grants and ``tokens_per_window`` reserved tokens. Tokens are reserved
up front (an estimate of input plus ``max_tokens``, which bounds the output) and corrected to the
billed count once the response arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass


@dataclass
class Grant:
    t: float
    tokens: int


class RateLimiter:
    def __init__(self, requests_per_window: int | None = None, tokens_per_window: int | None = None,
                 window_s: float = 60.0, clock=time.monotonic):
        if requests_per_window is not None and requests_per_window < 1:
            raise ValueError(f"requests_per_minute must be >= 1 or null, got {requests_per_window}")
        if tokens_per_window is not None and tokens_per_window < 1:
            raise ValueError(f"tokens_per_minute must be >= 1 or null, got {tokens_per_window}")
        self.rpw = requests_per_window
        self.tpw = tokens_per_window
        self.window = float(window_s)
        self.clock = clock
        self._grants: deque[Grant] = deque()
        self._lock = asyncio.Lock()
        self._paused_until = 0.0
        self.grant_times: list[float] = []  # kept for tests and the run summary (monotonic clock)

    def _prune(self, now: float) -> None:
        while self._grants and self._grants[0].t <= now - self.window:
            self._grants.popleft()

    def _tokens_in_window(self) -> int:
        return sum(g.tokens for g in self._grants)

    def pause_until(self, t: float) -> None:
        """Hold every caller until monotonic time ``t`` (a server ``retry-after`` applies to all)."""
        self._paused_until = max(self._paused_until, t)

    async def acquire(self, tokens: int = 0) -> Grant:
        """Wait until one more request of ``tokens`` fits the window, then record it.

        The lock serialises waiters so grants are handed out in arrival order (no starvation of a
        large request by a stream of small ones).
        """
        if self.tpw is not None and tokens > self.tpw:
            raise ValueError(f"one request needs {tokens} tokens, more than tokens_per_minute={self.tpw}; "
                             f"raise the limit or lower max_tokens")
        async with self._lock:
            while True:
                now = self.clock()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                self._prune(now)
                wait = 0.0
                if self.rpw is not None and len(self._grants) >= self.rpw:
                    wait = max(wait, self._grants[0].t + self.window - now)
                if self.tpw is not None and self._tokens_in_window() + tokens > self.tpw:
                    # Wait until enough old grants leave the window to make room.
                    need = self._tokens_in_window() + tokens - self.tpw
                    freed = 0
                    for g in self._grants:
                        freed += g.tokens
                        if freed >= need:
                            wait = max(wait, g.t + self.window - now)
                            break
                if wait <= 0:
                    g = Grant(now, int(tokens))
                    self._grants.append(g)
                    self.grant_times.append(now)
                    return g
                await asyncio.sleep(wait + 1e-3)

    def settle(self, grant: Grant, actual_tokens: int) -> None:
        """Replace a grant's reserved tokens by what the server billed (usually fewer)."""
        grant.tokens = int(actual_tokens)
