"""The installed ``distill-teacher-data`` console script, started from a temporary directory.

It used to fail from every directory with "Primary config module 'conf' not found" (a relative
``config_path``); ``python -m distill.teacher_data.cli`` from the repository root hid that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("distill-teacher-data")


def _env(key: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_") and k != "PYTHONPATH"}
    if key:
        env["ANTHROPIC_API_KEY"] = key
    return env


pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason=f"{SCRIPT} is not installed (pip install -e .[api])")


def test_help_works_from_a_temporary_directory(tmp_path):
    res = subprocess.run([str(SCRIPT), "--help"], cwd=tmp_path, env=_env(None), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "teacher_data" in res.stdout and "Primary config module" not in res.stdout + res.stderr
    assert "stage: all" in res.stdout  # the composed config is printed


def test_a_real_generation_run_from_a_temporary_directory(fake_api, api_key_env, tmp_path):
    server = fake_api(rate_limits={"rpm": 6000})
    cmd = [str(SCRIPT), f"client.base_url={server.url}", "teacher_data/prompts=small", "prompts.num_prompts=6",
           "progress=false", "sampling.max_tokens=256", "client.requests_per_minute=6000",
           "client.input_tokens_per_minute=null", "client.output_tokens_per_minute=null", "client.fsync=false"]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(api_key_env), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = tmp_path / "data" / "teacher_data"  # the default out_dir, relative to where it was started
    assert len((out / "results.jsonl").read_text().splitlines()) == 6
    assert json.loads((out / "filter_report.json").read_text())["input_records"] == 6
    assert (out / "dataset_report.md").is_file() and (out / "dataset_report.png").is_file()
    assert (out / "ratelimit_state.jsonl").is_file()
    assert server.statuses()[200] == 6 and server.ratelimited() == 0
    assert api_key_env not in res.stdout + res.stderr
