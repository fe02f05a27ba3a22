"""A local stand-in for the Anthropic Messages and Message Batches APIs, with scripted faults.

It speaks enough of the real wire format that the unmodified ``anthropic`` SDK talks to it over
real HTTP on 127.0.0.1 (never any other address). Faults are scripted by markers in the prompt
text, so a test decides exactly which request misbehaves regardless of concurrency and ordering:

    [[429x2@0.3]]   first 2 attempts get 429 with ``retry-after: 0.3``
    [[529x1]]       first attempt gets 529 overloaded_error
    [[500x1]]       first attempt gets 500 api_error
    [[500x99]]      always 500 (a request that must give up)
    [[slowx1@3]]    first attempt answers only after 3 s (past the client timeout)
    [[malformedx1]] first attempt: 200 with a truncated JSON body
    [[schemax1]]    first attempt: 200 with valid JSON that is not a Message
    [[refuse]]      answered with ``stop_reason: refusal``
    [[truncate]]    answered with ``stop_reason: max_tokens``
    [[batcherr]]    in a batch: an ``errored`` result
    [[disagree]]    in a rationale reply: the rationale names a function the code does not have

A prompt that carries the rationale instruction (``<rationale>`` ... ``<answer>``) is answered in
that format. ``broken={"model": fraction}`` makes that share of a model's answers (chosen by a hash
of the prompt) syntactically broken, so teachers of different quality can be told apart.

``rate_limits={"rpm": ..., "itpm": ..., "otpm": ...}`` (per ``period_s``, default 60) makes the
server enforce token buckets per model the way the API does: continuous refill, a capacity of
``capacity_s`` seconds of refill (default 1, at least one request), input counted on arrival (cache reads excluded), output
counted when the answer is sent. A request that does not fit gets a real 429 with ``retry-after``
(logged with ``fault="ratelimited"``, told apart from scripted ``[[429]]`` faults), and every
Messages response carries ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-*`` headers.

Attempts are counted per request body, which is identical across retries of one sample. The
server counts its requests and refuses (503, ``x-should-retry: false``) beyond ``max_requests``,
and shuts itself down after ``lifetime_s`` so a stuck test cannot leave it running.
"""

from __future__ import annotations

import contextlib

import hashlib
import json
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEST_KEY = "sk-ant-test-" + "Zq9" * 12  # a distinctive string to grep outputs for

MARKER = re.compile(r"\[\[(\w+?)(?:x(\d+))?(?:@([\d.]+))?\]\]")

WORDS = ("array index loop value result input output function return list map key sort search tree node "
         "graph edge path cost queue stack heap insert delete update check valid error case test assert "
         "string parse token number count total sum min max left right mid pivot merge split join buffer "
         "cache lookup hash bucket order stable linear log time space memory pointer next prev head tail "
         "root child parent depth width level visit mark seen start end step range bound limit edge sample "
         "window slide shift rotate reverse swap compare equal less greater filter reduce fold scan prefix").split()

