"""The local fault-injecting server of :mod:`fake_anthropic`, also speaking OpenAI chat completions.

``POST /v1/chat/completions`` is translated to the Messages logic (same fault markers, same fake
answers, same token buckets and ``delivered`` usage keyed by the response id) and back:
``choices[0].message``, ``finish_reason``, ``usage.{prompt,completion}_tokens``, OpenAI-style
errors and ``x-ratelimit-{limit,remaining}-{requests,tokens}`` headers. With ``logprobs`` and
``top_logprobs`` it returns fake per-token log-probs (4-character tokens, as its usage counts).
"""

from __future__ import annotations

import hashlib
import json
import math
import time

from fake_anthropic import FakeAnthropic

FINISH = {"end_turn": "stop", "max_tokens": "length", "refusal": "content_filter"}
STATUS_TYPES = {429: "rate_limit_exceeded", 500: "server_error", 529: "server_error", 400: "invalid_request_error"}


def to_messages_body(body: dict) -> dict:
    msgs = body.get("messages") or []
    system = "".join(m.get("content", "") for m in msgs if m.get("role") == "system")
    out = {"model": body.get("model"), "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens"),
           "messages": [m for m in msgs if m.get("role") != "system"]}
    if system:
        out["system"] = system
    return out


def fake_logprobs(text: str, k: int) -> dict:
    """Deterministic log-probs of 4-character tokens; the chosen token is always the top one."""
    content = []
    for i in range(0, len(text), 4):
        tok = text[i:i + 4]
        h = int(hashlib.sha1(f"{i}|{tok}".encode()).hexdigest()[:6], 16) / 0xFFFFFF
        lp = math.log(0.5 + 0.49 * h)
        top = [{"token": tok, "logprob": lp, "bytes": None}]
        top += [{"token": f"<alt{j}>", "logprob": lp - j - 1.0, "bytes": None} for j in range(k - 1)]
        content.append({"token": tok, "logprob": lp, "bytes": None, "top_logprobs": top})
    return {"content": content, "refusal": None}


class FakeOpenAI(FakeAnthropic):
    def message_times(self) -> list[float]:
        return sorted(e["t"] for e in self.log if e["path"] == "/v1/chat/completions")

    def openai_headers(self, model: str) -> dict:
        h = self.rl_headers(model)
        out = {}
        if "anthropic-ratelimit-requests-limit" in h:
            out["x-ratelimit-limit-requests"] = h["anthropic-ratelimit-requests-limit"]
            out["x-ratelimit-remaining-requests"] = h["anthropic-ratelimit-requests-remaining"]
        return out

    def _handler(self):
        server = self
        Base = super()._handler()

        class Handler(Base):
            def _oai_error(self, status: int, msg: str, headers=None):
                self._send(status, {"error": {"message": msg, "type": STATUS_TYPES.get(status, "error"),
                                              "code": None, "param": None}}, headers)

            def do_POST(self):
                if self.path.split("?")[0] != "/v1/chat/completions":
                    return super().do_POST()
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if not self._authorized():
                    return self._entry(401)
                body = json.loads(raw or b"{}")
                mbody = to_messages_body(body)
                h = hashlib.sha1(json.dumps(mbody, sort_keys=True).encode()).hexdigest()[:12]
                model = str(body.get("model", ""))
                wait = server.admit(model, server.input_cost(mbody))
                if wait is not None:
                    self._entry(429, h, "ratelimited")
                    return self._oai_error(429, "rate limit exceeded (server token bucket)",
                                           {**server.openai_headers(model), "retry-after": f"{max(0.05, wait):.3f}"})
                kind, param = server.fault(mbody)
                entry = self._entry({"429": 429, "529": 529, "500": 500}.get(kind or "", 200), h, kind)
                if server.latency_s:  # as on the Messages path: every answer, faults included
                    time.sleep(server.latency_s)
                hdr = server.openai_headers(model)
                if kind == "429":
                    return self._oai_error(429, "rate limited", {**hdr, "retry-after": f"{param or 1}"})
                if kind in ("500", "529"):
                    return self._oai_error(int(kind), "server error", hdr)
                if kind == "malformed":
                    return self._send(200, None, raw=b'{"id": "chatcmpl-trunc", "choices": [{"ind')
                msg = server.message(mbody)
                server.charge_output(model, msg["usage"]["output_tokens"])
                entry["tokens"] = server.billed_tokens(msg)
                text = msg["content"][0]["text"]
                u = msg["usage"]
                choice = {"index": 0, "message": {"role": "assistant", "content": text},
                          "finish_reason": FINISH.get(msg["stop_reason"], "stop"), "logprobs": None}
                if body.get("logprobs"):
                    choice["logprobs"] = fake_logprobs(text, int(body.get("top_logprobs") or 1))
                self._send(200, {"id": msg["id"], "object": "chat.completion", "created": 0, "model": msg["model"],
                                 "choices": [choice],
                                 "usage": {"prompt_tokens": u["input_tokens"], "completion_tokens": u["output_tokens"],
                                           "total_tokens": u["input_tokens"] + u["output_tokens"]}},
                           server.openai_headers(model))

        return Handler
