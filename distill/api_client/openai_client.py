"""The OpenAI chat-completions provider: any OpenAI-compatible ``base_url`` (OpenAI, vLLM, SGLang,
llama.cpp server, Ollama, ``distill-serve-teacher``) behind the same retries, limits and results.

:class:`OpenAIClient` is a :class:`~distill.api_client.client.TeacherClient` with another SDK and
wire format. The pipeline builds Messages-style request params (``system`` + ``messages``); this
module turns them into a chat-completions body and the answer back into the dict the Anthropic path
returns, so the store, the cost tracker, the filters and the report see one format:

* ``finish_reason`` -> ``stop_reason`` in the Messages vocabulary (``length`` -> ``max_tokens``,
  ``content_filter`` -> ``refusal``), which is what the truncation and refusal filters test;
* ``usage``: ``prompt_tokens`` less the cached part -> ``input_tokens``, cached ->
  ``cache_read_input_tokens``, ``completion_tokens`` -> ``output_tokens``;
* with ``logprobs=k`` the answer's per-token log-prob and its top-k alternatives, as parallel
  lists (``tokens``, ``logprobs``, ``top_tokens``, ``top_logprobs``) ready for token-level KD.

Rate-limit headers (``x-ratelimit-*``) feed the same buckets (see
:func:`distill.api_client.headers.rate_headers`); the key comes from ``OPENAI_API_KEY`` only, and a
server on loopback needs none.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from distill.api_client.client import MalformedResponseError, TeacherClient, estimate_tokens, split_params

OPENAI_KEY_ENV = "OPENAI_API_KEY"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal", "tool_calls": "tool_use"}


def _text(content: Any) -> str:
    """A Messages ``system``/``content`` (a string or a list of text blocks) as plain text."""
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return "" if content is None else str(content)


def chat_params(params: dict[str, Any], logprobs: int | None = None) -> dict[str, Any]:
    """Messages-style params -> a chat-completions body (``cache_control`` has no equivalent: the
    OpenAI-compatible servers cache prefixes on their own)."""
    out = {k: v for k, v in params.items() if k not in ("system", "messages")}
    messages = [{"role": "system", "content": _text(params["system"])}] if params.get("system") else []
    messages += [{"role": m["role"], "content": _text(m["content"])} for m in params.get("messages", [])]
    out["messages"] = messages
    if logprobs:
        out["logprobs"], out["top_logprobs"] = True, int(logprobs)
    return out


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def logprobs_dict(lp: Any, k: int) -> dict[str, Any] | None:
    """``choice.logprobs`` -> parallel lists; ``None`` when the server sent none."""
    content = _get(lp, "content") if lp is not None else None
    if not content:
        return None
    tops = [_get(t, "top_logprobs") or [] for t in content]
    return {"k": k, "tokens": [_get(t, "token") for t in content],
            "logprobs": [float(_get(t, "logprob")) for t in content],
            "top_tokens": [[_get(a, "token") for a in top] for top in tops],
            "top_logprobs": [[float(_get(a, "logprob")) for a in top] for top in tops]}


def completion_to_dict(c: Any, logprobs: int | None = None) -> dict[str, Any]:
    """Validate an SDK ``ChatCompletion`` and reduce it to what the Messages path stores."""
    try:
        choices, usage = c.choices, c.usage
        if not choices or usage is None or usage.prompt_tokens is None:
            raise MalformedResponseError("response lacks choices or usage")
        choice = choices[0]
        cached = int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens") or 0)
        finish = choice.finish_reason
        out = {"message_id": c.id, "model": c.model, "text": choice.message.content or "",
               "stop_reason": STOP_REASONS.get(finish, finish), "stop_details": None,
               "usage": {"input_tokens": int(usage.prompt_tokens) - cached,
                         "output_tokens": int(usage.completion_tokens or 0),
                         "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}}
        if logprobs:
            out["logprobs"] = logprobs_dict(choice.logprobs, int(logprobs))
        return out
    except AttributeError as e:
        raise MalformedResponseError(f"response is not a ChatCompletion: {e}") from e


class OpenAIClient(TeacherClient):
    """One ``AsyncOpenAI`` shared by all workers; ``logprobs=k`` asks for the top-k per answer token."""

    provider = "openai"
    key_env = OPENAI_KEY_ENV
    supports_batches = False

    def __init__(self, *, logprobs: int | None = None, **kw):
        if logprobs is not None and not 1 <= int(logprobs) <= 20:
            raise ValueError(f"logprobs must be in 1..20 (the OpenAI API's top_logprobs range), got {logprobs}")
        self.logprobs = None if logprobs is None else int(logprobs)
        super().__init__(**kw)

    def _make_sdk(self, base_url: str | None):
        import httpx2
        import openai

        http_client = httpx2.AsyncClient(
            timeout=self.timeout_s,
            limits=httpx2.Limits(max_connections=self.concurrency + 2, max_keepalive_connections=self.concurrency))
        return openai.AsyncOpenAI(api_key=self.api_key, base_url=base_url, max_retries=0, timeout=self.timeout_s,
                                  http_client=http_client)

    async def create(self, params: dict[str, Any], *, what: str = "request") -> tuple[dict[str, Any], int]:
        """One chat completion (with retries). Returns ``(result dict, attempts used)``."""
        body = chat_params(params, self.logprobs)
        cost = (estimate_tokens(json.dumps(body["messages"])), int(body.get("max_tokens", 0)))
        limiter = self.limits.for_model(str(body.get("model", "")))
        known, extra = split_params(self.sdk.chat.completions.create, body)

        async def once():
            raw = await self.sdk.chat.completions.with_raw_response.create(**known, extra_body=extra or None,
                                                                            timeout=self.timeout_s)
            limiter.observe(raw.headers)
            c = raw.parse()
            if asyncio.iscoroutine(c):
                c = await c
            return completion_to_dict(c, self.logprobs)

        async with self.semaphore:
            result, grant, attempts = await self.call_with_retries(once, what=what, limiter=limiter, cost=cost)
        if grant is not None:
            limiter.settle(grant, result["usage"])
        return result, attempts


def make_client(provider: str, **kw) -> TeacherClient:
    """``provider`` (``anthropic`` | ``openai``) -> its client; ``logprobs`` only for ``openai``."""
    logprobs = kw.pop("logprobs", None)
    if provider == "anthropic":
        if logprobs:
            raise ValueError("logprobs: the Messages API returns no log-probs; use provider=openai")
        return TeacherClient(**kw)
    if provider == "openai":
        return OpenAIClient(logprobs=logprobs, **kw)
    raise ValueError(f"provider must be 'anthropic' or 'openai', got {provider!r}")
