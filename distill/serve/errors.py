"""The server's refusals: each maps to one HTTP status and names the limit or field at fault.

A refusal is raised before any model work, so a bad or oversized request costs the server nothing
and the next request is answered at once.
"""

from __future__ import annotations

from dataclasses import dataclass


class ServeError(Exception):
    status = 500
    kind = "server_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers or {}


class BadRequest(ServeError, ValueError):
    status, kind = 400, "invalid_request_error"


class Unauthorized(ServeError):
    status, kind = 401, "authentication_error"


class NotFound(ServeError):
    status, kind = 404, "not_found_error"


class TooLarge(ServeError):
    status, kind = 413, "request_too_large"


class Busy(ServeError):
    status, kind = 429, "rate_limit_error"


@dataclass
class ServeLimits:
    """What one request may ask for, and how many may wait (all named in the refusals)."""

    max_body_bytes: int = 1_000_000      # --max-body-bytes: larger bodies get 413 unread
    max_tokens: int = 1024               # --max-new-tokens: the cap on max_tokens per answer
    max_prompt_tokens: int | None = None  # --max-prompt-tokens; None = the model's context
    max_request_tokens: int = 65_536     # --max-request-tokens: prompt tokens summed over one request
    max_prompts: int = 256               # --max-prompts: prompts in one /v1/completions request
    max_queue: int = 32                  # --max-queue: chat requests waiting; more get 429
    max_batch: int = 8                   # --max-batch: requests (or prompts) per forward pass
    retry_after_s: float = 1.0           # what a 429 asks the client to wait
