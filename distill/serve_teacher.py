"""``distill-serve-teacher``: a small teacher server over a local Hugging Face model.

    distill-serve-teacher --model path/to/teacher --port 8000
    distill-train teacher=remote teacher.url=http://127.0.0.1:8000 loss=kd_chunked

It answers the part of vLLM's OpenAI-compatible API that ``teacher=remote`` uses, with the same
JSON, so a run can switch between this server (tests, CPU users, a spare machine) and a real vLLM
server (``vllm serve <model> --max-logprobs K``) by changing ``teacher.url`` only:

* ``POST /v1/completions`` with token-id prompts and ``prompt_logprobs: K``: every choice carries
  ``prompt_logprobs``, entry ``i`` holding the top-K log-probs (and, as vLLM does, the prompt's own
  token with its rank) of the distribution that predicted token ``i``; entry 0 is ``null``. It
  generates nothing (``text`` is empty): only prompt scoring is implemented.
* ``GET /v1/models`` (plus a ``vocab_size`` field vLLM does not have) and ``GET /health``.
* one extension of the request: ``vocab_size: V`` normalises over the first ``V`` ids (the
  client's tokenizer), as the cache and the online teacher do.

What it is not: a production server. One model, one forward at a time (a lock; requests queue),
no authentication, no text prompts (send token ids), CPU or one device. Bind it to 127.0.0.1
unless the network is trusted.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request the server will not answer (HTTP 400, with this message)."""


class Scorer:
    """Runs the model over token-id prompts and formats vLLM's ``prompt_logprobs``."""

    def __init__(self, model: torch.nn.Module, name: str, max_logprobs: int = 64, max_batch: int = 8,
                 device: str = "cpu"):
        self.model, self.name = model.eval().to(device), name
        self.max_logprobs, self.max_batch, self.device = max_logprobs, max_batch, device
        self.lock = threading.Lock()
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    @torch.no_grad()
    def log_probs(self, prompts: list[list[int]], vocab: int | None = None) -> list[torch.Tensor]:
        """Float32 ``(n_i, V)`` next-token log-probs of each prompt (right-padded batches), over the
        first ``vocab`` ids when given (the client's tokenizer; padded embedding rows left out)."""
        out = []
        for start in range(0, len(prompts), self.max_batch):
            chunk = prompts[start:start + self.max_batch]
            length = max(len(p) for p in chunk)
            ids = torch.zeros((len(chunk), length), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(chunk):
                ids[i, :len(p)], mask[i, :len(p)] = torch.tensor(p), 1
            with self.lock:
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    use_cache=False).logits
            lp = torch.log_softmax(logits[..., :vocab].float(), dim=-1).cpu()
            out.extend(lp[i, :len(p)] for i, p in enumerate(chunk))
        return out

    def completions(self, body: dict) -> dict:
        prompts = body.get("prompt")
        if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
            prompts = [prompts]
        if (not isinstance(prompts, list) or not prompts
                or not all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts)):
            raise BadRequest("prompt must be a non-empty list of token ids or a list of such lists "
                             "(this server takes token ids, not text)")
        k = body.get("prompt_logprobs")
        if not isinstance(k, int) or k < 1:
            raise BadRequest("prompt_logprobs must be a positive integer (this server only scores prompts)")
        if k > self.max_logprobs:
            raise BadRequest(f"Requested prompt logprobs of {k}, which is greater than max allowed: "
                             f"{self.max_logprobs} (start the server with a larger --max-logprobs)")
        vocab = body.get("vocab_size")  # our extension: normalise over the client's tokenizer ids
        if vocab is not None and (not isinstance(vocab, int) or not 0 < vocab <= self.vocab_size):
            raise BadRequest(f"vocab_size must be an integer in 1..{self.vocab_size} (the model's rows)")
        choices = []
        for index, (prompt, lp) in enumerate(zip(prompts, self.log_probs(prompts, vocab))):
            vocab = lp.shape[-1]
            if max(prompt) >= vocab or min(prompt) < 0:
                raise BadRequest(f"prompt {index} has token ids outside the model's vocabulary (size {vocab})")
            rows: list[dict | None] = [None]
            top_v, top_i = lp[:-1].topk(k, dim=-1)
            for i in range(1, len(prompt)):
                row = {str(int(t)): {"logprob": float(v), "rank": r + 1, "decoded_token": None}
                       for r, (v, t) in enumerate(zip(top_v[i - 1].tolist(), top_i[i - 1].tolist()))}
                actual = prompt[i]
                if str(actual) not in row:  # vLLM also returns the prompt token, with its rank
                    value = lp[i - 1, actual]
                    row[str(actual)] = {"logprob": float(value), "rank": int((lp[i - 1] > value).sum()) + 1,
                                        "decoded_token": None}
                rows.append(row)
            choices.append({"index": index, "text": "", "logprobs": None, "finish_reason": "length",
                            "prompt_logprobs": rows, "prompt_token_ids": prompt})
        n_tokens = sum(len(p) for p in prompts)
        return {"id": f"cmpl-{time.time_ns()}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": n_tokens, "completion_tokens": 0, "total_tokens": n_tokens}}


def _handler(scorer: Scorer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"object": "error", "message": message, "type": "BadRequestError", "code": status})

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                # vocab_size is our extension (vLLM lists no such field): teacher=remote reads it
                self._send(200, {"object": "list", "data": [{"id": scorer.name, "object": "model", "owned_by": "distill",
                                                             "vocab_size": scorer.vocab_size}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/completions":
                self._error(404, f"no route {self.path}; this server answers POST /v1/completions")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                model = body.get("model")
                if model not in (None, scorer.name):
                    raise BadRequest(f"The model `{model}` does not exist; this server serves {scorer.name!r}")
                self._send(200, scorer.completions(body))
            except (BadRequest, json.JSONDecodeError) as e:
                self._error(400, str(e))
            except Exception as e:  # the client retries 5xx answers
                log.exception("distill-serve-teacher: request failed")
                self._error(500, f"{type(e).__name__}: {e}")

        def log_message(self, fmt: str, *args) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

    return Handler


def serve(scorer: Scorer, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A started server (in a daemon thread); ``port=0`` picks a free one (``server.server_port``)."""
    server = ThreadingHTTPServer((host, port), _handler(scorer))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="distill-serve-teacher", daemon=True).start()
    return server


def load_scorer(model: str, dtype: str = "float32", device: str = "cpu", max_logprobs: int = 64,
                max_batch: int = 8, name: str | None = None) -> Scorer:
    from transformers import AutoModelForCausalLM

    from distill.models import DTYPES

    if dtype not in DTYPES:
        raise ValueError(f"--dtype: unknown {dtype!r}; use one of {sorted(DTYPES)}")
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=DTYPES[dtype])
    return Scorer(hf, name or model, max_logprobs=max_logprobs, max_batch=max_batch, device=device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="distill-serve-teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face model folder (or hub id in the local cache)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    parser.add_argument("--served-model-name", default=None, help="the name clients send (default: --model)")
    parser.add_argument("--max-logprobs", type=int, default=64, help="largest prompt_logprobs accepted")
    parser.add_argument("--max-batch", type=int, default=8, help="prompts per forward pass")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    scorer = load_scorer(args.model, args.dtype, args.device, args.max_logprobs, args.max_batch,
                         args.served_model_name)
    server = serve(scorer, args.host, args.port)
    print(f"distill-serve-teacher: serving {scorer.name!r} on http://{args.host}:{server.server_port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
