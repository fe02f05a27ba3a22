"""``distill-teacher-data provider=openai`` against distill-serve-teacher serving the real SmolLM2 on
loopback, with a ``kill -9`` mid-run: the rerun asks exactly the missing prompts, so every prompt is
answered once and none twice.

Small on purpose (6 prompts, 24 new tokens, 2 requests at a time) so the file runs in well under a
minute on 2 shared cores. The kill lands mid-run by construction, not by timing: once 2 answers are
on disk the server's batcher is paused, the generator's next requests sit in the server's queue,
and the process is killed with them in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
N, MAX_TOKENS = 6, 24


def _cmd(srv, out: Path, stage: str) -> list[str]:
    return [sys.executable, "-m", "distill.teacher_data.cli", "provider=openai",
            f"client.base_url=http://127.0.0.1:{srv.server_port}/v1", "teacher_data/pricing=local",
            f"sampling.model={srv.app.name}", f"sampling.max_tokens={MAX_TOKENS}", "client.concurrency=2",
            "client.requests_per_minute=600", "teacher_data/prompts=small", f"prompts.num_prompts={N}",
            "logprobs=2", "progress=false", "client.fsync=false", f"out_dir={out}", f"stage={stage}"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env  # no key at all: a server on 127.0.0.1 needs none


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_teacher_data_on_the_local_model_survives_kill_9_with_every_prompt_answered_once(smol_server, tmp_path):
    app = smol_server.app
    out = tmp_path / "td"
    results = out / "results.jsonl"
    generated_before = sum(app.batcher.batch_sizes)
    proc = subprocess.Popen(_cmd(smol_server, out, "generate"), cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while _lines(results) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the generator made no progress"
            time.sleep(0.02)
        app.batcher.pause()  # answers already being generated still return; new ones wait in the queue
        # Both workers blocked in the queue: each stored its last answer before asking again, so
        # nothing is being written, and the kill loses exactly these two requests.
        while len(app.batcher.queue) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the generator's requests did not reach the server's queue"
            time.sleep(0.02)
        done_at_kill = _lines(results)
        proc.send_signal(signal.SIGKILL)  # no cleanup of any kind runs
        proc.wait(10)
    finally:
        app.batcher.resume()  # the dead client's queued requests are answered into a closed socket
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert 2 <= done_at_kill < N, "the kill did not land mid-run"

    rerun = subprocess.run(_cmd(smol_server, out, "all"), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                           timeout=180)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    recs = [json.loads(x) for x in results.read_text().splitlines()]
    prompts = [json.loads(x) for x in (out / "prompts.jsonl").read_text().splitlines()]
    keys = Counter((r["prompt_id"], r["sample_idx"]) for r in recs)
    assert len(prompts) == N and set(keys) == {(p["id"], 0) for p in prompts}
    assert max(keys.values()) == 1 and len(recs) == N  # every prompt once, none twice
    # The rerun asked only what was missing: the server generated the N answers plus the two
    # requests lost at the kill (answered into the dead client's closed sockets).
    assert sum(app.batcher.batch_sizes) - generated_before == N + 2
    summary = json.loads((out / "generation_summary.json").read_text())
    assert summary["done_before"] == done_at_kill and summary["done_now"] == N - done_at_kill
    for r in recs:
        assert r["model"] == app.name and r["completion"].strip() and r["cost_usd"] == 0.0
        assert 0 < r["usage"]["output_tokens"] <= MAX_TOKENS
        lp = r["logprobs"]
        assert lp["k"] == 2 and len(lp["tokens"]) == len(lp["logprobs"]) == len(lp["top_logprobs"])
        # the end-of-turn token is counted in usage but carries no text, so it has no log-prob entry
        assert r["usage"]["output_tokens"] - len(lp["tokens"]) in (0, 1)
        assert all(top[0] >= lp_ - 1e-6 for top, lp_ in zip(lp["top_logprobs"], lp["logprobs"]))
    report = json.loads((out / "filter_report.json").read_text())
    assert report["input_records"] == N and (out / "dataset_report.md").is_file()
