"""Helpers shared by the API-teacher tests: prompts with fault markers, a generator on the local server."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from distill.api_client.client import RetryPolicy, TeacherClient
from distill.teacher_data.generate import Generator
from distill.api_client.pricing import PriceTable
from distill.teacher_data.promptset import Prompt
from distill.api_client.ratelimit import LimiterPool, Limits
from distill.teacher_data.sampling import Sampling

PRICES = PriceTable({"claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30},
                    "claude-haiku-4-5": {"input": 1.0, "output": 5.0}, "claude-opus-4-5": {"input": 5.0, "output": 25.0}})


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def keys_of(recs) -> Counter:
    return Counter((r["prompt_id"], r["sample_idx"], r["requested_model"]) for r in recs)


def files_contain(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def make_prompts(markers: list[str]) -> list[Prompt]:
    langs = ["python", "javascript", "java", "cpp", "go", "rust"]
    out = []
    for i, m in enumerate(markers):
        lang = langs[i % len(langs)]
        name = {"cpp": "C++", "javascript": "JavaScript"}.get(lang, lang.capitalize())
        out.append(Prompt(f"Write {name} code for task number {i}: sum a list of integers. {m}".strip(),
                          "base", "write", lang, "easy"))
    return out


def generator(server, out, prompts, *, rpm=None, itpm=None, otpm=None, window=60.0, burst_tokens_s=1.0,
              timeout_s=5.0, attempts=4, n=1, concurrency=4, max_cost=None, system=None, key=None, progress=False,
              models=None):
    limits = Limits(requests_per_minute=rpm, input_tokens_per_minute=itpm, output_tokens_per_minute=otpm,
                    period_s=window, burst_tokens_s=burst_tokens_s)
    client = TeacherClient(base_url=server.url, timeout_s=timeout_s, concurrency=concurrency,
                           limits=LimiterPool(limits),
                           retry=RetryPolicy(max_attempts=attempts, base_delay_s=0.05, max_delay_s=0.2), api_key=key)
    s = Sampling(model="claude-sonnet-4-5", max_tokens=256, n=n, system_prompt=system, models=models)
    return Generator(prompts, out, s, PRICES, client, max_cost_usd=max_cost, progress=progress, fsync=False)


def go(gen, **kw):
    async def main():
        try:
            return await gen.run(concurrency=gen.client.concurrency, **kw)
        finally:
            await gen.client.close()
    return asyncio.run(main())


def max_in_window(times: list[float], window: float) -> int:
    """Most events in any closed window ``[t, t + window]``."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] <= t + window + 1e-9:
            j += 1
        best = max(best, j - i)
    return best
