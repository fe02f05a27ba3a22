"""``distill-serve-teacher``: load a model (and its tokenizer), then serve it on loopback or with a key.

``--model`` takes a Hugging Face folder or hub id in the local cache, or ``preset:NAME`` for a
teacher preset of ``conf/teacher/NAME.yaml`` (e.g. ``preset:smollm2-135m-instruct``, whose GGUF
file is converted once into a folder under the cache). The key for a non-loopback bind is read from
the environment variable ``--api-key-env`` names, never from the command line (it would sit in the
shell history and in ``ps``).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading

log = logging.getLogger(__name__)


def resolve_model(model: str) -> str:
    """A folder or hub id as given; ``preset:NAME`` -> that teacher preset's model folder."""
    if not model.startswith("preset:"):
        return model
    from omegaconf import OmegaConf

    from distill.config import CONF_DIR
    from distill.models import ModelSpec

    path = os.path.join(CONF_DIR, "teacher", model.split(":", 1)[1] + ".yaml")
    if not os.path.isfile(path):
        raise SystemExit(f"--model {model}: no preset {path}")
    node = OmegaConf.to_container(OmegaConf.load(path).model, resolve=True)
    node.pop("_target_", None)
    return ModelSpec(**node, role="teacher").name_or_path


def load_app(model: str, dtype: str = "float32", device: str = "cpu", max_logprobs: int = 64,
             name: str | None = None, limits=None, chat: bool = True):
    """An :class:`~distill.serve.http.App` with prompt scoring and, if the tokenizer has a chat
    template, both chat endpoints, sharing one model and one lock."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.models import DTYPES
    from distill.serve.chat import ChatModel
    from distill.serve.errors import ServeLimits
    from distill.serve.http import App
    from distill.serve.scoring import Scorer

    if dtype not in DTYPES:
        raise ValueError(f"--dtype: unknown {dtype!r}; use one of {sorted(DTYPES)}")
    folder = resolve_model(model)
    limits = limits or ServeLimits()
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
    name = name or model
    lock = threading.Lock()
    scorer = Scorer(hf, name, max_logprobs=max_logprobs, max_batch=limits.max_batch, device=device,
                    limits=limits, lock=lock)
    chat_model = None
    if chat:
        try:
            tok = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:  # a bare model folder (tests, scoring-only): serve scoring alone
            log.warning("no tokenizer in %s (%s): only /v1/completions is served", folder, e)
            tok = None
        if tok is not None and getattr(tok, "chat_template", None):
            chat_model = ChatModel(hf, tok, name, device=device, lock=lock)
        elif tok is not None:
            log.warning("%s has no chat template: only /v1/completions is served", folder)
    return App(name=name, scorer=scorer, chat=chat_model, limits=limits)


def main(argv: list[str] | None = None) -> None:
    from distill.serve.errors import ServeLimits
    from distill.serve.http import serve

    d = ServeLimits()
    p = argparse.ArgumentParser(prog="distill-serve-teacher",
                                description="Serve a local Hugging Face model: /v1/chat/completions (OpenAI), "
                                            "/v1/messages (Anthropic) and /v1/completions prompt scoring (vLLM).")
    p.add_argument("--model", required=True, help="folder, hub id in the local cache, or preset:NAME (conf/teacher)")
    p.add_argument("--host", default="127.0.0.1", help="anything but loopback needs --api-key-env")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument("--served-model-name", default=None, help="the name clients send (default: --model)")
    p.add_argument("--api-key-env", default=None, help="name of the environment variable holding the key")
    p.add_argument("--max-logprobs", type=int, default=64, help="largest prompt_logprobs accepted")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="requests (prompts) per forward pass")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="chat requests waiting; more get 429")
    p.add_argument("--max-new-tokens", type=int, default=d.max_tokens, help="the largest max_tokens accepted")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="default: the model's context")
    p.add_argument("--max-request-tokens", type=int, default=d.max_request_tokens,
                   help="prompt tokens summed over one request")
    p.add_argument("--max-prompts", type=int, default=d.max_prompts, help="prompts in one /v1/completions request")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, one per core); 1 on cores shared with other work")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env, "").strip()
        if not key:
            raise SystemExit(f"--api-key-env {args.api_key_env}: that variable is empty")
    if args.threads is not None:
        import torch

        # With every core busy elsewhere (the client, a training job), torch's one thread per core
        # spends most of its time waiting for descheduled siblings: 24 tokens of SmolLM2-135M took
        # ~25 s on 2 busy cores with 2 threads and ~3 s with 1.
        torch.set_num_threads(max(1, args.threads))
    limits = ServeLimits(max_body_bytes=args.max_body_bytes, max_tokens=args.max_new_tokens,
                         max_prompt_tokens=args.max_prompt_tokens, max_request_tokens=args.max_request_tokens,
                         max_prompts=args.max_prompts, max_queue=args.max_queue, max_batch=args.max_batch)
    app = load_app(args.model, args.dtype, args.device, args.max_logprobs, args.served_model_name, limits)
    try:
        server = serve(app, args.host, args.port, api_key=key)
    except ValueError as e:
        raise SystemExit(f"distill-serve-teacher: {e}") from None
    routes = "/v1/chat/completions, /v1/messages, /v1/completions" if app.chat else "/v1/completions"
    print(f"distill-serve-teacher: serving {app.name!r} on http://{args.host}:{server.server_port} ({routes})",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
