"""Chat generation for both APIs: the model's chat template, its end-of-turn stop, per-token log-probs.

A :class:`ChatRequest` is what both ``/v1/chat/completions`` and ``/v1/messages`` reduce to; the
:class:`~distill.serve.batcher.Batcher` hands :meth:`ChatModel.generate` a list of them that share
their sampling settings, and it runs them as one left-padded ``generate`` call. Usage is counted
in the model's own tokens: ``prompt_tokens`` is the templated prompt, ``completion_tokens`` the
generated ids up to and including the stop token (what the model computed), so both equal what the
tokenizer and ``generate`` give for the same conversation.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from distill.data.conventions import stop_token_ids


@dataclass
class ChatRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    top_logprobs: int | None = None   # None = no log-probs; 0 = the chosen token's only
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None

    @property
    def sampling_key(self) -> tuple:
        """Requests with equal keys can share one ``generate`` call."""
        return (self.temperature if self.temperature > 0 else 0.0, self.top_p if self.temperature > 0 else 1.0)


class ChatModel:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str, device: str = "cpu",
                 lock: threading.Lock | None = None):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{name}: the tokenizer has no chat template; chat endpoints need an instruct model")
        self.model, self.tokenizer, self.name, self.device = model.eval().to(device), tokenizer, name, device
        self.lock = lock or threading.Lock()
        self.stop_ids = stop_token_ids(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    @torch.no_grad()
    def generate(self, reqs: list[ChatRequest]) -> list[dict[str, Any]]:
        """One batched ``generate`` for requests of one :attr:`ChatRequest.sampling_key`."""
        temp, top_p = reqs[0].sampling_key
        length = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(reqs):  # left padding: every row's next token is at the same column
            ids[i, length - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, length - len(r.prompt_ids):] = 1
        want_lp = any(r.top_logprobs is not None for r in reqs)
        kw = {"do_sample": True, "temperature": temp, "top_p": top_p} if temp > 0 else \
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with self.lock:
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=max(r.max_tokens for r in reqs), eos_token_id=self.stop_ids,
                                      pad_token_id=self.pad_id, return_dict_in_generate=True,
                                      output_logits=want_lp, **kw)
        new = out.sequences[:, length:].cpu()
        logits = torch.stack(out.logits, 1).float().cpu() if want_lp else None
        return [self._one(r, new[i].tolist(), None if logits is None else logits[i]) for i, r in enumerate(reqs)]

    def _one(self, r: ChatRequest, ids: list[int], logits: torch.Tensor | None) -> dict[str, Any]:
        ids = ids[:r.max_tokens]
        hit = next((n for n, t in enumerate(ids) if t in self.stop_ids), None)
        finish = "length"
        if hit is not None:
            ids, finish = ids[:hit + 1], "stop"
        body = ids[:-1] if finish == "stop" else ids  # the stop token is counted, not shown
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        matched = None
        for s in r.stop:  # stop strings: cut at the earliest, keep the tokens that produced it
            at = text.find(s) if s else -1
            if at >= 0 and (matched is None or at < matched[0]):
                matched = (at, s)
        if matched is not None:
            text, finish = text[:matched[0]], "stop_sequence"
            n = next(n for n in range(1, len(body) + 1)
                     if matched[1] in self.tokenizer.decode(body[:n], skip_special_tokens=True))
            ids = body = body[:n]
        res = {"text": text, "ids": ids, "finish": finish, "stop_sequence": matched[1] if matched else None,
               "prompt_tokens": len(r.prompt_ids), "completion_tokens": len(ids)}
        if r.top_logprobs is not None and logits is not None:
            lp = torch.log_softmax(logits[:len(body)], dim=-1)
            k = r.top_logprobs
            top_v, top_i = lp.topk(max(k, 1), dim=-1)
            res["logprobs"] = [
                {"token": self.tokenizer.decode([t]), "id": t, "logprob": float(lp[n, t]),
                 "top": [(self.tokenizer.decode([int(j)]), int(j), float(v))
                         for v, j in zip(top_v[n, :k].tolist(), top_i[n, :k].tolist())]}
                for n, t in enumerate(body)]
        return res
