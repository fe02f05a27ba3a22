"""Async Messages API client with our own retries, rate limiting and per-call usage.

Why not the SDK's built-in retries: we need to *see* every attempt (to count it, to gate it through
the rate limiter, to stop on budget) and to treat failures the SDK does not retry, e.g. a 200
response whose body is not JSON (``anthropic`` raises ``json.JSONDecodeError`` there, not an
``APIError``). So the SDK runs with ``max_retries=0`` and :meth:`TeacherClient.create` owns the
policy: exponential back-off with full jitter, at least the server's ``retry-after`` on
429/529/5xx, a per-request timeout, and a clear :class:`RequestFailed` once attempts run out.
Every attempt first takes its share of the model's token buckets
(:mod:`~distill.api_client.ratelimit`), and the response headers of every attempt, failed ones
included, are fed back to them (the raw-response API gives us the headers next to the body).

The API key is read from ``ANTHROPIC_API_KEY`` only (never from config or the command line, so it
can never be saved with the run) and passed to the SDK explicitly, which also stops the SDK from
falling back to profile files on disk.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from distill.api_client.pricing import usage_dict
from distill.api_client.ratelimit import LimiterPool, RateLimiter
from distill.config import ConfigError

log = logging.getLogger(__name__)

API_KEY_ENV = "ANTHROPIC_API_KEY"


class MissingAPIKeyError(ConfigError, RuntimeError):
    pass


class MalformedResponseError(ValueError):
    """A 2xx response we cannot use (not JSON, or not a Message): retried like a 5xx."""


class RequestFailed(RuntimeError):
    """One request gave up: either retries ran out or the error cannot be fixed by retrying."""

    def __init__(self, message: str, *, attempts: int, status: int | None, retryable: bool):
        super().__init__(message)
        self.attempts = attempts
        self.status = status
        self.retryable = retryable


class FatalAPIError(RuntimeError):
    """An error that every further request would hit too (bad key, unknown model): stop the run."""


# What the SDKs send when no key is needed: they refuse an empty key, the local server ignores it.
NO_KEY = "no-key-needed-on-loopback"


def is_loopback_host(host: str) -> bool:
    """True for a host on this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(base_url: str | None) -> bool:
    """True for a ``base_url`` on this machine: no key is needed there."""
    if not base_url:
        return False
    from urllib.parse import urlparse

    return is_loopback_host(urlparse(base_url).hostname or "")


def api_key_from_env(env: str = API_KEY_ENV, base_url: str | None = None) -> str:
    """The key from ``env``; a server on loopback needs none (a local model), so it gets :data:`NO_KEY`."""
    key = os.environ.get(env, "").strip()
    if not key and is_loopback(base_url):
        return NO_KEY
    if not key:
        raise MissingAPIKeyError(f"{env} is not set: export your API key in the environment (it is never "
                                 f"read from config files or the command line); a server on 127.0.0.1 needs none")
    return key


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_retry_after_s: float = 600.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter exponential back-off (AWS architecture blog): spreads a thundering herd."""
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return rng.uniform(0.5 * cap, cap)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(ra)
        return max(0.0, dt.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _sdk_errors() -> dict[str, tuple[type, ...]]:
    """The error classes of whichever SDKs are loaded: both name them alike (same generator).

    Only SDKs already imported are looked at: an exception raised by an SDK means that SDK is
    loaded, and importing the other one here would cost the first failed request of a run a second
    or more (``openai`` runs never need ``anthropic``).
    """
    import sys

    names = ("APIResponseValidationError", "APITimeoutError", "APIConnectionError", "APIStatusError")
    out: dict[str, tuple[type, ...]] = {n: () for n in names}
    for mod in ("anthropic", "openai"):
        m = sys.modules.get(mod)
        if m is None:
            continue
        for n in names:
            out[n] += (getattr(m, n),)
    return out


def classify(exc: BaseException) -> tuple[bool, bool, int | None, float | None, str]:
    """``(retryable, fatal, status, retry_after_s, description)`` for an exception from one call."""
    sdk = _sdk_errors()
    if isinstance(exc, (json.JSONDecodeError, MalformedResponseError) + sdk["APIResponseValidationError"]):
        return True, False, None, None, f"malformed response body ({type(exc).__name__}: {str(exc)[:120]})"
    if isinstance(exc, sdk["APITimeoutError"]):
        return True, False, None, None, "request timed out"
    if isinstance(exc, sdk["APIConnectionError"]):
        return True, False, None, None, f"connection error ({exc})"
    if isinstance(exc, sdk["APIStatusError"]):
        status = exc.status_code
        err_type = getattr(exc, "type", None) or ""
        body = getattr(exc, "body", None)  # openai: the "error" object; its message, not the whole dump
        msg = getattr(exc, "api_message", None) or (body.get("message") if isinstance(body, dict) else "") or ""
        desc = f"HTTP {status} {err_type} {msg}".strip()
        retry_after = parse_retry_after(exc.response.headers)
        hint = exc.response.headers.get("x-should-retry")
        if hint == "false":
            return False, False, status, None, desc
        if status in (408, 409, 429) or status >= 500 or hint == "true":
            return True, False, status, retry_after, desc
        fatal = status in (401, 403, 404)
        return False, fatal, status, None, desc
    if isinstance(exc, asyncio.TimeoutError):
        return True, False, None, None, "request timed out"
    return False, False, None, None, f"{type(exc).__name__}: {exc}"


def estimate_tokens(text: str) -> int:
    """Deliberately high token estimate (~3 chars/token) so rate and budget reservations hold."""
    return len(text) // 3 + 8


def split_params(fn, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split request params into SDK keyword arguments and ``extra_body`` fields.

    Sampling knobs come and go between SDK releases (``anthropic`` 2.x has no ``temperature``
    argument); anything the installed SDK does not name is sent as a raw body field instead, so a
    config keeps working across SDK versions and the API itself decides what it accepts.
    """
    import inspect

    names = set(inspect.signature(fn).parameters)
    known = {k: v for k, v in params.items() if k in names}
    extra = {k: v for k, v in params.items() if k not in names}
    return known, extra


