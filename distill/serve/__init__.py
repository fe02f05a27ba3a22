"""``distill-serve-teacher``: a local Hugging Face model behind the APIs the rest of distill speaks.

    distill-serve-teacher --model preset:smollm2-135m-instruct --port 8000
    distill-teacher-data provider=openai client.base_url=http://127.0.0.1:8000/v1 teacher_data/pricing=local
    distill-train teacher=remote teacher.url=http://127.0.0.1:8000 loss=kd_chunked

* ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic): the model's chat
  template, stopped at its end-of-turn token, concurrent requests batched (:mod:`.batcher`);
* ``POST /v1/completions``: vLLM's ``prompt_logprobs`` scoring for ``teacher=remote``
  (:mod:`.scoring`), so a run switches between this server and ``vllm serve`` by URL only;
* ``GET /v1/models`` (plus ``vocab_size``) and ``GET /health``.

Hardened for a shared machine: bounded queue (429 + ``retry-after``), capped ``max_tokens``, prompt
length, tokens and prompts per request and body size (400/413 naming the limit), 400 for malformed
JSON or unknown fields, a key required off loopback (:mod:`.http`). Still not a production server:
one model, one forward at a time, CPU or one device.
"""

from distill.serve.errors import BadRequest, ServeLimits
from distill.serve.http import App, serve
from distill.serve.scoring import Scorer

__all__ = ["App", "BadRequest", "Scorer", "ServeLimits", "serve", "load_scorer", "main"]


def load_scorer(model: str, dtype: str = "float32", device: str = "cpu", max_logprobs: int = 64,
                max_batch: int = 8, name: str | None = None) -> Scorer:
    """The prompt scorer alone (``teacher=remote`` tests), as before the chat endpoints."""
    from distill.serve.cli import load_app

    return load_app(model, dtype, device, max_logprobs, name, ServeLimits(max_batch=max_batch), chat=False).scorer


def main(argv: list[str] | None = None) -> None:
    from distill.serve.cli import main as _main

    _main(argv)
