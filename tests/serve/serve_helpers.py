"""HTTP for the server tests: one POST, its status, JSON body and headers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def post(srv, path, body, raw: bytes | None = None, headers=None):
    """``(status, json body, headers)`` of one POST; error statuses are returned, not raised."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{srv.server_port}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)
