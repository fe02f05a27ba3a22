"""One worker thread runs the model; HTTP threads queue :class:`~distill.serve.chat.ChatRequest`s.

Concurrent requests that share their sampling settings go through one batched ``generate`` (up to
``max_batch``), so N clients cost about one forward pass per token, not N. The queue is capped:
past ``max_queue`` waiting requests a new one gets 429 with ``retry-after`` at once, instead of a
timeout minutes later. :meth:`pause`/:meth:`resume` hold the worker, which lets tests fill the
queue deterministically.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from distill.serve.chat import ChatModel, ChatRequest
from distill.serve.errors import Busy, ServeLimits

log = logging.getLogger(__name__)


class Batcher:
    def __init__(self, chat: ChatModel, limits: ServeLimits):
        self.chat, self.limits = chat, limits
        self.queue: deque[ChatRequest] = deque()
        self.cv = threading.Condition()
        self.running = True
        self.batch_sizes: list[int] = []
        self.thread = threading.Thread(target=self._loop, name="distill-serve-batcher", daemon=True)
        self.thread.start()

    def submit(self, req: ChatRequest, timeout_s: float | None = None) -> dict[str, Any]:
        with self.cv:
            if len(self.queue) >= self.limits.max_queue:
                raise Busy(f"the queue is full ({self.limits.max_queue} requests waiting, --max-queue); "
                           f"retry after {self.limits.retry_after_s:g} s",
                           {"retry-after": f"{self.limits.retry_after_s:g}"})
            self.queue.append(req)
            self.cv.notify_all()
        req.done.wait(timeout_s)
        if req.error is not None:
            raise req.error
        if req.result is None:
            raise TimeoutError("generation did not finish in time")
        return req.result

    def pause(self) -> None:
        with self.cv:
            self.running = False

    def resume(self) -> None:
        with self.cv:
            self.running = True
            self.cv.notify_all()

    def _take(self) -> list[ChatRequest]:
        """The oldest request and the queued ones that can share its ``generate`` call."""
        first = self.queue.popleft()
        batch = [first]
        for r in list(self.queue):
            if len(batch) >= self.limits.max_batch:
                break
            if r.sampling_key == first.sampling_key:
                self.queue.remove(r)
                batch.append(r)
        return batch

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not (self.running and self.queue):
                    self.cv.wait()
                batch = self._take()
            self.batch_sizes.append(len(batch))
            try:
                results = self.chat.generate(batch)
                for r, res in zip(batch, results):
                    r.result = res
            except Exception as e:  # noqa: BLE001 - handed to each waiting request (a 500), the worker lives on
                log.exception("generation failed")
                for r in batch:
                    r.error = e
            for r in batch:
                r.done.set()
