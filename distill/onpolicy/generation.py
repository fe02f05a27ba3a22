"""Continuations of a batch of prompts, behind one :class:`Generator` interface.

A generator takes left-padded prompts and a model and returns the sampled continuations with a
mask that keeps each one up to and including its first stop token (:class:`Generated`). The stop
tokens are :func:`distill.data.conventions.stop_token_ids` of the run's tokenizer: a chat model's
end-of-turn token (``<|im_end|>``, ``<end_of_turn>``) first, then its ``eos`` if that differs, so a
chat answer ends where its chat template ends the turn. Two generators live here:

* :class:`HFGenerator`: Hugging Face ``generate`` on the whole batch at once, with a KV cache,
  stopping when every row has emitted a stop token. ``sampling.static_cache`` pre-allocates the
  cache for prompt + ``max_new_tokens`` (``cache_implementation="static"``: no per-token
  reallocation and concatenation of the keys and values, on a CPU too); ``sampling.compile``
  also compiles the decoding step with ``torch.compile`` on any device (transformers does that by
  itself for a static cache on a GPU, never on a CPU). Same tokens as the dynamic cache (greedy,
  tested); whether either pays depends on the model and machine: measure before turning it on;
* :func:`distill.onpolicy.speculative.speculative_generate` (speculative KD) is a token-level loop
  over two models and so is its own function.

An external engine (vLLM on a GPU) fits the same interface: a class with
``__call__(model, prompt_ids, prompt_mask, sampling, stop_ids, pad_id, vocab_size) -> Generated``
that syncs ``model``'s (LoRA-merged) weights into the engine before sampling.

Every generator runs with the model in eval mode (no dropout), under ``no_grad``, and restores
the model's train/eval state afterwards. It runs in whatever precision context the caller is in:
inside Lightning's ``training_step`` that is the run's precision (autocast for ``*-mixed``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Union

import torch

#: What a generator stops at: one token id, several (the end of turn first), or None (never stops early).
StopIds = Union[int, Sequence[int], None]


def stop_list(stop_ids: StopIds) -> list[int]:
    """``stop_ids`` as a list (empty: no stop token)."""
    if stop_ids is None:
        return []
    if isinstance(stop_ids, int) or (isinstance(stop_ids, torch.Tensor) and stop_ids.dim() == 0):
        return [int(stop_ids)]
    return [int(i) for i in stop_ids]


@dataclass
class Sampling:
    """How continuations are drawn.

    Args:
        max_new_tokens: the most tokens a continuation gets (fewer when a stop token comes first).
        temperature: softmax temperature of the sampling distribution (> 0).
        top_p: nucleus sampling mass in (0, 1]; 1 = the full distribution.
        greedy: argmax decoding instead of sampling (temperature and top_p ignored).
        cache_implementation: passed to ``generate``; None = the model's default dynamic cache.
        static_cache: a pre-allocated KV cache (``cache_implementation="static"``), on any device.
        compile: compile the decoding step (``torch.compile``, inductor, default mode; needs
            ``static_cache``: a compiled step keeps its shapes); the first call pays the compilation.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    cache_implementation: str | None = None
    static_cache: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"sequences.sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"sequences.sampling.temperature must be > 0 (use greedy: true for argmax), "
                             f"got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sequences.sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.static_cache and self.cache_implementation not in (None, "static"):
            raise ValueError(f"sequences.sampling.static_cache=true asks for the static cache, but "
                             f"cache_implementation={self.cache_implementation!r}; set one of them")
        if self.compile and not (self.static_cache or self.cache_implementation == "static"):
            raise ValueError("sequences.sampling.compile=true compiles the decoding step, which needs fixed shapes: "
                             "set sequences.sampling.static_cache=true too")

    @property
    def cache(self) -> str | None:
        """The ``cache_implementation`` handed to ``generate`` (None: the model's default)."""
        return "static" if self.static_cache else self.cache_implementation


