"""A simulated clock for asyncio code: ``sleep`` parks the caller until the clock reaches its time,
and :meth:`SimClock.run` advances the clock only when every task is parked.

The limiter tests need real concurrency (requests in flight, give-backs arriving while another
request waits) in simulated time: a clock whose ``sleep`` just adds to ``t`` would run each sleeper
to its end before anything else happens, which hides exactly the wake-up the limiter must do.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class SimClock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t
        self._timers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.t + max(0.0, s), next(self._seq), fut))
        await fut  # a cancelled sleep leaves a cancelled future, skipped when the clock moves

    async def _settle(self) -> None:
        # Enough loop turns for every ready task to run until it parks again (no real I/O here).
        for _ in range(64):
            await asyncio.sleep(0)

    async def run(self, coro):
        """Run ``coro`` to completion, jumping the clock to the next timer whenever all are parked."""
        main = asyncio.ensure_future(coro)
        while True:
            await self._settle()
            if main.done():
                return main.result()
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)
            if not self._timers:
                main.cancel()
                raise RuntimeError("deadlock: every task waits and no timer is set")
            t, _, fut = heapq.heappop(self._timers)
            self.t = max(self.t, t)
            fut.set_result(None)