SNIPPETS = {
    "python": "```python\ndef solve_{h}(values):\n    total = {n}\n    for v in values:\n        total += v * {m}\n"
              "    return total\n\n\ndef test_solve_{h}():\n    assert solve_{h}([1, 2]) == {n} + 3 * {m}\n```",
    "javascript": "```javascript\nfunction solve_{h}(values) {{\n  let total = {n};\n  for (const v of values) "
                  "total += v * {m};\n  return total;\n}}\n```",
    "java": "```java\npublic class Solution{h} {{\n  static int solve(int[] values) {{\n    int total = {n};\n"
            "    for (int v : values) total += v * {m};\n    return total;\n  }}\n}}\n```",
    "cpp": "```cpp\n#include <vector>\nint solve_{h}(const std::vector<int>& values) {{\n  int total = {n};\n"
           "  for (int v : values) total += v * {m};\n  return total;\n}}\n```",
    "go": "```go\npackage main\n\nfunc solve_{h}(values []int) int {{\n\ttotal := {n}\n\tfor _, v := range values "
          "{{\n\t\ttotal += v * {m}\n\t}}\n\treturn total\n}}\n```",
    "rust": "```rust\nfn solve_{h}(values: &[i64]) -> i64 {{\n    let mut total = {n};\n    for v in values {{\n"
            "        total += v * {m};\n    }}\n    total\n}}\n```",
}
LANG_NAMES = {"python": "Python", "javascript": "JavaScript", "java": "Java", "cpp": "C++", "go": "Go", "rust": "Rust"}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeAnthropic:
    def __init__(self, api_key: str = TEST_KEY, latency_s: float = 0.0, max_requests: int = 2000,
                 lifetime_s: float = 120.0, batch_delay_s: float = 0.3, cache_min_chars: int = 0,
                 rate_limits: dict | None = None, period_s: float = 60.0, capacity_s: float = 1.0,
                 broken: dict | None = None):
        self.api_key = api_key
        self.latency_s = latency_s
        self.max_requests = max_requests
        self.lifetime_s = lifetime_s
        self.batch_delay_s = batch_delay_s
        self.cache_min_chars = cache_min_chars
        self.rate_limits = dict(rate_limits or {})
        self.period_s = period_s
        self.capacity_s = capacity_s
        self.broken = dict(broken or {})
        self.buckets: dict[str, dict[str, list[float]]] = {}  # model -> dim -> [level, t, capacity, rate]
        self.lock = threading.Lock()
        self.log: list[dict] = []            # every request: t, path, status, body hash, fault
        self.attempts: Counter = Counter()   # per body hash
        self.delivered: dict[str, dict] = {}  # message id -> usage of every well-formed message sent
        self.cached_systems: set[str] = set()
        self.batches: dict[str, dict] = {}
        self.unauthorized = 0
        self.counter = 0
        self.port = _free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.timer = threading.Timer(lifetime_s, self.stop)
        self.timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeAnthropic":
        self.thread.start()
        self.timer.start()
        return self

    def stop(self) -> None:
        self.timer.cancel()
        try:
            self.httpd.shutdown()
            self.httpd.server_close()
        except Exception:
            pass

    # -- helpers used by tests -----------------------------------------------------------------
    def message_times(self) -> list[float]:
        return sorted(e["t"] for e in self.log if e["path"] == "/v1/messages")

    def statuses(self) -> Counter:
        return Counter(e["status"] for e in self.log if e["path"] == "/v1/messages")

    def ratelimited(self) -> int:
        return sum(1 for e in self.log if e.get("fault") == "ratelimited")

    # -- the server's own token buckets --------------------------------------------------------
    _DIMS = {"rpm": "requests", "itpm": "input-tokens", "otpm": "output-tokens"}

    def _bucket(self, model: str, dim: str, now: float) -> list[float]:
        per_model = self.buckets.setdefault(model, {})
        if dim not in per_model:
            limit = float(self.rate_limits[dim])
            cap = max(1.0, limit / self.period_s * self.capacity_s)  # default one second: "60 RPM ~ 1 per second"
            per_model[dim] = [cap, now, cap, limit / self.period_s]
        b = per_model[dim]
        b[0] = min(b[2], b[0] + (now - b[1]) * b[3])
        b[1] = now
        return b

    def admit(self, model: str, input_cost: int) -> float | None:
        """Take a request and its input from the buckets; ``None`` if admitted, else seconds to wait."""
        if not self.rate_limits:
            return None
        now = time.monotonic()
        with self.lock:
            cost = {"rpm": 1.0, "itpm": float(input_cost), "otpm": 1e-9}
            wait = 0.0
            for dim in self.rate_limits:
                b = self._bucket(model, dim, now)
                need = min(cost[dim], b[2]) - b[0]
                if need > 1e-9:
                    wait = max(wait, need / b[3])
            if wait > 0:
                return wait
            for dim in self.rate_limits:
                if dim != "otpm":
                    self._bucket(model, dim, now)[0] -= cost[dim]
            return None

    def charge_output(self, model: str, tokens: int) -> None:
        if "otpm" in self.rate_limits:
            with self.lock:
                self._bucket(model, "otpm", time.monotonic())[0] -= tokens

    def rl_headers(self, model: str) -> dict:
        if not self.rate_limits:
            return {}
        now = time.monotonic()
        out = {}
        with self.lock:
            for dim, name in self._DIMS.items():
                if dim not in self.rate_limits:
                    continue
                b = self._bucket(model, dim, now)
                full = datetime.now(timezone.utc) + timedelta(seconds=max(0.0, (b[2] - b[0]) / b[3]))
                out[f"anthropic-ratelimit-{name}-limit"] = str(int(self.rate_limits[dim] * 60 / self.period_s))
                out[f"anthropic-ratelimit-{name}-remaining"] = str(max(0, int(b[0])))
                out[f"anthropic-ratelimit-{name}-reset"] = _iso(full.replace(microsecond=0))
        return out

    def input_cost(self, body: dict) -> int:
        """Input tokens as the API counts them toward ITPM: cache reads excluded."""
        system = body.get("system")
        sys_text = ""
        if isinstance(system, list):
            text = "".join(b.get("text", "") for b in system)
            cached = any("cache_control" in b for b in system) and len(text) >= self.cache_min_chars
            sys_text = "" if cached and text in self.cached_systems else text
        elif isinstance(system, str):
            sys_text = system
        return _tokens(json.dumps(body.get("messages")) + sys_text)

    # -- the fake model ------------------------------------------------------------------------
    def answer(self, body: dict, salt: int) -> tuple[str, str]:
        """A varied, syntactically valid answer in the language the prompt asks for."""
        msgs = body.get("messages") or []
        prompt = msgs[-1]["content"] if msgs else ""
        if isinstance(prompt, list):
            prompt = " ".join(b.get("text", "") for b in prompt if isinstance(b, dict))
        if "[[refuse]]" in prompt:
            return "I'm sorry, but I can't help with that request.", "refusal"
        lang = "python"
        for key, name in LANG_NAMES.items():
            if re.search(rf"\b{re.escape(name)}(?![\w+])", prompt):
                lang = key
                break
        h = hashlib.sha1(f"{prompt}|{salt}".encode()).hexdigest()
        rng = random.Random(h)
        words = " ".join(rng.choice(WORDS) for _ in range(40))
        code = SNIPPETS[lang].format(h=h[:8], n=rng.randint(1, 99), m=rng.randint(2, 9))
        share = self.broken.get(body.get("model"), 0.0)
        if share and int(hashlib.sha1(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share:
            code = code.replace("return total", "return total (((", 1).replace("total;", "total (((;", 1)
        if "<rationale>" in prompt and "<answer>" in prompt:
            fn = "helper_that_is_not_there" if "[[disagree]]" in prompt else f"solve_{h[:8]}"
            text = (f"<rationale>\nThe task needs a running total. I will write `{fn}(values)`, which starts "
                    f"from a constant and adds each value times a factor; an empty list returns the constant. "
                    f"{words}.\n</rationale>\n<answer>\n{code}\n</answer>")
        else:
            text = f"Here is a {LANG_NAMES[lang]} solution.\n\n{code}\n\nWhy it works: {words}."
        if "[[truncate]]" in prompt:
            return text[: len(text) // 2], "max_tokens"
        limit = int(body.get("max_tokens") or 10**9) * 4  # the fake tokenizer: 4 chars per token
        if len(text) > limit:
            return text[:limit], "max_tokens"
        return text, "end_turn"

    def message(self, body: dict, batch: bool = False) -> dict:
        with self.lock:
            self.counter += 1
            salt = self.counter
        text, stop = self.answer(body, salt)
        system = body.get("system")
        cache_w = cache_r = 0
        sys_text = ""
        if isinstance(system, list):
            sys_text = "".join(b.get("text", "") for b in system)
            if any("cache_control" in b for b in system) and len(sys_text) >= self.cache_min_chars:
                with self.lock:
                    if sys_text in self.cached_systems:
                        cache_r = _tokens(sys_text)
                    else:
                        self.cached_systems.add(sys_text)
                        cache_w = _tokens(sys_text)
                sys_text = ""
        elif isinstance(system, str):
            sys_text = system
        usage = {"input_tokens": _tokens(json.dumps(body.get("messages")) + sys_text),
                 "output_tokens": _tokens(text), "cache_creation_input_tokens": cache_w,
                 "cache_read_input_tokens": cache_r, "service_tier": "batch" if batch else "standard"}
        msg = {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
               "model": body.get("model", "claude-test"), "content": [{"type": "text", "text": text}],
               "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if stop == "refusal":
            msg["stop_details"] = {"type": "refusal", "category": None, "explanation": None}
        with self.lock:
            self.delivered[msg["id"]] = {k: usage[k] for k in ("input_tokens", "output_tokens",
                                                                "cache_creation_input_tokens", "cache_read_input_tokens")}
        return msg

    def billed_tokens(self, msg: dict) -> int:
        return sum(v for k, v in msg["usage"].items() if k.endswith("tokens"))

    def fault(self, body: dict) -> tuple[str | None, float | None]:
        raw = json.dumps(body, sort_keys=True)
        key = hashlib.sha1(raw.encode()).hexdigest()
        with self.lock:
            self.attempts[key] += 1
            n = self.attempts[key]
        for kind, count, param in MARKER.findall(raw):
            if kind in ("refuse", "truncate", "batcherr"):
                continue
            if n <= int(count or 1):
                return kind, float(param) if param else None
        return None, None

    # -- HTTP ----------------------------------------------------------------------------------
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep test output quiet
                pass

            def _send(self, status: int, payload, headers: dict | None = None, raw: bytes | None = None,
                      ctype: str = "application/json"):
                data = raw if raw is not None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", "req_" + uuid.uuid4().hex[:12])
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _error(self, status: int, etype: str, msg: str, headers=None):
                self._send(status, {"type": "error", "error": {"type": etype, "message": msg}}, headers)

            def _authorized(self) -> bool:
                auth = self.headers.get("authorization", "")
                key = self.headers.get("x-api-key", "")
                ok = auth == f"Bearer {server.api_key}" or key == server.api_key
                if not ok:
                    server.unauthorized += 1
                    self._error(401, "authentication_error", "invalid x-api-key")
                return ok

            def _entry(self, status, h="", fault=None) -> dict:
                e = {"t": time.monotonic(), "path": self.path.split("?")[0], "status": status,
                     "body": h, "fault": fault, "method": self.command}
                with server.lock:
                    server.log.append(e)
                return e

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if len(server.log) >= server.max_requests:
                    self._entry(503)
                    return self._error(503, "api_error", "fake server request budget exhausted",
                                       {"x-should-retry": "false"})
                if not self._authorized():
                    return self._entry(401)
                body = json.loads(raw or b"{}")
                path = self.path.split("?")[0]
                if path == "/v1/messages":
                    return self._messages(body)
                if path == "/v1/messages/batches":
                    return self._batch_create(body)
                self._entry(404)
                self._error(404, "not_found_error", f"no route {path}")

            def _messages(self, body):
                h = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
                model = str(body.get("model", ""))
                wait = server.admit(model, server.input_cost(body))
                if wait is not None:  # the server's own bucket said no: a real 429, not a scripted one
                    self._entry(429, h, "ratelimited")
                    hdr = {**server.rl_headers(model), "retry-after": f"{max(1, int(wait + 0.999))}"}
                    return self._error(429, "rate_limit_error", "rate limit exceeded (server token bucket)", hdr)
                kind, param = server.fault(body)
                entry = self._entry({"429": 429, "529": 529, "500": 500}.get(kind or "", 200), h, kind)
                entry["model"] = model
                if server.latency_s:
                    time.sleep(server.latency_s)
                hdr = server.rl_headers(model)
                if kind == "429":
                    return self._error(429, "rate_limit_error", "rate limited",
                                       {**hdr, "retry-after": f"{param if param is not None else 1}"})
                if kind == "529":
                    return self._error(529, "overloaded_error", "Overloaded", hdr)
                if kind == "500":
                    return self._error(500, "api_error", "Internal server error", hdr)
                if kind == "slow":
                    time.sleep(param or 5.0)
                    return self._send(200, None, raw=b'{"late": true}')  # never a billed message
                if kind == "malformed":
                    return self._send(200, None, raw=b'{"id": "msg_trunc", "type": "message", "content": [{"ty')
                if kind == "schema":
                    return self._send(200, {"hello": "not a message"})
                if "model" not in body or "max_tokens" not in body or not body.get("messages"):
                    return self._error(400, "invalid_request_error", "model, max_tokens and messages are required")
                msg = server.message(body)
                server.charge_output(model, msg["usage"]["output_tokens"])
                entry["tokens"] = server.billed_tokens(msg)
                self._send(200, msg, server.rl_headers(model))

            def _batch_obj(self, b):
                now = datetime.now(timezone.utc)
                ended = time.monotonic() >= b["ready_at"]
                n = len(b["results"])
                counts = {"processing": 0 if ended else n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
                if ended:
                    for r in b["results"]:
                        counts[r["result"]["type"]] += 1
                return {"id": b["id"], "type": "message_batch",
                        "processing_status": "ended" if ended else "in_progress",
                        "request_counts": counts, "created_at": _iso(b["created"]),
                        "expires_at": _iso(b["created"] + timedelta(hours=24)),
                        "ended_at": _iso(now) if ended else None,
                        "results_url": f"{server.url}/v1/messages/batches/{b['id']}/results" if ended else None}

            def _batch_create(self, body):
                self._entry(200, fault="batch_create")
                reqs = body.get("requests") or []
                results = []
                for r in reqs:
                    params = r["params"]
                    if "[[batcherr]]" in json.dumps(params):
                        res = {"type": "errored", "error": {"type": "error", "error": {
                            "type": "api_error", "message": "internal error while processing"}}}
                    else:
                        res = {"type": "succeeded", "message": server.message(params, batch=True)}
                    results.append({"custom_id": r["custom_id"], "result": res})
                random.Random(len(reqs)).shuffle(results)  # results come back in no particular order
                bid = "msgbatch_" + uuid.uuid4().hex[:20]
                b = {"id": bid, "created": datetime.now(timezone.utc), "ready_at": time.monotonic() + server.batch_delay_s,
                     "results": results}
                with server.lock:
                    server.batches[bid] = b
                self._send(200, self._batch_obj(b))

            def do_GET(self):
                if not self._authorized():
                    return self._entry(401)
                path = self.path.split("?")[0]
                m = re.fullmatch(r"/v1/messages/batches/(msgbatch_\w+)(/results)?", path)
                if not m or m.group(1) not in server.batches:
                    self._entry(404)
                    return self._error(404, "not_found_error", f"no route {path}")
                self._entry(200, fault="batch_results" if m.group(2) else "batch_retrieve")
                b = server.batches[m.group(1)]
                if m.group(2):
                    lines = "".join(json.dumps(r) + "\n" for r in b["results"]).encode()
                    return self._send(200, None, raw=lines, ctype="application/binary")
                self._send(200, self._batch_obj(b))

        return Handler


CONF_DIR = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf")


def compose_teacher_cfg(out_dir, base_url: str, overrides=()):
    """The real ``conf/teacher_data.yaml``, pointed at the fake server, with fast test settings."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    base = [f"out_dir={out_dir}", f"client.base_url={base_url}", "client.requests_per_minute=60000",
            "client.input_tokens_per_minute=null", "client.output_tokens_per_minute=null",
            "progress=false", "client.timeout_s=5", "client.backoff_base_s=0.05", "client.backoff_max_s=0.2",
            "client.max_attempts=4", "client.concurrency=4", "client.fsync=false", "sampling.max_tokens=512",
            "teacher_data/prompts=small", "prompts.num_prompts=12", "batch.poll_interval_s=0.05"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose("teacher_data", overrides=base + list(overrides))


@contextlib.contextmanager
def api_key_set():
    """``ANTHROPIC_API_KEY`` set to :data:`TEST_KEY` for a block, then restored (for fixtures wider
    than one test, where ``monkeypatch`` is not available)."""
    old = os.environ.get("ANTHROPIC_API_KEY")
    os.environ["ANTHROPIC_API_KEY"] = TEST_KEY
    try:
        yield TEST_KEY
    finally:
        if old is None:
            os.environ.pop("ANTHROPIC_API_KEY", None)
        else:
            os.environ["ANTHROPIC_API_KEY"] = old
