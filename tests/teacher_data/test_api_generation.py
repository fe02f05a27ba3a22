"""The teacher client and generator against a local Messages/Batches server over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from distill.teacher_data.cli import GenerationIncomplete, run
from distill.api_client.pricing import PriceTable
from distill.api_client.ratelimit import Limits, RateLimiter

from api_teacher_helpers import PRICES, files_contain, generator, go, keys_of, make_prompts, records
from simclock import SimClock


def test_every_fault_is_retried_and_each_prompt_done_exactly_once(fake_api, api_key_env, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = fake_api()
    markers = ["[[429x2@0.3]]", "[[529x1]]", "[[500x2]]", "[[slowx1@3]]", "[[malformedx1]]", "[[schemax1]]",
               "[[refuse]]", "[[500x99]]"] + [""] * 8
    prompts = make_prompts(markers)
    gen = generator(server, tmp_path, prompts, timeout_s=1.2, attempts=4)
    summary = go(gen)

    recs = records(tmp_path)
    counts = keys_of(recs)
    hopeless = prompts[7].id
    assert set(counts) == {(p.id, 0, "claude-sonnet-4-5") for p in prompts if p.id != hopeless}
    assert max(counts.values()) == 1, "a key was stored twice"
    assert summary.done_now == 15 and summary.failed == 1 and summary.remaining == 1

    # The hopeless request gave up cleanly after max_attempts with an error naming it and the cause.
    err = [json.loads(x) for x in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert len(err) == 1 and err[0]["prompt_id"] == hopeless and err[0]["attempts"] == 4
    assert f"prompt {hopeless} sample 0: gave up after 4 attempts; last error: HTTP 500 api_error" in err[0]["error"]
    assert server.statuses()[500] == 2 + 4

    # Each fault cost exactly its scripted number of extra attempts.
    by = {p.id: r for r in recs for p in prompts if r["prompt_id"] == p.id}
    expect = {0: 3, 1: 2, 2: 3, 3: 2, 4: 2, 5: 2, 6: 1, 8: 1}
    for i, att in expect.items():
        assert by[prompts[i].id]["attempts"] == att, (i, markers[i])
    assert by[prompts[6].id]["stop_reason"] == "refusal"
    assert summary.retries == (2 + 1 + 2 + 1 + 1 + 1) + 3
    assert {"HTTP 429 rate_limit_error rate limited", "request timed out", "HTTP 529 overloaded_error Overloaded"} \
        <= set(summary.retry_reasons)

    # retry-after was honoured: the 429'd request came back no sooner than 0.3 s later.
    body = [e for e in server.log if e["fault"] == "429"][0]["body"]
    times = sorted(e["t"] for e in server.log if e["body"] == body)
    assert len(times) == 3 and all(b - a >= 0.3 for a, b in zip(times, times[1:]))

    # Costs add up to the usage the server reported, call by call and in total.
    total = 0.0
    for r in recs:
        assert r["usage"] == server.delivered[r["message_id"]]
        assert r["cost_usd"] == pytest.approx(PRICES.cost("claude-sonnet-4-5", server.delivered[r["message_id"]]))
        total += r["cost_usd"]
    assert summary.cost["cost_usd"] == pytest.approx(total, abs=1e-6)
    assert summary.cost["output_tokens"] == sum(server.delivered[r["message_id"]]["output_tokens"] for r in recs)

    # The key was sent (the server checks it) but is nowhere in what we wrote or logged.
    assert server.unauthorized == 0
    assert files_contain(tmp_path, api_key_env) == []
    assert api_key_env not in caplog.text

    # A rerun requests only the missing key; nothing is duplicated.
    n_before = len(server.log)
    gen2 = generator(server, tmp_path, prompts, timeout_s=1.2, attempts=4)
    s2 = go(gen2)
    assert s2.done_before == 15 and s2.done_now == 0 and s2.failed == 1
    assert len(server.log) - n_before == 4  # the hopeless prompt's 4 attempts, nothing else
    assert max(keys_of(records(tmp_path)).values()) == 1


def test_rate_limit_is_never_exceeded(fake_api, api_key_env, tmp_path):
    server = fake_api()
    prompts = make_prompts([""] * 20)
    rpm, window = 6, 0.5  # 6 per half second: a scaled minute
    gen = generator(server, tmp_path, prompts, rpm=rpm, window=window, concurrency=8)
    summary = go(gen)
    assert summary.done_now == 20
    grants = gen.client.limits.grant_times
    for i, t in enumerate(grants):  # the limiter's own ledger: <= rpm in every window, closed ends included
        assert sum(1 for u in grants[i:] if u <= t + window) <= rpm
    arrivals = server.message_times()  # what the server saw (minus loopback jitter)
    assert len(arrivals) == 20
    for i, t in enumerate(arrivals):
        assert sum(1 for u in arrivals[i:] if u < t + window - 0.05) <= rpm
    gaps = [b - a for a, b in zip(grants, grants[1:])]
    assert min(gaps) >= window / (rpm - 1) - 1e-3  # a bucket of one request: evenly spaced, no burst


def test_output_token_limit_bounds_billed_tokens_per_window(fake_api, api_key_env, tmp_path):
    server = fake_api()
    prompts = make_prompts([""] * 20)
    otpm, window = 1500, 0.5  # max_tokens 256 is reserved per request, the unused part given back
    gen = generator(server, tmp_path, prompts, otpm=otpm, window=window, burst_tokens_s=0.1, concurrency=6)
    assert go(gen).done_now == 20
    out = {r["message_id"]: r["usage"]["output_tokens"] for r in records(tmp_path)}
    ok = sorted(e["t"] for e in server.log if e.get("tokens"))
    assert len(ok) == 20
    # It had to wait: the answers' billed output exceeds one window's budget (a lower bound on a
    # real clock is safe; an upper bound is not, so speed is checked below in simulated time).
    assert sum(out.values()) > otpm and ok[-1] - ok[0] >= window * 0.5

    # The same limits and the same billed answers, on a simulated clock with 10 ms answers: the
    # give-backs make it faster than 256 tokens per request would allow, and every window still
    # holds at most the limit plus the bucket (billed tokens, counted at their grant).
    sim = SimClock()
    lim = RateLimiter(Limits(output_tokens_per_minute=otpm, period_s=window, burst_tokens_s=0.1),
                      clock=sim.clock, sleep=sim.sleep)
    billed = list(out.values())
    grants: list[tuple[float, int]] = []

    async def one(n_out: int) -> None:
        g = await lim.acquire(0, 256)
        grants.append((g.t, n_out))
        await sim.sleep(0.01)
        lim.settle(g, {"input_tokens": 0, "output_tokens": n_out})

    async def main():
        sem = asyncio.Semaphore(6)

        async def bounded(n_out):
            async with sem:
                await one(n_out)
        await asyncio.gather(*(bounded(n) for n in billed))

    asyncio.run(sim.run(main()))
    span = grants[-1][0] - grants[0][0]
    assert span < 20 * 256 / (otpm / window)
    cap = lim.buckets["output_tokens"].capacity
    for t, _ in grants:
        assert sum(n for u, n in grants if t <= u <= t + window) <= otpm + 256 + cap


def test_fatal_auth_error_stops_cleanly_and_wrong_key_is_not_written(fake_api, monkeypatch, tmp_path, teacher_cfg):
    server = fake_api()
    bad_key = "sk-ant-wrong-" + "Q" * 30
    monkeypatch.setenv("ANTHROPIC_API_KEY", bad_key)
    cfg = teacher_cfg(tmp_path, server.url)
    with pytest.raises(GenerationIncomplete, match="HTTP 401 authentication_error"):
        run(cfg)
    assert server.unauthorized >= 1 and server.unauthorized <= 4  # stopped at once, not 12 x retries
    summary = json.loads((tmp_path / "generation_summary.json").read_text())
    assert summary["stopped"] == "fatal"
    assert files_contain(tmp_path, bad_key) == []


def test_missing_key_is_a_clear_error(monkeypatch, tmp_path, teacher_cfg):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="ANTHROPIC_API_KEY is not set"):
        run(teacher_cfg(tmp_path, "https://api.example.invalid"))


def test_key_in_config_is_refused(fake_api, api_key_env, tmp_path, teacher_cfg):
    with pytest.raises(ValueError, match="credential"):
        run(teacher_cfg(tmp_path, "http://127.0.0.1:9", ["+client.api_key=abc"]))
    with pytest.raises(ValueError, match="contains the API key"):
        run(teacher_cfg(tmp_path, "http://127.0.0.1:9", [f"sampling.system_prompt=oops {api_key_env}"]))


def test_budget_stops_cleanly_and_rerun_continues(fake_api, api_key_env, tmp_path):
    server = fake_api()
    prompts = make_prompts([""] * 10)
    one = PRICES.worst_case("claude-sonnet-4-5", 60, 256)
    budget = 3.5 * one
    gen = generator(server, tmp_path, prompts, max_cost=budget, concurrency=2)
    s = go(gen)
    assert s.stopped == "budget"
    assert 3 <= s.done_now < 10
    assert s.cost["cost_usd"] <= budget
    # Raising the budget and rerunning finishes exactly the rest.
    gen2 = generator(server, tmp_path, prompts, max_cost=100.0)
    s2 = go(gen2)
    assert s2.stopped is None and s2.done_before + s2.done_now == 10
    recs = records(tmp_path)
    assert len(recs) == 10 and max(keys_of(recs).values()) == 1
    assert s2.cost["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in recs), abs=1e-6)


def test_n_samples_and_cached_system_prompt_are_priced_per_token_kind(fake_api, api_key_env, tmp_path):
    server = fake_api()
    prompts = make_prompts([""] * 3)
    gen = generator(server, tmp_path, prompts, n=3, system="You are a careful engineer. " * 20, concurrency=1)
    s = go(gen)
    recs = records(tmp_path)
    assert set(keys_of(recs)) == {(p.id, i, "claude-sonnet-4-5") for p in prompts for i in range(3)}
    assert sum(r["usage"]["cache_creation_input_tokens"] > 0 for r in recs) == 1
    assert sum(r["usage"]["cache_read_input_tokens"] > 0 for r in recs) == 8
    assert s.cost["cache_read_input_tokens"] == sum(r["usage"]["cache_read_input_tokens"] for r in recs)
    assert s.cost["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in recs), abs=1e-6)


def test_manifest_blocks_mixing_models(fake_api, api_key_env, tmp_path):
    server = fake_api()
    prompts = make_prompts([""] * 2)
    go(generator(server, tmp_path, prompts))
    gen = generator(server, tmp_path, prompts)
    gen.s.max_tokens = 999
    with pytest.raises(ValueError, match=r"max_tokens: 256 -> 999"):
        go(gen)


def test_batch_mode_submits_polls_collects_and_resumes(fake_api, api_key_env, tmp_path, teacher_cfg):
    server = fake_api(batch_delay_s=0.6)
    # First run gives up polling at once: the batch must be remembered, not resubmitted.
    cfg = teacher_cfg(tmp_path, server.url, ["mode=batch", "batch.max_wait_s=0", "stage=generate",
                                             "prompts.num_prompts=10"])
    out = run(cfg)
    assert out["generation"]["stopped"] == "batch_pending" and out["generation"]["done_now"] == 0
    assert len(server.batches) == 1
    cfg = teacher_cfg(tmp_path, server.url, ["mode=batch", "stage=generate", "prompts.num_prompts=10"])
    out = run(cfg)
    assert len(server.batches) == 1, "an open batch was resubmitted (paid twice)"
    assert out["generation"]["done_now"] == 10
    recs = records(tmp_path)
    assert len(recs) == 10 and all(r["batch"] for r in recs)
    for r in recs:  # 50% batch discount on every token kind
        full = PriceTable.from_config({"models": {"claude-sonnet-4-5": {"input": 3.0, "output": 15.0}}})
        assert r["cost_usd"] == pytest.approx(0.5 * full.cost("claude-sonnet-4-5", server.delivered[r["message_id"]]))
    assert files_contain(tmp_path, api_key_env) == []


def test_batch_mode_with_several_teachers_collects_one_record_per_model(fake_api, api_key_env, tmp_path, teacher_cfg):
    server = fake_api(batch_delay_s=0.1)
    models = ["claude-haiku-4-5", "claude-sonnet-4-5"]
    cfg = teacher_cfg(tmp_path, server.url, ["mode=batch", "stage=generate", "prompts.num_prompts=5",
                                             f"sampling.models=[{','.join(models)}]"])
    out = run(cfg)
    assert out["generation"]["done_now"] == 10
    recs = records(tmp_path)
    assert sorted(keys_of(recs).values()) == [1] * 10
    assert {r["requested_model"] for r in recs} == set(models) and all(r["model"] == r["requested_model"] for r in recs)
    sent = [r["custom_id"] for b in server.batches.values() for r in b["results"]]
    assert len(set(sent)) == 10 and all(len(c) <= 64 for c in sent)  # the API's custom_id limit


def test_batch_errored_results_are_retried_on_rerun(fake_api, api_key_env, tmp_path):
    server = fake_api(batch_delay_s=0.1)
    prompts = make_prompts(["", "", "[[batcherr]]", ""])
    gen = generator(server, tmp_path, prompts)
    s = go(gen, mode="batch", batch_cfg={"poll_interval_s": 0.05})
    assert s.done_now == 3 and s.failed == 1
    assert "errored: api_error internal error while processing" in (tmp_path / "errors.jsonl").read_text()
    gen = generator(server, tmp_path, prompts)
    s = go(gen, mode="batch", batch_cfg={"poll_interval_s": 0.05})
    assert s.done_before == 3 and s.failed == 1
    assert len(server.batches) == 2
    assert [len(b["results"]) for b in server.batches.values()] == [4, 1]  # only the errored one resent


def test_progress_bar_shows_done_total_tokens_and_dollars(fake_api, api_key_env, tmp_path, capsys):
    server = fake_api()
    gen = generator(server, tmp_path, make_prompts([""] * 4), progress=True)
    go(gen)
    err = capsys.readouterr().err
    assert "4/4" in err and "out=" in err and "$0.0" in err


def test_temperature_and_extra_params_reach_the_wire(fake_api, api_key_env, tmp_path):
    server = fake_api()
    seen = []
    orig = server.message

    def spy(body, batch=False):
        seen.append(body)
        return orig(body, batch)

    server.message = spy
    gen = generator(server, tmp_path, make_prompts([""]))
    gen.s.temperature = 0.3
    gen.s.extra_params = {"output_config": {"effort": "low"}}
    go(gen)
    assert seen[0]["temperature"] == 0.3 and seen[0]["output_config"] == {"effort": "low"}


def test_estimate_stage_prices_the_prompt_set_without_calling_the_api(tmp_path, teacher_cfg, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)  # not needed: nothing is sent
    out = run(teacher_cfg(tmp_path, "http://127.0.0.1:9", ["stage=estimate", "sampling.n=2"]))
    est = out["estimate"]
    assert est["calls"] == 24 and est["expected_output_tokens"] == 24 * 512  # min(mean 700, max_tokens 512)
    son = est["models"]["claude-sonnet-4-5"]
    assert son["expected_batch_usd"] == pytest.approx(son["expected_usd"] / 2, abs=0.011)
    assert son["worst_case_usd"] > son["expected_usd"] > est["models"]["claude-haiku-4-5"]["expected_usd"]
    assert not (tmp_path / "results.jsonl").exists()
