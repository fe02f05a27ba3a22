"""A local Hugging Face causal LM as a completion source.

Batched with left padding, sampled with temperature / top-p, ``n`` samples per prompt, stopped
early on stop strings, and timed, so the report can show tokens/s of generation next to pass@k.

A chat answer stops at the chat template's end-of-turn token (SmolLM2's ``<|im_end|>``, Gemma's
``<end_of_turn>``), which for a base model with a template need not be its ``eos``; a completion
stops at ``eos`` or the family's end-of-text token (:mod:`distill.data.conventions`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from distill.data.conventions import document_tokens, stop_token_ids
from distill.evaluation.settings import DEFAULT_MAX_NEW_TOKENS, GenerationResult, GenerationSettings

log = logging.getLogger(__name__)


def _stop_criteria(stop: Sequence[str], tokenizer, prompt_len: int):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stops = [s for s in stop if s]
    lookback = max(len(s) for s in stops) + 4  # every token decodes to >= 1 char

    class StopOnStrings(StoppingCriteria):
        """Per-row stop: a row is done once its new text contains a stop string; generation
        ends when all rows are done (finished rows are padded by ``generate``)."""

        def __call__(self, input_ids, scores, **kwargs):
            tail = input_ids[:, prompt_len:][:, -lookback:]
            texts = tokenizer.batch_decode(tail, skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in texts],
                                device=input_ids.device, dtype=torch.bool)

    return StoppingCriteriaList([StopOnStrings()])


class HFSource:
    """A local Hugging Face causal LM."""

    kind = "hf"

    def __init__(self, model, tokenizer, device: str, chat: Any = "auto", system_prompt: str | None = None):
        self.model = model
        self.system_prompt = system_prompt
        self.tokenizer = tokenizer
        self.device = device
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat == "auto":
            chat = has_template
        elif chat and not has_template:
            raise ValueError("model.chat=true but the tokenizer has no chat template")
        self.style = "chat" if chat else "completion"

    def format(self, text: str, style: str) -> str:
        if style == "chat":
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            return self.tokenizer.apply_chat_template(
                [*system, {"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return text

    def _limits(self, settings: GenerationSettings) -> tuple[int | None, int]:
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        asked = settings.max_new_tokens
        max_new = int(asked) if asked is not None else DEFAULT_MAX_NEW_TOKENS
        max_prompt = settings.max_prompt_tokens
        if max_pos:
            if max_new >= max_pos:
                max_new = max(1, max_pos // 2)
                if asked is not None:  # only a number the user chose is worth a warning
                    log.warning("generation.max_new_tokens=%d >= the model's %d positions; using %d",
                                asked, max_pos, max_new)
            room = max_pos - max_new
            max_prompt = min(max_prompt or room, room)
        return max_prompt, max_new

    def stop_ids(self, style: str) -> list[int]:
        """Token ids that end an answer: the end of turn (then ``eos``) in chat style; ``eos`` and
        the end-of-text token in completion style."""
        tok = self.tokenizer
        if style == "chat":
            return stop_token_ids(tok)
        ids = [tok.eos_token_id, document_tokens(tok).eos_id]
        return [i for n, i in enumerate(ids) if i is not None and i not in ids[:n]]

    def generate(self, requests, settings, stop, style: str = "completion") -> GenerationResult:
        import torch

        tok = self.tokenizer
        texts = [self.format(text, style) for _, text in requests]
        n = int(settings.n)
        copies = 1 if settings.greedy else n
        if settings.greedy and n > 1:
            log.info("temperature=0: generating once per task and repeating it n=%d times", n)
        max_prompt, max_new = self._limits(settings)
        add_special = style != "chat"
        encoded = [tok(t, add_special_tokens=add_special)["input_ids"] for t in texts]
        if max_prompt:
            encoded = [ids[-max_prompt:] for ids in encoded]
        jobs = sorted(((i, j) for i in range(len(texts)) for j in range(copies)),
                      key=lambda ij: -len(encoded[ij[0]]))
        out_text: list[list[str]] = [[""] * copies for _ in texts]
        out_tok: list[list[int]] = [[0] * copies for _ in texts]
        stops = self.stop_ids(style)
        # an answer is cut at its first stop token (kept in the count) or at padding
        stop_ids = set(stops) | ({tok.pad_token_id} - {None})
        gen_cfg = dict(max_new_tokens=max_new, pad_token_id=tok.pad_token_id, eos_token_id=stops or None)
        if settings.greedy:
            gen_cfg.update(do_sample=False)
        else:
            gen_cfg.update(do_sample=True, temperature=float(settings.temperature),
                           top_p=float(settings.top_p), top_k=0)
        torch.manual_seed(int(settings.seed))
        start = time.perf_counter()
        bs = int(settings.batch_size)
        for b in range(0, len(jobs), bs):
            batch = jobs[b:b + bs]
            seqs = [encoded[i] for i, _ in batch]
            width = max(len(s) for s in seqs)
            pad = tok.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs],
                                     device=self.device)
            attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs],
                                     device=self.device)
            kwargs = dict(gen_cfg)
            if stop and style == "completion":
                kwargs["stopping_criteria"] = _stop_criteria(stop, tok, width)
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
            new = out[:, width:].tolist()
            for (i, j), ids in zip(batch, new):
                count = len(ids)
                for k, t in enumerate(ids):
                    if t in stop_ids:
                        count = k + 1
                        break
                out_tok[i][j] = count
                out_text[i][j] = tok.decode(ids[:count], skip_special_tokens=True)
        seconds = time.perf_counter() - start
        if copies < n:
            out_text = [row * n for row in out_text]
            out_tok = [row + [0] * (n - 1) for row in out_tok]  # tokens were generated once
        return GenerationResult(out_text, out_tok, seconds)

    def close(self) -> None:
        self.model = None
