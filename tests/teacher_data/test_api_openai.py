"""provider=openai: chat completions at any OpenAI-compatible base_url, with everything the Messages
path has (retries, limits from x-ratelimit-* headers, the exactly-once store, cost, filters,
report, rationale and multi-teacher modes) and the answer's top-k log-probs stored beside it."""

from __future__ import annotations

import json

import pytest

from distill.api_client.client import RetryPolicy
from distill.api_client.openai_client import OpenAIClient, chat_params
from distill.api_client.ratelimit import LimiterPool, Limits, RateLimiter
from distill.teacher_data.cli import run
from distill.teacher_data.generate import Generator
from distill.teacher_data.sampling import Sampling

from api_teacher_helpers import PRICES, go, keys_of, make_prompts, max_in_window, records
from fake_openai import FakeOpenAI
from fake_anthropic import TEST_KEY, compose_teacher_cfg


@pytest.fixture
def fake_openai():
    servers = []

    def make(**kw) -> FakeOpenAI:
        s = FakeOpenAI(**kw).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def openai_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return TEST_KEY


def oai_generator(server, out, prompts, *, rpm=None, window=60.0, concurrency=4, logprobs=None, attempts=4):
    client = OpenAIClient(base_url=server.url + "/v1", timeout_s=5.0, concurrency=concurrency,
                          limits=LimiterPool(Limits(requests_per_minute=rpm, period_s=window)),
                          retry=RetryPolicy(max_attempts=attempts, base_delay_s=0.05, max_delay_s=0.2),
                          logprobs=logprobs)
    s = Sampling(model="claude-sonnet-4-5", max_tokens=256, system_prompt="Be brief.")
    return Generator(prompts, out, s, PRICES, client, progress=False, fsync=False)


def test_chat_body_carries_the_system_prompt_as_a_message_and_asks_for_logprobs():
    body = chat_params({"model": "m", "max_tokens": 9, "temperature": 0.0,
                        "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
                        "messages": [{"role": "user", "content": "hi"}]}, logprobs=3)
    assert body == {"model": "m", "max_tokens": 9, "temperature": 0.0, "logprobs": True, "top_logprobs": 3,
                    "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]}


def test_faults_are_retried_each_prompt_stored_once_priced_and_logprobs_kept(fake_openai, openai_key, tmp_path):
    server = fake_openai()
    markers = ["[[429x2@0.2]]", "[[500x1]]", "[[malformedx1]]", "[[500x99]]"] + [""] * 6
    prompts = make_prompts(markers)
    s = go(oai_generator(server, tmp_path, prompts, logprobs=3))
    assert s.done_now == 9 and s.failed == 1
    recs = records(tmp_path)
    assert max(keys_of(recs).values()) == 1
    by = {r["prompt_id"]: r for r in recs}
    assert [by[prompts[i].id]["attempts"] for i in (0, 1, 2, 4)] == [3, 2, 2, 1]
    assert "HTTP 500 server_error server error" in (tmp_path / "errors.jsonl").read_text()
    for r in recs:
        assert r["usage"] == server.delivered[r["message_id"]]
        assert r["cost_usd"] == pytest.approx(PRICES.cost("claude-sonnet-4-5", r["usage"]))
        lp = r["logprobs"]
        assert lp["k"] == 3 and "".join(lp["tokens"]) == r["completion"]
        assert len(lp["logprobs"]) == len(lp["top_tokens"]) == len(lp["top_logprobs"]) == len(lp["tokens"]) > 0
        assert all(len(t) == 3 and t[0] == tok for t, tok in zip(lp["top_tokens"], lp["tokens"]))
    again = go(oai_generator(server, tmp_path, prompts, logprobs=3))  # a rerun asks only the failed one
    assert again.done_before == 9 and again.done_now == 0 and len(records(tmp_path)) == 9


def test_x_ratelimit_headers_lower_the_request_bucket_and_cap_the_token_buckets():
    lim = RateLimiter(Limits(requests_per_minute=600, output_tokens_per_minute=60000, burst_requests=5),
                      clock=lambda: 0.0)
    lim.observe({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                 "x-ratelimit-remaining-tokens": "100"})
    assert lim.buckets["requests"].rate == pytest.approx((60 - 5) / 60) and lim.buckets["requests"].level == 0
    assert lim.buckets["output_tokens"].level == 600  # the remaining total, +500 for rounding


def test_the_limiter_holds_the_rpm_within_10_percent_in_every_10s_window(fake_openai, openai_key, tmp_path):
    # A scaled minute of 3 s: the "10 s window" is 0.5 s; 120 requests take ~1.8 s. The server
    # enforces the same limit with its own bucket and answers x-ratelimit-* headers and 429s.
    rpm, period = 200, 3.0
    server = fake_openai(rate_limits={"rpm": rpm}, period_s=period, capacity_s=period / 60)
    gen = oai_generator(server, tmp_path, make_prompts([""] * 120), rpm=rpm, window=period, concurrency=8)
    assert go(gen).done_now == 120
    arrivals = server.message_times()
    assert len(arrivals) >= 120 and arrivals[-1] - arrivals[0] > period / 6 * 3
    assert max_in_window(arrivals, period / 6) <= 1.1 * rpm / 6
    assert max_in_window(gen.client.limits.grant_times, period / 6) <= rpm / 6 + 1
    assert server.ratelimited() <= 2


def test_the_cli_runs_every_stage_on_a_local_server_without_a_key(fake_openai, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = fake_openai(api_key="no-key-needed-on-loopback")  # what the client sends when none is set
    models = ["teacher-a", "teacher-b"]
    cfg = compose_teacher_cfg(tmp_path, server.url + "/v1", [
        "provider=openai", "teacher_data/pricing=local", "logprobs=2", "teacher_data/prompts=rationale",
        "prompts.num_prompts=6", f"sampling.models=[{','.join(models)}]"])
    out = run(cfg)
    assert out["generation"]["done_now"] == 12 and out["generation"]["cost"]["cost_usd"] == 0.0
    recs = records(tmp_path)
    assert sorted(keys_of(recs).values()) == [1] * 12 and {r["requested_model"] for r in recs} == set(models)
    assert all(r["rationale"] and r["answer"] and r["logprobs"]["k"] == 2 for r in recs)
    assert out["filter"]["kept"] > 0 and (tmp_path / "dataset_report.md").exists()
    kept = [json.loads(x) for x in (tmp_path / "filtered.jsonl").read_text().splitlines()]
    assert len({r["prompt_id"] for r in kept}) == len(kept)  # the best answer per prompt across teachers

    with pytest.raises(ValueError, match="mode=batch uses Anthropic"):
        run(compose_teacher_cfg(tmp_path / "b", server.url + "/v1", ["provider=openai", "mode=batch",
                                                                    "teacher_data/pricing=local"]))