@dataclass
class Generated:
    """Continuations of left-padded prompts.

    Attributes:
        completion: ``(B, N)`` generated ids; positions after a row's first stop token hold padding.
        completion_mask: ``(B, N)`` 1 up to and including the first stop token (a row without one
            keeps all ``N``), 0 after it.
        from_teacher: ``(B, N)`` bool, True where the teacher wrote the token (speculative KD), or None.
    """

    completion: torch.Tensor
    completion_mask: torch.Tensor
    from_teacher: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


class Generator(Protocol):
    """Samples continuations of ``prompt_ids`` from ``model`` (see the module docstring)."""

    def __call__(self, model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 sampling: Sampling, stop_ids: StopIds, pad_id: int, vocab_size: int | None = None) -> Generated: ...


def completion_mask(completion: torch.Tensor, stop_ids: StopIds) -> torch.Tensor:
    """``(B, N)`` long mask: 1 up to and including each row's first stop token, 0 after it.

    The stop token itself is kept (the student learns to end its turn); what follows it (a chat
    template's newline, padding) is not part of the answer.
    """
    stops = stop_list(stop_ids)
    if not stops:
        return torch.ones_like(completion)
    is_stop = torch.isin(completion, torch.tensor(stops, dtype=completion.dtype, device=completion.device))
    # positions strictly after the first stop token: a stop token appeared before them
    after = (is_stop.long().cumsum(-1) - is_stop.long()) > 0
    return (~after).long()


@contextlib.contextmanager
def eval_mode(*models: torch.nn.Module):
    """Models in eval mode (dropout off) for the block; each model's previous mode restored after."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from ``(B, V)`` logits: argmax, or a draw at ``temperature`` within ``top_p``."""
    if sampling.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= sampling.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class HFGenerator:
    """Batched Hugging Face ``generate`` with a KV cache, left-padded prompts, stop at any stop token.

    ``vocab_size`` smaller than the model's output size (an embedding matrix padded past the
    shared tokenizer) keeps the padded ids from ever being sampled: the student could not embed them.
    """

    def __call__(self, model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 sampling: Sampling, stop_ids: StopIds, pad_id: int, vocab_size: int | None = None) -> Generated:
        stops = stop_list(stop_ids)
        # generate() stops a row at any of these (and pads it after); without them, at max_new_tokens
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, do_sample=not sampling.greedy, use_cache=True,
                      pad_token_id=pad_id, eos_token_id=stops or None, return_dict_in_generate=False)
        if not sampling.greedy:
            # top_k=0: no top-k truncation besides top_p (HF's default top_k is 50)
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.cache:
            kwargs["cache_implementation"] = sampling.cache
        if sampling.compile:
            kwargs["compile_config"] = compile_config()
        out_size = _output_size(model)
        if vocab_size is not None and out_size is not None and out_size > vocab_size:
            kwargs["suppress_tokens"] = list(range(vocab_size, out_size))
        with torch.no_grad(), eval_mode(model):
            # generate warns about generation flags the model's own config sets differently
            # (e.g. a model saved with sampling defaults); ours are explicit.
            sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)
        completion = sequences[:, prompt_ids.shape[1]:]
        if completion.shape[1] == 0:  # max_new_tokens reached immediately cannot happen (>= 1), but be safe
            completion = torch.full((prompt_ids.shape[0], 1), pad_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
        mask = completion_mask(completion, stops)
        return Generated(completion=completion.masked_fill(mask == 0, pad_id), completion_mask=mask)


def _output_size(model: torch.nn.Module) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head.weight.shape[0] if head is not None else None


def compile_config():
    """transformers' ``CompileConfig`` for a compiled decoding step on any device: inductor in its
    default mode ("reduce-overhead" is CUDA graphs), shapes fixed by the static cache. transformers
    compiles only on accelerators unless ``_compile_all_devices`` is set (a private attribute, but the
    only switch ``GenerationMixin._valid_auto_compile_criteria`` reads for a CPU)."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
    config._compile_all_devices = True
    return config
