"""The live-API source goes through the project's one Messages client (TeacherClient), here
against the local fake Anthropic server the API-teacher tests use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("anthropic")
pytest.importorskip("httpx2")

from distill.evaluation.settings import GenerationSettings  # noqa: E402
from distill.evaluation.sources import ApiSource, CompletionSource  # noqa: E402
from distill.evaluation.targets import build  # noqa: E402
from distill.evaluation.sources.api import AnthropicApi  # noqa: E402


def _fake_module():
    """The API-teacher tests' fake server (its own module; earlier it lived in their conftest)."""
    here = Path(__file__).resolve().parents[1] / "teacher_data"
    path = here / "fake_anthropic.py"
    if not path.exists():
        path = here / "conftest.py"
    spec = importlib.util.spec_from_file_location("api_fake_server", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fake_server(monkeypatch):
    mod = _fake_module()
    monkeypatch.setenv("ANTHROPIC_API_KEY", mod.TEST_KEY)
    server = mod.FakeAnthropic().start()
    yield server
    server.stop()


def test_anthropic_api_uses_the_teacher_client(fake_server, tmp_path):
    src = build({"_target_": "distill.evaluation.sources.api.ApiSource", "_recursive_": False,
                 "api": {"_target_": "distill.evaluation.sources.api.AnthropicApi",
                         "model": "claude-test", "base_url": fake_server.url}},
                "model", CompletionSource)
    assert src.client is None  # built when the evaluation starts: composing needs no key
    src.open(None, tmp_path)
    assert isinstance(src, ApiSource) and isinstance(src.client, AnthropicApi)
    out = src.generate([("a", "Write a python function."), ("b", "Another python one.")],
                       GenerationSettings(n=2, temperature=0.7, max_new_tokens=256), None)
    assert [len(t) for t in out.texts] == [2, 2]
    assert all("```python" in t for row in out.texts for t in row)
    assert all(n > 0 for row in out.new_tokens for n in row)
    sent = [e for e in fake_server.log if e["path"] == "/v1/messages"]
    assert len(sent) == 4 and {e["status"] for e in sent} == {200}


def test_anthropic_api_needs_the_key_in_the_environment(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="ANTHROPIC_API_KEY"):
        AnthropicApi(model="claude-test")
