"""``POST /v1/completions`` prompt scoring (vLLM's ``prompt_logprobs``) for ``teacher=remote``.

Every prompt answers, per position ``i``, the top-K log-probs (and, as vLLM does, the prompt's own
token with its rank) of the distribution that predicted token ``i``; entry 0 is ``null``. Nothing is
generated (``text`` is empty). One extension: ``vocab_size: V`` normalises over the first ``V`` ids
(the client's tokenizer), as the cache and the online teacher do.

Everything a request could blow up is checked before the forward pass, with the limit named: ids
outside ``0..V-1`` (a negative id used to reach the embedding as an ``IndexError``, a 500), a
prompt longer than the model's context (or ``--max-prompt-tokens``), more prompt tokens in one
request than ``--max-request-tokens`` (a 200,000-token prompt or 5,000 prompts held the model for a
minute and their logits alone would need tens of GB), and more prompts than ``--max-prompts``.
"""

from __future__ import annotations

import threading
import time

import torch

from distill.serve.errors import BadRequest, ServeLimits, TooLarge


def model_context(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


class Scorer:
    """Runs the model over token-id prompts and formats vLLM's ``prompt_logprobs``."""

    def __init__(self, model: torch.nn.Module, name: str, max_logprobs: int = 64, max_batch: int = 8,
                 device: str = "cpu", limits: ServeLimits | None = None, lock: threading.Lock | None = None):
        self.model, self.name = model.eval().to(device), name
        self.max_logprobs, self.max_batch, self.device = max_logprobs, max_batch, device
        self.limits = limits or ServeLimits(max_batch=max_batch)
        self.lock = lock or threading.Lock()  # shared with chat generation: one forward at a time
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        ctx = model_context(model)
        caps = [c for c in (ctx, self.limits.max_prompt_tokens) if c]
        self.max_prompt_tokens = min(caps) if caps else None

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

    def check(self, prompts: list[list[int]], vocab: int) -> None:
        """Refuse, naming the limit, whatever would fail or hog the model (before any forward)."""
        lim = self.limits
        if len(prompts) > lim.max_prompts:
            raise TooLarge(f"{len(prompts)} prompts in one request; the limit is {lim.max_prompts} "
                           f"(--max-prompts): split the request")
        for index, p in enumerate(prompts):
            bad = next((t for t in p if t < 0 or t >= vocab), None)
            if bad is not None:
                raise BadRequest(f"prompt {index} has token id {bad}, outside the vocabulary 0..{vocab - 1}")
            if self.max_prompt_tokens is not None and len(p) > self.max_prompt_tokens:
                raise TooLarge(f"prompt {index} has {len(p)} tokens; the limit is {self.max_prompt_tokens} "
                               f"(the model's context or --max-prompt-tokens)")
        total = sum(len(p) for p in prompts)
        if total > lim.max_request_tokens:
            raise TooLarge(f"{total} prompt tokens in one request; the limit is {lim.max_request_tokens} "
                           f"(--max-request-tokens): split the request")

    def completions(self, body: dict) -> dict:
        unknown = set(body) - {"model", "prompt", "prompt_logprobs", "vocab_size", "max_tokens", "temperature",
                               "logprobs", "echo", "n", "stream", "seed", "user"}
        if unknown:
            raise BadRequest(f"unknown field(s) {sorted(unknown)} for /v1/completions")
        prompts = body.get("prompt")
        if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
            prompts = [prompts]
        if (not isinstance(prompts, list) or not prompts
                or not all(isinstance(p, list) and p and all(type(t) is int for t in p) for p in prompts)):
            raise BadRequest("prompt must be a non-empty list of token ids or a list of such lists "
                             "(this server takes token ids, not text)")
        k = body.get("prompt_logprobs")
        if type(k) is not int or k < 1:
            raise BadRequest("prompt_logprobs must be a positive integer (this server only scores prompts)")
        if k > self.max_logprobs:
            raise BadRequest(f"Requested prompt logprobs of {k}, which is greater than max allowed: "
                             f"{self.max_logprobs} (start the server with a larger --max-logprobs)")
        vocab = body.get("vocab_size")  # our extension: normalise over the client's tokenizer ids
        if vocab is not None and (type(vocab) is not int or not 0 < vocab <= self.vocab_size):
            raise BadRequest(f"vocab_size must be an integer in 1..{self.vocab_size} (the model's rows)")
        self.check(prompts, vocab or self.vocab_size)
        choices = []
        for index, (prompt, lp) in enumerate(zip(prompts, self.log_probs(prompts, vocab))):
            rows: list[dict | None] = [None]
            top_v, top_i = lp[:-1].topk(min(k, lp.shape[-1]), dim=-1)
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
