"""Live answers from an API as a completion source, and the Claude adapter behind it.

:class:`AnthropicApi` does not open a client of its own: it drives the project's one Messages
client, :class:`distill.api_client.client.TeacherClient`, so evaluation calls get the same
retries, rate limiting, key handling (``ANTHROPIC_API_KEY`` only) and error messages as the API
teacher's data generation.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Protocol, Sequence

from distill.evaluation.settings import DEFAULT_MAX_NEW_TOKENS, GenerationResult, GenerationSettings
from distill.evaluation.sources.base import CompletionSource, Role


class ApiClient(Protocol):
    """What :class:`ApiSource` calls. ``complete_many`` (one call for every prompt) is optional;
    without it the source calls ``complete`` from a thread pool."""

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float,
                 stop: Sequence[str] | None) -> tuple[str, int]: ...


class AnthropicApi:
    """Claude via :class:`~distill.api_client.client.TeacherClient` (``conf/eval/model/api.yaml``).

    Args:
        model: the Claude model id.
        concurrency: requests in flight at once.
        timeout_s: per-request timeout.
        max_attempts: attempts per request (the client's retry policy).
        base_url: another endpoint (a proxy, a local fake in tests); null = the SDK's default.
    """

    def __init__(self, model: str, concurrency: int = 4, timeout_s: float = 120.0,
                 max_attempts: int = 6, base_url: str | None = None):
        from distill.api_client.client import api_key_from_env

        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.timeout_s = float(timeout_s)
        self.max_attempts = int(max_attempts)
        self.base_url = base_url
        self.api_key = api_key_from_env()  # fails now, naming the variable, not mid-benchmark

    def params(self, prompt: str, max_tokens: int, temperature: float,
               stop: Sequence[str] | None) -> dict[str, Any]:
        # top_p is not sent: several Claude models reject temperature and top_p together.
        p: dict[str, Any] = {"model": self.model, "max_tokens": int(max_tokens),
                             "temperature": float(temperature),
                             "messages": [{"role": "user", "content": prompt}]}
        if stop:
            p["stop_sequences"] = list(stop)
        return p

    def complete_many(self, prompts: Sequence[str], *, max_tokens: int, temperature: float,
                      top_p: float, stop: Sequence[str] | None) -> list[tuple[str, int]]:
        """``(text, output_tokens)`` per prompt, all requests on one event loop and one client."""
        import asyncio

        from distill.api_client.client import RetryPolicy, TeacherClient

        async def run() -> list[tuple[str, int]]:
            client = TeacherClient(base_url=self.base_url, timeout_s=self.timeout_s,
                                   concurrency=self.concurrency, api_key=self.api_key,
                                   retry=RetryPolicy(max_attempts=self.max_attempts))
            try:
                done = await asyncio.gather(*(
                    client.create(self.params(p, max_tokens, temperature, stop),
                                  what=f"distill-eval request {i}")
                    for i, p in enumerate(prompts)))
            finally:
                await client.close()
            return [(msg["text"], int(msg["usage"].get("output_tokens", 0))) for msg, _ in done]

        return asyncio.run(run())

    def complete(self, prompt: str, *, max_tokens: int, temperature: float, top_p: float,
                 stop: Sequence[str] | None) -> tuple[str, int]:
        return self.complete_many([prompt], max_tokens=max_tokens, temperature=temperature,
                                  top_p=top_p, stop=stop)[0]


class ApiSource(CompletionSource):
    """Live answers from an API client (``complete(prompt, ...) -> (text, output_tokens)``):
    ``conf/eval/model/api.yaml``.

    Args:
        api: the client, or its config node (``_target_`` + arguments), built in :meth:`open` so
            that composing or checking a config needs no API key.
        concurrency: requests in flight when the client has no ``complete_many``.
        name, role: as in :class:`CompletionSource`.
    """

    kind = "api"
    style = "chat"

    def __init__(self, api: Any, concurrency: int = 4, name: str | None = None,
                 role: Role = "model"):
        super().__init__(name, role)
        if hasattr(api, "_metadata"):  # an OmegaConf node (``_recursive_: false``): plain data
            from omegaconf import OmegaConf

            api = OmegaConf.to_container(api, resolve=True)
        self.api = api
        self.client = None if isinstance(api, Mapping) else api
        if self.client is not None and not hasattr(self.client, "complete"):
            raise TypeError(f"model.api must be an object with complete(prompt, ...); got "
                            f"{type(api).__name__}")
        self.concurrency = max(1, int(concurrency))

    def settings(self) -> dict[str, Any]:
        api = dict(self.api) if isinstance(self.api, Mapping) else type(self.api).__name__
        return {"api": api}

    def open(self, benchmark=None, work_dir=None) -> None:
        if self.client is None:
            from omegaconf import OmegaConf

            from distill.config import instantiate

            self.client = instantiate(OmegaConf.create(dict(self.api)), "model.api")
            if not hasattr(self.client, "complete"):
                raise TypeError(f"model.api must build an object with complete(prompt, ...); "
                                f"got {type(self.client).__name__}")

    def generate(self, requests, settings: GenerationSettings, stop,
                 style: str = "chat", **kwargs) -> GenerationResult:
        self.open()
        n = int(settings.n)
        jobs = [(i, j, text) for i, (_, text) in enumerate(requests) for j in range(n)]
        texts = [[""] * n for _ in requests]
        tokens = [[0] * n for _ in requests]
        kw = dict(max_tokens=int(settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS), temperature=float(settings.temperature),
                  top_p=float(settings.top_p), stop=None)
        start = time.perf_counter()
        many = getattr(self.client, "complete_many", None)
        if many is not None:
            answers = many([text for _, _, text in jobs], **kw)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.concurrency) as pool:
                answers = list(pool.map(lambda job: self.client.complete(job[2], **kw), jobs))
        for (i, j, _), (out, used) in zip(jobs, answers):
            texts[i][j], tokens[i][j] = out, int(used)
        return GenerationResult(texts, tokens, time.perf_counter() - start)
