"""The two chat wire formats: request bodies -> :class:`ChatRequest`, results -> response bodies.

* OpenAI ``/v1/chat/completions``: ``messages`` (system/user/assistant), ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature``, ``top_p``, ``stop``, ``logprobs``/``top_logprobs``;
  answers ``choices[0].message``, ``finish_reason``, ``logprobs.content`` and ``usage``.
* Anthropic ``/v1/messages``: ``messages``, ``system`` (a string or text blocks; ``cache_control``
  is accepted and ignored), ``max_tokens`` (required), ``temperature``, ``top_p``,
  ``stop_sequences``; answers ``content``, ``stop_reason`` and ``usage``.

Fields a client may send that change nothing here (``user``, ``metadata``, ``seed``, ``n: 1``,
``stream: false``) are accepted; any other field is a 400 naming it, so a typo is not silently
ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from distill.serve.chat import ChatModel, ChatRequest
from distill.serve.errors import BadRequest, ServeLimits, TooLarge

OPENAI_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
                 "logprobs", "top_logprobs", "n", "stream", "seed", "user"}
ANTHROPIC_FIELDS = {"model", "messages", "system", "max_tokens", "temperature", "top_p", "top_k", "stop_sequences",
                    "metadata", "stream"}
MAX_TOP_LOGPROBS = 20


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text"
                                         and isinstance(b.get("text"), str) for b in content):
        return "".join(b["text"] for b in content)
    raise BadRequest(f"{where} must be a string or a list of text blocks")


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _common(body: dict, fields: set[str], chat: ChatModel, limits: ServeLimits, model_name: str,
            messages: list[dict[str, str]], max_tokens: Any, context: int | None) -> ChatRequest:
    unknown = set(body) - fields
    if unknown:
        raise BadRequest(f"unknown field(s) {sorted(unknown)}; this endpoint accepts {sorted(fields)}")
    if body.get("model") not in (None, model_name):
        raise BadRequest(f"The model `{body.get('model')}` does not exist; this server serves {model_name!r}")
    if body.get("stream"):
        raise BadRequest("stream: true is not supported by this server")
    if type(max_tokens) is not int or max_tokens < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if max_tokens > limits.max_tokens:
        raise BadRequest(f"max_tokens {max_tokens} is over this server's limit of {limits.max_tokens} "
                         f"(--max-new-tokens)")
    ids = chat.encode(messages)
    cap = min(c for c in (context, limits.max_prompt_tokens, limits.max_request_tokens) if c)
    if len(ids) > cap:
        raise TooLarge(f"the prompt has {len(ids)} tokens; the limit is {cap} (the model's context, "
                       f"--max-prompt-tokens or --max-request-tokens)")
    if context and len(ids) + max_tokens > context:
        raise BadRequest(f"the prompt's {len(ids)} tokens plus max_tokens {max_tokens} exceed the model's "
                         f"context of {context} tokens")
    temp = _number(body, "temperature", 0.0, 2.0, 1.0)
    return ChatRequest(prompt_ids=ids, max_tokens=max_tokens, temperature=temp,
                       top_p=_number(body, "top_p", 0.0, 1.0, 1.0))


def _messages(raw: Any, allow_system: bool) -> list[dict[str, str]]:
    roles = {"user", "assistant", "system"} if allow_system else {"user", "assistant"}
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in roles:
            raise BadRequest(f"messages[{i}] must be an object with a role in {sorted(roles)}")
        out.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}].content")})
    return out


def parse_openai(body: dict, chat: ChatModel, limits: ServeLimits, name: str, context: int | None) -> ChatRequest:
    if body.get("n", 1) != 1:
        raise BadRequest("n must be 1 (one answer per request)")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", limits.max_tokens))
    req = _common(body, OPENAI_FIELDS, chat, limits, name, _messages(body.get("messages"), True), max_tokens, context)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of at most 4 strings")
    req.stop = stop
    if body.get("logprobs"):
        k = body.get("top_logprobs", 0)
        if type(k) is not int or not 0 <= k <= MAX_TOP_LOGPROBS:
            raise BadRequest(f"top_logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}, got {k!r}")
        req.top_logprobs = k
    elif body.get("top_logprobs") is not None:
        raise BadRequest("top_logprobs needs logprobs: true")
    return req


def parse_anthropic(body: dict, chat: ChatModel, limits: ServeLimits, name: str, context: int | None) -> ChatRequest:
    if "max_tokens" not in body:
        raise BadRequest("max_tokens: field required")
    msgs = _messages(body.get("messages"), False)
    if body.get("system") is not None:
        msgs = [{"role": "system", "content": _text(body["system"], "system")}] + msgs
    req = _common(body, ANTHROPIC_FIELDS, chat, limits, name, msgs, body.get("max_tokens"), context)
    stop = body.get("stop_sequences") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop_sequences must be a list of strings")
    req.stop = stop
    return req


def openai_response(res: dict, name: str) -> dict:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": res["text"]},
                              "finish_reason": "length" if res["finish"] == "length" else "stop", "logprobs": None}
    if "logprobs" in res:
        choice["logprobs"] = {"refusal": None, "content": [
            {"token": t["token"], "logprob": t["logprob"], "bytes": list(t["token"].encode()),
             "top_logprobs": [{"token": s, "logprob": v, "bytes": list(s.encode())} for s, _, v in t["top"]]}
            for t in res["logprobs"]]}
    p, c = res["prompt_tokens"], res["completion_tokens"]
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": [choice],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}


def anthropic_response(res: dict, name: str) -> dict:
    stop = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}[res["finish"]]
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": name,
            "content": [{"type": "text", "text": res["text"]}], "stop_reason": stop,
            "stop_sequence": res["stop_sequence"],
            "usage": {"input_tokens": res["prompt_tokens"], "output_tokens": res["completion_tokens"],
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
