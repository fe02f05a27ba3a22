"""The HTTP layer: routes, auth, body size, JSON and error bodies; the model work is elsewhere.

Every refusal (:mod:`~distill.serve.errors`) is answered in the error format of its endpoint
(OpenAI's ``{"error": ...}`` for chat, Anthropic's ``{"type": "error", ...}`` for messages, vLLM's
for ``/v1/completions``), and the handler thread goes on serving. A body over ``max_body_bytes``
gets 413 without being read (the connection is closed, as its rest is never drained). Auth: with
no key configured only a loopback bind is allowed; with one, every POST needs
``Authorization: Bearer <key>`` (or ``x-api-key``).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from distill.api_client.client import is_loopback_host
from distill.serve import protocol
from distill.serve.batcher import Batcher
from distill.serve.chat import ChatModel
from distill.serve.errors import BadRequest, NotFound, ServeError, ServeLimits, TooLarge, Unauthorized
from distill.serve.scoring import Scorer, model_context

log = logging.getLogger(__name__)


@dataclass
class App:
    name: str
    scorer: Scorer | None = None
    chat: ChatModel | None = None
    limits: ServeLimits | None = None
    api_key: str | None = None

    def __post_init__(self):
        self.limits = self.limits or (self.scorer.limits if self.scorer else ServeLimits())
        self.batcher = Batcher(self.chat, self.limits) if self.chat is not None else None
        model = (self.chat or self.scorer).model
        self.context = model_context(model)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    def chat_answer(self, path: str, body: dict) -> dict:
        if self.chat is None:
            raise NotFound(f"{path}: this server was started without a tokenizer/chat template")
        parse, fmt = ((protocol.parse_openai, protocol.openai_response) if path == "/v1/chat/completions"
                      else (protocol.parse_anthropic, protocol.anthropic_response))
        req = parse(body, self.chat, self.limits, self.name, self.context)
        return fmt(self.batcher.submit(req), self.name)


def _error_body(path: str, err: ServeError) -> dict:
    if path == "/v1/messages":
        return {"type": "error", "error": {"type": err.kind, "message": str(err)}}
    if path == "/v1/chat/completions":
        return {"error": {"message": str(err), "type": err.kind, "code": err.status, "param": None}}
    return {"object": "error", "message": str(err), "type": err.kind, "code": err.status}


def _handler(app: App):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _authorize(self) -> None:
            if app.api_key is None:
                return
            auth = self.headers.get("Authorization", "")
            given = auth[7:] if auth.startswith("Bearer ") else self.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), app.api_key.encode()):
                raise Unauthorized("a valid key is required: Authorization: Bearer <key> (or x-api-key)")

        def _body(self) -> dict:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise BadRequest("Content-Length is not a number") from None
            if length > app.limits.max_body_bytes:
                self.close_connection = True  # the unread rest of the body must not be parsed as a request
                raise TooLarge(f"the body has {length} bytes; the limit is {app.limits.max_body_bytes} "
                               f"(--max-body-bytes)")
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BadRequest(f"the body is not valid JSON: {e}") from None
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            return body

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                # vocab_size is our extension (vLLM lists no such field): teacher=remote reads it
                self._send(200, {"object": "list", "data": [{"id": app.name, "object": "model", "owned_by": "distill",
                                                             "vocab_size": app.vocab_size}]})
            else:
                self._send(404, _error_body(self.path, NotFound(f"no route {self.path}")))

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            try:
                self._authorize()
                if path not in ("/v1/completions", "/v1/chat/completions", "/v1/messages"):
                    raise NotFound(f"no route {path}; this server answers POST /v1/completions, "
                                   f"/v1/chat/completions and /v1/messages")
                body = self._body()
                if path == "/v1/completions":
                    if app.scorer is None:
                        raise NotFound("/v1/completions: prompt scoring is off on this server")
                    if body.get("model") not in (None, app.name):
                        raise BadRequest(f"The model `{body.get('model')}` does not exist; this server serves "
                                         f"{app.name!r}")
                    self._send(200, app.scorer.completions(body))
                else:
                    self._send(200, app.chat_answer(path, body))
            except ServeError as e:
                self._send(e.status, _error_body(path, e), e.headers)
            except Exception as e:  # noqa: BLE001 - the client retries 5xx answers; the server lives on
                log.exception("distill-serve-teacher: request failed")
                err = ServeError(f"{type(e).__name__}: {e}")
                self._send(500, _error_body(path, err))

        def log_message(self, fmt: str, *args) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

    return Handler


def serve(target: App | Scorer, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None) -> ThreadingHTTPServer:
    """A started server (in a daemon thread); ``port=0`` picks a free one (``server.server_port``).

    Bound anywhere but loopback it refuses to start without an ``api_key``.
    """
    app = target if isinstance(target, App) else App(name=target.name, scorer=target)
    if api_key is not None:
        app.api_key = api_key
    if app.api_key is None and not is_loopback_host(host):
        raise ValueError(f"binding {host} exposes the model beyond this machine: set an API key "
                         f"(--api-key-env NAME) so that requests need 'Authorization: Bearer <key>'")
    server = ThreadingHTTPServer((host, port), _handler(app))
    server.daemon_threads = True
    server.app = app
    threading.Thread(target=server.serve_forever, name="distill-serve-teacher", daemon=True).start()
    return server
