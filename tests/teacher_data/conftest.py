"""Fixtures of the API-teacher tests: the local fault-injecting Messages server (``fake_anthropic``)."""

from __future__ import annotations

import pytest

from fake_anthropic import TEST_KEY, FakeAnthropic, compose_teacher_cfg, api_key_set

__all__ = ["TEST_KEY", "FakeAnthropic", "compose_teacher_cfg"]


@pytest.fixture
def fake_api():
    """Factory: ``server = fake_api(latency_s=...)``; every server started is stopped at teardown."""
    servers = []

    def make(**kw) -> FakeAnthropic:
        s = FakeAnthropic(**kw).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def api_key_env(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    for var in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_PROFILE", "ANTHROPIC_LOG"):
        monkeypatch.delenv(var, raising=False)
    return TEST_KEY


@pytest.fixture
def teacher_cfg():
    return compose_teacher_cfg


@pytest.fixture(scope="module")
def teacher_dataset(tmp_path_factory):
    """A filtered set made once per module: local server -> 24 answers -> filters (real CLI code)."""
    from distill.teacher_data.cli import run

    server = FakeAnthropic().start()
    try:
        with api_key_set():
            out = tmp_path_factory.mktemp("teacher_data")
            cfg = compose_teacher_cfg(out, server.url, ["prompts.num_prompts=24"])
            result = run(cfg)
    finally:
        server.stop()
    return out, result, server
