"""Collect ``n`` teacher answers per prompt into ``results.jsonl``, resumably and within budget.

Work is a set of keys ``(prompt_id, sample_idx, model)`` (:mod:`~distill.teacher_data.sampling`); the results file is the single source of truth
for which keys are done. A run computes ``pending = all keys - done``, sends them (Messages API
with a worker pool, or Message Batches), and appends each answer the moment it arrives. So a rerun
after a crash, a Ctrl-C or a budget stop sends exactly the missing keys, and no key is ever stored
twice.

Each answer is parsed as it arrives when its prompt asked for a rationale
(:mod:`~distill.teacher_data.rationale`), so the record keeps ``rationale`` and ``answer`` as
fields of their own. The client's rate-limiter state is kept in the output folder and replayed by
the next run, so a restart right after a crash stays within the limits.

A ``manifest.json`` pins the settings that change answers (models, temperature, max_tokens, system
prompt): resuming a folder with different settings would silently mix two datasets, so it is an
error unless ``allow_settings_change`` is set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from distill.teacher_data import rationale
from distill.teacher_data.batches import run_batches
from distill.api_client.client import FatalAPIError, RequestFailed, TeacherClient, estimate_tokens
from distill.api_client.pricing import CostTracker, PriceTable
from distill.teacher_data.promptset import Prompt
from distill.api_client.ratelimit import state_path
from distill.teacher_data.sampling import Key, Sampling, prompt_meta, request_params
from distill.teacher_data.store import ResultStore, append_jsonl

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
ERRORS = "errors.jsonl"
MANIFEST = "manifest.json"
SUMMARY = "generation_summary.json"


@dataclass
class RunSummary:
    total: int = 0
    done_before: int = 0
    done_now: int = 0
    failed: int = 0
    stopped: str | None = None  # None (finished), "budget", "fatal", "interrupted"
    errors: list[str] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    rate_limit_wait_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def remaining(self) -> int:
        return self.total - self.done_before - self.done_now

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["remaining"] = self.remaining
        d["errors"] = self.errors[:20]
        return d


def check_manifest(out_dir: Path, s: Sampling, allow_change: bool) -> None:
    path = out_dir / MANIFEST
    ident = s.identity()
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in ident.items() if old.get(k) != v}
        if diff and not allow_change:
            pretty = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{path}: this folder holds answers generated with other settings ({pretty}). "
                             f"Use a new out_dir, or set allow_settings_change=true to mix them deliberately.")
    path.write_text(json.dumps(ident, indent=2) + "\n", encoding="utf-8")


class Generator:
    """Shared state of one run: store, client, cost tracker, progress bar."""

    def __init__(self, prompts: list[Prompt], out_dir: str | Path, sampling: Sampling, prices: PriceTable,
                 client: TeacherClient | None, max_cost_usd: float | None = None, progress: bool = True,
                 allow_settings_change: bool = False, fsync: bool = True, keep_rate_state: bool = True):
        self.prompts = {p.id: p for p in prompts}
        if len(self.prompts) != len(prompts):
            log.warning("prompt set has %d duplicate ids; each is sent once", len(prompts) - len(self.prompts))
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.s = sampling
        self.prices = prices
        for m in sampling.teachers:
            prices.price(m)  # fail now, not after the first paid call, if a model is unpriced
        self.client = client
        self.tracker = CostTracker(prices, max_cost_usd)
        self.progress = progress
        self.allow_settings_change = allow_settings_change
        self.keep_rate_state = keep_rate_state
        self.store = ResultStore(self.out_dir / RESULTS, fsync=fsync)
        self.summary = RunSummary()
        self.pbar = None

    # -- bookkeeping ---------------------------------------------------------------------------
    def keys(self) -> list[Key]:
        return self.s.keys(self.prompts)

    def pending(self) -> list[Key]:
        return [k for k in self.keys() if k not in self.store]

    def worst_case(self, key: Key, batch: bool = False) -> float:
        text = self.prompts[key[0]].text + (self.s.system_prompt or "")
        return self.prices.worst_case(key[2], estimate_tokens(text), self.s.max_tokens, batch=batch)

    def what(self, key: Key) -> str:
        who = f" model {key[2]}" if len(self.s.teachers) > 1 else ""
        return f"prompt {key[0]} sample {key[1]}{who}"

    def make_record(self, key: Key, result: dict[str, Any], *, batch: bool, attempts: int,
                    latency_s: float | None) -> dict[str, Any]:
        p = self.prompts[key[0]]
        cost = self.tracker.add(key[2], result["usage"], batch=batch)
        rec = {"prompt_id": key[0], "sample_idx": key[1], "prompt": p.text, "system": self.s.system_prompt,
               "meta": prompt_meta(p), "completion": result["text"], "stop_reason": result["stop_reason"],
               "stop_details": result.get("stop_details"), "model": result.get("model") or key[2],
               "requested_model": key[2], "temperature": self.s.temperature, "max_tokens": self.s.max_tokens,
               "usage": result["usage"], "cost_usd": cost, "batch": batch, "message_id": result.get("message_id"),
               "attempts": attempts, "latency_s": None if latency_s is None else round(latency_s, 3),
               "created_at": datetime.now(timezone.utc).isoformat()}
        if result.get("logprobs") is not None:  # provider=openai with logprobs=k: beside the text
            rec["logprobs"] = result["logprobs"]
        if p.response_format == "rationale":
            parsed = rationale.parse(result["text"])
            rec["rationale"], rec["answer"] = parsed if parsed else (None, None)
        return rec

    def save(self, rec: dict[str, Any]) -> None:
        if self.store.append(rec):
            self.summary.done_now += 1
            if self.pbar is not None:
                self.pbar.update(1)
                self._postfix()

    def fail(self, key: Key, err: BaseException, attempts: int | None = None) -> None:
        self.summary.failed += 1
        self.summary.errors.append(str(err))
        append_jsonl(self.out_dir / ERRORS, {"prompt_id": key[0], "sample_idx": key[1], "model": key[2],
                                             "error": str(err),
                                             "status": getattr(err, "status", None), "attempts": attempts,
                                             "time": datetime.now(timezone.utc).isoformat()})
        log.error("%s", err)

    def _postfix(self) -> None:
        t = self.tracker.tokens
        self.pbar.set_postfix_str(f"in={t['input_tokens'] + t['cache_read_input_tokens'] + t['cache_creation_input_tokens']:,} "
                                  f"out={t['output_tokens']:,} ${self.tracker.spent:.4f}", refresh=False)

    def open_progress(self, total: int, initial: int) -> None:
        if not self.progress:
            return
        from tqdm.auto import tqdm

        self.pbar = tqdm(total=total, initial=initial, desc="teacher", unit="ans", dynamic_ncols=True)
        self._postfix()

    # -- the Messages-API path -----------------------------------------------------------------
    async def _worker(self, queue: asyncio.Queue, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                key = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            prompt = self.prompts[key[0]]
            reserve = self.worst_case(key)
            if not self.tracker.try_reserve(reserve):
                self.summary.stopped = self.summary.stopped or "budget"
                stop.set()
                return
            t0 = time.monotonic()
            try:
                result, attempts = await self.client.create(
                    request_params(prompt, self.s, key[2]), what=self.what(key))
            except RequestFailed as e:
                self.tracker.release(reserve)
                self.fail(key, e, e.attempts)
                continue
            except FatalAPIError as e:
                self.tracker.release(reserve)
                self.summary.stopped = "fatal"
                self.fail(key, e)
                stop.set()
                return
            self.tracker.release(reserve)
            self.save(self.make_record(key, result, batch=False, attempts=attempts,
                                       latency_s=time.monotonic() - t0))

    async def run_messages(self, pending: list[Key], concurrency: int) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for k in pending:
            queue.put_nowait(k)
        stop = asyncio.Event()
        workers = [asyncio.create_task(self._worker(queue, stop)) for _ in range(max(1, concurrency))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    # -- entry point -----------------------------------------------------------------------------
    async def run(self, mode: str = "messages", concurrency: int = 8, batch_cfg: Mapping[str, Any] | None = None
                  ) -> RunSummary:
        t0 = time.monotonic()
        check_manifest(self.out_dir, self.s, self.allow_settings_change)
        with self.store:
            if self.client is not None and self.keep_rate_state:
                # After the store's lock: only the folder's one writer may replay and compact it.
                self.client.limits.open_state(state_path(self.out_dir))
            for rec in self.store.records.values():  # the budget covers the whole folder, reruns included
                self.tracker.add_existing(rec.get("usage") or {}, rec.get("cost_usd") or 0.0)
            keys = self.keys()
            pending = self.pending()
            self.summary.total = len(keys)
            self.summary.done_before = len(keys) - len(pending)
            log.info("teacher data: %d prompts x %d samples x %d model(s) = %d answers; %d done already, %d to request "
                     "(spent so far $%.4f)", len(self.prompts), self.s.n, len(self.s.teachers), len(keys),
                     self.summary.done_before,
                     len(pending), self.tracker.spent)
            self.open_progress(len(keys), self.summary.done_before)
            try:
                if pending:
                    if mode == "messages":
                        await self.run_messages(pending, concurrency)
                    elif mode == "batch":
                        await run_batches(self, pending, dict(batch_cfg or {}))
                    else:
                        raise ValueError(f"mode must be 'messages' or 'batch', got {mode!r}")
            except (asyncio.CancelledError, KeyboardInterrupt):
                self.summary.stopped = "interrupted"
                raise
            finally:
                if self.pbar is not None:
                    self.pbar.close()
                self.summary.cost = self.tracker.summary()
                if self.client is not None:
                    self.client.limits.close()
                    self.summary.rate_limit_wait_s = round(self.client.limits.waited_s, 3)
                    self.summary.attempts = self.client.attempts
                    self.summary.retries = self.client.retries
                    self.summary.retry_reasons = dict(self.client.retry_reasons)
                self.summary.elapsed_s = round(time.monotonic() - t0, 3)
                (self.out_dir / SUMMARY).write_text(json.dumps(self.summary.to_dict(), indent=2) + "\n",
                                                    encoding="utf-8")
        if self.summary.stopped == "budget":
            log.warning("budget max_cost_usd=%s reached ($%.4f spent): %d answers not requested. Raise "
                        "max_cost_usd and rerun to continue.", self.tracker.max_cost_usd, self.tracker.spent,
                        self.summary.remaining)
        return self.summary
