"""sequences.sampling.static_cache: the pre-allocated KV cache writes the same greedy tokens as the
dynamic one (left-padded prompts of different lengths, a stop token); compile checks its settings."""

from __future__ import annotations

import pytest
import torch

from distill.onpolicy.generation import HFGenerator, Sampling
from distill.onpolicy.prompts import left_pad

V = 256


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def _prompts():
    g = torch.Generator().manual_seed(1)
    ids, mask = left_pad([torch.randint(3, V, (n,), generator=g) for n in (5, 9, 2)], 0)
    return ids, mask


@pytest.mark.parametrize("new_tokens", [1, 12])
def test_static_cache_writes_the_same_greedy_tokens_as_the_dynamic_cache(model, new_tokens):
    ids, mask = _prompts()
    gen = HFGenerator()
    dynamic = gen(model, ids, mask, Sampling(max_new_tokens=new_tokens, greedy=True), None, 0)
    static = gen(model, ids, mask, Sampling(max_new_tokens=new_tokens, greedy=True, static_cache=True), None, 0)
    assert static.completion.shape == dynamic.completion.shape == (3, new_tokens)
    assert torch.equal(static.completion, dynamic.completion)
    assert torch.equal(static.completion_mask, dynamic.completion_mask)
    # with a stop token: rows end at it the same way
    stop = int(dynamic.completion[0, min(2, new_tokens - 1)])
    d = gen(model, ids, mask, Sampling(max_new_tokens=new_tokens, greedy=True), [stop], 0)
    s = gen(model, ids, mask, Sampling(max_new_tokens=new_tokens, greedy=True, static_cache=True), [stop], 0)
    assert torch.equal(s.completion, d.completion) and torch.equal(s.completion_mask, d.completion_mask)


def test_cache_settings_are_checked():
    assert Sampling(static_cache=True).cache == "static" and Sampling().cache is None
    assert Sampling(cache_implementation="static").cache == "static"
    with pytest.raises(ValueError, match="static_cache=true too"):
        Sampling(compile=True)
    with pytest.raises(ValueError, match="set one of them"):
        Sampling(static_cache=True, cache_implementation="offloaded")


@pytest.mark.slow  # inductor compiles the decoding step in C++ first (minutes on a loaded CPU)
def test_compiled_static_decoding_writes_the_same_greedy_tokens(model):
    ids, mask = _prompts()
    gen = HFGenerator()
    dynamic = gen(model, ids, mask, Sampling(max_new_tokens=6, greedy=True), None, 0)
    compiled = gen(model, ids, mask, Sampling(max_new_tokens=6, greedy=True, static_cache=True, compile=True), None, 0)
    assert torch.equal(compiled.completion, dynamic.completion)