def message_to_dict(msg: Any) -> dict[str, Any]:
    """Validate an SDK ``Message`` and reduce it to what we store; raise if it is unusable."""
    try:
        content = msg.content
        usage = msg.usage
        if content is None or usage is None or getattr(usage, "input_tokens", None) is None:
            raise MalformedResponseError("response lacks content or usage")
        text = "".join(getattr(b, "text", "") or "" for b in content if getattr(b, "type", None) == "text")
        stop_details = getattr(msg, "stop_details", None)
        return {
            "message_id": msg.id,
            "model": msg.model,
            "text": text,
            "stop_reason": msg.stop_reason,
            "stop_details": stop_details.model_dump() if stop_details is not None else None,
            "usage": usage_dict(usage),
        }
    except AttributeError as e:
        raise MalformedResponseError(f"response is not a Message: {e}") from e


class TeacherClient:
    """One ``AsyncAnthropic`` shared by all workers, with concurrency, rate and retry control.

    :class:`~distill.api_client.openai_client.OpenAIClient` is the same with another SDK and wire
    format; both return the same result dict from :meth:`create`.
    """

    provider = "anthropic"
    key_env = API_KEY_ENV
    supports_batches = True

    def __init__(self, *, base_url: str | None = None, timeout_s: float = 120.0, concurrency: int = 8,
                 limits: LimiterPool | None = None, retry: RetryPolicy | None = None, seed: int = 0,
                 api_key: str | None = None):
        self.api_key = api_key or api_key_from_env(self.key_env, base_url)
        self.timeout_s = float(timeout_s)
        self.retry = retry or RetryPolicy()
        self.limits = limits or LimiterPool()
        self.concurrency = max(1, int(concurrency))
        self.semaphore = asyncio.Semaphore(self.concurrency)
        self.rng = random.Random(seed)
        self.attempts = 0
        self.retries = 0
        self.retry_reasons: dict[str, int] = {}
        self.sleep = asyncio.sleep  # the back-off's; injectable like the limiter's, for simulated time
        self.sdk = self._make_sdk(base_url)

    def _make_sdk(self, base_url: str | None):
        import anthropic
        import httpx2

        http_client = httpx2.AsyncClient(
            timeout=self.timeout_s,
            limits=httpx2.Limits(max_connections=self.concurrency + 2, max_keepalive_connections=self.concurrency))
        return anthropic.AsyncAnthropic(api_key=self.api_key, base_url=base_url, max_retries=0,
                                        timeout=self.timeout_s, http_client=http_client)

    async def close(self) -> None:
        await self.sdk.close()

    def _note_retry(self, desc: str) -> None:
        self.retries += 1
        key = desc.split(" (")[0][:40]
        self.retry_reasons[key] = self.retry_reasons.get(key, 0) + 1

    async def call_with_retries(self, fn, *, what: str, limiter: RateLimiter | None = None,
                                cost: tuple[int, int] = (0, 0), deadline_s: float | None = -1.0):
        """Run ``await fn()`` under the retry policy; ``what`` names the request in errors.

        With a ``limiter`` each attempt first takes one request and ``cost`` = (input estimate,
        output reservation) from its buckets; the server's rate-limit headers go back to it.

        ``deadline_s`` bounds one attempt end to end (default: the request timeout plus slack, a
        guard against a server that trickles bytes forever); ``None`` for long downloads such as
        batch results, where the SDK's per-read timeout is the right guard.
        """
        if deadline_s is not None and deadline_s < 0:
            deadline_s = self.timeout_s + 5.0
        last_desc, last_status = "", None
        for attempt in range(1, self.retry.max_attempts + 1):
            grant = await limiter.acquire(*cost) if limiter is not None else None
            self.attempts += 1
            try:
                return await asyncio.wait_for(fn(), timeout=deadline_s), grant, attempt
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - classified below, re-raised if unknown
                retryable, fatal, status, retry_after, desc = classify(e)
                last_desc, last_status = desc, status
                if limiter is not None:
                    limiter.observe(getattr(getattr(e, "response", None), "headers", None))
                    if grant is not None and status is not None:
                        # The server answered with an error status, so it wrote no answer: give the
                        # output reservation back now. Left unsettled, each failed attempt would hold
                        # the OTPM bucket ~max_tokens in debt and stall every waiter for its whole
                        # refill (15 s per fault at the defaults). The input estimate stays charged
                        # (the server may have read the prompt); a timeout or a malformed 200 stays
                        # charged in full, as the server may have generated and billed an answer.
                        limiter.settle(grant, {"input_tokens": grant.cost.get("input_tokens", 0), "output_tokens": 0})
                if fatal:
                    raise FatalAPIError(f"{what}: {desc}; every request would fail the same way, stopping. "
                                        f"Check {API_KEY_ENV}, the model name and the base URL.") from e
                if not retryable:
                    raise RequestFailed(f"{what}: {desc} (not retryable)", attempts=attempt,
                                        status=status, retryable=False) from e
                if attempt >= self.retry.max_attempts:
                    break
                delay = self.retry.backoff(attempt, self.rng)
                if retry_after is not None:
                    ra = min(retry_after, self.retry.max_retry_after_s)
                    delay = ra + self.rng.uniform(0, 0.1 * ra + 0.05)  # never earlier than asked
                    if status == 429 and limiter is not None:
                        limiter.pause_until(limiter.clock() + ra)
                self._note_retry(desc)
                log.info("%s: attempt %d/%d failed (%s); retrying in %.2fs", what, attempt,
                         self.retry.max_attempts, desc, delay)
                await self.sleep(delay)
        raise RequestFailed(f"{what}: gave up after {self.retry.max_attempts} attempts; last error: {last_desc}",
                            attempts=self.retry.max_attempts, status=last_status, retryable=True)

    async def create(self, params: dict[str, Any], *, what: str = "request") -> tuple[dict[str, Any], int]:
        """One Messages call (with retries). Returns ``(message dict, attempts used)``."""
        text = json.dumps(params.get("messages", "")) + json.dumps(params.get("system", ""))
        cost = (estimate_tokens(text), int(params.get("max_tokens", 0)))
        limiter = self.limits.for_model(str(params.get("model", "")))

        known, extra = split_params(self.sdk.messages.create, params)

        async def once():
            raw = await self.sdk.messages.with_raw_response.create(**known, extra_body=extra or None,
                                                                    timeout=self.timeout_s)
            limiter.observe(raw.headers)
            msg = raw.parse()
            if asyncio.iscoroutine(msg):
                msg = await msg
            return message_to_dict(msg)

        async with self.semaphore:
            result, grant, attempts = await self.call_with_retries(once, what=what, limiter=limiter, cost=cost)
        if grant is not None:
            limiter.settle(grant, result["usage"])
        return result, attempts
