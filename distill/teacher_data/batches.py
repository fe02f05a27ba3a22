"""Message Batches mode: submit, poll, collect - at the batch discount, and resumable.

A batch is paid for when it is submitted, not when we read it, so losing track of a submitted batch
would mean paying twice. Every submission is therefore logged to ``batches.jsonl`` (batch id and the
keys it carries) before anything else happens, and a rerun first polls and collects the batches that
log says are still open, and only submits keys that no open batch already covers. Collected results
go through the same :class:`ResultStore` as the Messages path, so collecting a batch twice stores
nothing twice.

Per-request failures inside a batch (``errored``, ``expired``, ``canceled``) are logged to
``errors.jsonl`` and left pending: the next run resubmits them.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Mapping

from distill.api_client.client import message_to_dict
from distill.jsonl import iter_jsonl
from distill.teacher_data.sampling import Key, custom_id, request_params
from distill.teacher_data.store import append_jsonl

log = logging.getLogger(__name__)

STATE = "batches.jsonl"


def load_state(path: Path) -> dict[str, dict[str, Any]]:
    """Batch id -> {"keys": [...], "collected": bool}, from the append-only state log."""
    state: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return state
    # a run killed mid-write and restarted appends after the torn line: skip it, keep the rest
    for _, ev in iter_jsonl(path, skip_torn_lines=True):
        if ev.get("event") == "submitted":
            state[ev["batch_id"]] = {"keys": [tuple(k) for k in ev["keys"]], "collected": False}
        elif ev.get("event") == "collected" and ev.get("batch_id") in state:
            state[ev["batch_id"]]["collected"] = True
    return state


async def _poll(gen: Any, batch_id: str, poll_s: float, max_wait_s: float | None) -> Any:
    sdk = gen.client.sdk
    waited = 0.0
    while True:
        b, _, _ = await gen.client.call_with_retries(lambda: sdk.messages.batches.retrieve(batch_id),
                                                     what=f"batch {batch_id} retrieve")
        c = b.request_counts
        if gen.pbar is not None:
            gen.pbar.set_description(f"batch {batch_id[-8:]} {c.succeeded + c.errored + c.expired + c.canceled}/"
                                     f"{c.succeeded + c.errored + c.expired + c.canceled + c.processing}")
        if b.processing_status == "ended":
            return b
        if max_wait_s is not None and waited >= max_wait_s:
            log.warning("batch %s still %s after %ss; rerun later to collect it (its id is saved in %s)",
                        batch_id, b.processing_status, max_wait_s, STATE)
            return None
        await asyncio.sleep(poll_s)
        waited += poll_s


async def _collect(gen: Any, batch_id: str, keys: list[Key]) -> None:
    sdk = gen.client.sdk
    by_id = {custom_id(k): k for k in keys}
    by_id.update({f"{k[0]}-{k[1]}": k for k in keys if len(gen.s.teachers) == 1})  # batches sent before models

    async def fetch():
        out = []
        async for entry in await sdk.messages.batches.results(batch_id):
            out.append(entry)
        return out

    entries, _, _ = await gen.client.call_with_retries(fetch, what=f"batch {batch_id} results",
                                                       deadline_s=None)
    for entry in entries:
        key = by_id.get(entry.custom_id)
        if key is None or key[0] not in gen.prompts:
            log.warning("batch %s: result for unknown custom_id %s ignored", batch_id, entry.custom_id)
            continue
        res = entry.result
        if res.type == "succeeded":
            try:
                result = message_to_dict(res.message)
            except ValueError as e:
                gen.fail(key, RuntimeError(f"batch {batch_id} {entry.custom_id}: {e}"))
                continue
            gen.save(gen.make_record(key, result, batch=True, attempts=1, latency_s=None))
        else:
            detail = ""
            if res.type == "errored":
                err = getattr(res.error, "error", None)
                detail = f": {getattr(err, 'type', '')} {getattr(err, 'message', '')}".rstrip()
            gen.fail(key, RuntimeError(f"batch {batch_id} {entry.custom_id} {res.type}{detail}; "
                                       f"rerun to resubmit it"))
    append_jsonl(gen.out_dir / STATE, {"event": "collected", "batch_id": batch_id})


async def run_batches(gen: Any, pending: list[Key], cfg: Mapping[str, Any]) -> None:
    """Submit ``pending`` (what no open batch covers), then poll and collect every open batch.

    ``gen`` is the :class:`~distill.teacher_data.generate.Generator` of the run (not imported here:
    the generator calls this module, never the other way round).
    """
    max_per_batch = int(cfg.get("max_requests_per_batch", 10000))
    poll_s = float(cfg.get("poll_interval_s", 30.0))
    max_wait_s = cfg.get("max_wait_s")
    max_wait_s = None if max_wait_s is None else float(max_wait_s)
    state_path = gen.out_dir / STATE
    state = load_state(state_path)

    # Batch logs written before multi-teacher keys hold (prompt_id, sample_idx): the run's model.
    open_batches = {bid: [k if len(k) == 3 else (k[0], int(k[1]), gen.s.model) for k in st["keys"]]
                    for bid, st in state.items() if not st["collected"]}
    covered = {k for keys in open_batches.values() for k in keys}
    reserved = 0.0
    for keys in open_batches.values():  # paid when submitted: hold their worst case against the budget
        for k in keys:
            if k in gen.prompts and k not in gen.store:
                amount = gen.worst_case(k, batch=True)
                gen.tracker.reserved += amount
                reserved += amount
    if open_batches:
        log.info("resuming %d submitted batch(es) from %s", len(open_batches), state_path)

    to_send = [k for k in pending if k not in covered]
    chunk: list[Key] = []
    chunks: list[list[Key]] = []
    for k in to_send:
        amount = gen.worst_case(k, batch=True)
        if not gen.tracker.try_reserve(amount):
            gen.summary.stopped = "budget"
            break
        reserved += amount
        chunk.append(k)
        if len(chunk) >= max_per_batch:
            chunks.append(chunk)
            chunk = []
    if chunk:
        chunks.append(chunk)

    sdk = gen.client.sdk
    for keys in chunks:
        requests = [{"custom_id": custom_id(k), "params": request_params(gen.prompts[k[0]], gen.s, k[2])}
                    for k in keys]
        b, _, _ = await gen.client.call_with_retries(lambda: sdk.messages.batches.create(requests=requests),
                                                     what=f"batch create ({len(requests)} requests)")
        append_jsonl(state_path, {"event": "submitted", "batch_id": b.id, "keys": [list(k) for k in keys]})
        log.info("submitted batch %s with %d requests", b.id, len(keys))
        open_batches[b.id] = keys

    try:
        for bid, keys in open_batches.items():
            if await _poll(gen, bid, poll_s, max_wait_s) is None:
                gen.summary.stopped = "batch_pending"
                continue
            await _collect(gen, bid, keys)
    finally:
        gen.tracker.release(reserved)
