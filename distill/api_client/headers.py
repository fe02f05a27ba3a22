"""Rate-limit response headers of both providers, read into one shape for the token buckets.

* Anthropic: ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining}``, one
  pair per bucket, limits per minute.
* OpenAI-compatible: ``x-ratelimit-{limit,remaining}-requests`` and ``-tokens``. Its token limit
  counts input and output together, so it is no rate for either of our two token buckets alone;
  but the remaining total bounds what is left of each, so it caps both levels (never raises them).
"""

from __future__ import annotations

from typing import Any

HEADER_DIMS = {"requests": "requests", "input_tokens": "input-tokens", "output_tokens": "output-tokens"}


def num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def rate_headers(headers: Any) -> dict[str, tuple[float | None, float | None]]:
    """``{dim: (limit per minute or None, remaining or None)}`` for the dims the headers speak of."""
    if headers is None:
        return {}
    out: dict[str, tuple[float | None, float | None]] = {}
    for dim, h in HEADER_DIMS.items():
        lim = num(headers.get(f"anthropic-ratelimit-{h}-limit"))
        rem = num(headers.get(f"anthropic-ratelimit-{h}-remaining"))
        if lim is not None or rem is not None:
            out[dim] = (lim, rem)
    if out:
        return out
    lim = num(headers.get("x-ratelimit-limit-requests"))
    rem = num(headers.get("x-ratelimit-remaining-requests"))
    if lim is not None or rem is not None:
        out["requests"] = (lim, rem)
    tokens_left = num(headers.get("x-ratelimit-remaining-tokens"))
    if tokens_left is not None:
        out["input_tokens"] = out["output_tokens"] = (None, tokens_left)
    return out
