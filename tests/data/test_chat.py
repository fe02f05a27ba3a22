"""Chat-formatted prompt/answer pairs: template and fallback, prompt masking, over-long handling."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distill.data.chat import FALLBACK_TEMPLATE, ChatPairsSource, encode_pair, format_prompt
from distill.losses.functional import IGNORE_INDEX

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
             "[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")


def tiny_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["def add(a, b):\n    return a + b\n", "Write a function that adds two numbers."] * 20,
                            trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    hf.chat_template = chat_template
    return hf


ANSWER = "```python\ndef add(a, b):\n    return a + b\n```"


def answer_text(tok, ids, labels):
    return tok.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX])


def test_chat_template_masks_exactly_the_prompt_and_trains_the_end_of_turn():
    tok = tiny_tokenizer(CHATML)
    ids, labels, templated = encode_pair(tok, "Write add", ANSWER, system="Be brief.")
    assert templated and len(ids) == len(labels)
    n_prompt = labels.index(next(l for l in labels if l != IGNORE_INDEX))
    n_answer = len(labels) - n_prompt - 1  # the template's "\n" after <|im_end|> belongs to the next turn
    assert all(l == IGNORE_INDEX for l in labels[:n_prompt]) and all(l != IGNORE_INDEX for l in labels[n_prompt:-1])
    assert tok.decode(ids[:n_prompt]) == format_prompt(tok, "Write add", "Be brief.")
    assert tok.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    assert answer_text(tok, ids, labels) == ANSWER + "<|im_end|>"  # the student learns to stop, and no further
    assert labels[n_prompt:n_prompt + n_answer] == ids[n_prompt:n_prompt + n_answer]
    assert labels[-1] == IGNORE_INDEX and tok.decode(ids[-1:]) == "\n"


def test_fallback_format_when_the_tokenizer_has_no_template():
    tok = tiny_tokenizer(None)
    ids, labels, templated = encode_pair(tok, "Write add", ANSWER)
    assert not templated
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    prompt = FALLBACK_TEMPLATE.format(system_block="", prompt="Write add")
    assert tok.decode([i for i, l in zip(ids, labels) if l == IGNORE_INDEX]) == "<s>" + prompt
    assert answer_text(tok, ids, labels) == ANSWER + "</s>"
    assert "### System:\nsys" in format_prompt(tok, "p", "sys")


def test_template_without_a_system_role_gets_the_system_text_merged():
    tok = tiny_tokenizer(NO_SYSTEM)
    ids, labels, templated = encode_pair(tok, "Write add", ANSWER, system="Be brief.")
    assert templated
    assert tok.decode([i for i, l in zip(ids, labels) if l == IGNORE_INDEX]) == "[user] Be brief.\n\nWrite add</s>[assistant] "


def write_pairs(path, n=20, long_every=None):
    with path.open("w") as f:
        for i in range(n):
            completion = ANSWER + f"\n# pair {i}" + (" word" * 300 if long_every and i % long_every == 0 else "")
            f.write(json.dumps({"prompt_id": f"p{i:03d}", "prompt": f"Write add number {i}", "completion": completion}) + "\n")


def test_split_is_by_prompt_deterministic_and_never_empty(tmp_path):
    write_pairs(tmp_path / "f.jsonl", 20)
    tok = tiny_tokenizer(CHATML)
    src = ChatPairsSource(str(tmp_path / "f.jsonl"), val_fraction=0.05, seed=0)
    train, val = src.examples("train", tok, 512), src.examples("val", tok, 512)
    assert len(train) + len(val) == 20 and len(val) >= 1
    ids_train = {r["prompt_id"] for r in src.split_records("train")}
    assert not ids_train & {r["prompt_id"] for r in src.split_records("val")}
    again = ChatPairsSource(str(tmp_path / "f.jsonl"), val_fraction=0.05, seed=0)
    assert {r["prompt_id"] for r in again.split_records("val")} == {r["prompt_id"] for r in src.split_records("val")}


@pytest.mark.parametrize("mode", ["drop", "truncate"])
def test_overlong_pairs_are_dropped_or_truncated_with_counts(tmp_path, mode):
    write_pairs(tmp_path / "f.jsonl", 20, long_every=4)  # 5 long pairs
    tok = tiny_tokenizer(CHATML)
    src = ChatPairsSource(str(tmp_path / "f.jsonl"), val_fraction=0.0, overlong=mode)
    ex = src.examples("train", tok, 96)
    st = src.stats["train"]
    assert all(len(e["input_ids"]) <= 96 and len(e["labels"]) == len(e["input_ids"]) for e in ex)
    if mode == "drop":
        assert st["dropped_overlong"] == 5 and st["kept"] == 15 and len(ex) == 15
    else:
        assert st["truncated"] == 5 and st["kept"] == 20
        assert all(any(l != IGNORE_INDEX for l in e["labels"]) for e in ex)
    # a prompt that alone fills max_length is dropped even when truncating
    src2 = ChatPairsSource(str(tmp_path / "f.jsonl"), val_fraction=0.0, overlong="truncate")
    assert src2.examples("train", tok, 12) == [] and src2.stats["train"]["dropped_prompt_too_long"] == 20


def test_bad_files_and_fields_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="run distill-teacher-data first"):
        ChatPairsSource(str(tmp_path / "nope.jsonl")).records()
    (tmp_path / "f.jsonl").write_text('{"question": "q", "completion": "a"}\n')
    with pytest.raises(KeyError, match=r"f.jsonl:1: field 'prompt' missing"):
        ChatPairsSource(str(tmp_path / "f.jsonl")).records()
    src = ChatPairsSource(str(tmp_path / "f.jsonl"), prompt_field="question", val_fraction=0.0)
    assert len(src.examples("train", tiny_tokenizer(), 64)) == 1
    with pytest.raises(ValueError, match="overlong must be"):
        ChatPairsSource(str(tmp_path / "f.jsonl"), overlong="wrap")


def test_prompt_tokens_carry_no_loss_and_answer_tokens_do(tmp_path):
    """The model's loss and its gradient ignore every prompt position, and only those."""
    torch.manual_seed(0)
    tok = tiny_tokenizer(CHATML)
    write_pairs(tmp_path / "f.jsonl", 4)
    ex = ChatPairsSource(str(tmp_path / "f.jsonl"), val_fraction=0.0).examples("train", tok, 256)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=256))
    ids = torch.tensor([ex[0]["input_ids"]])
    labels = torch.tensor([ex[0]["labels"]])
    n_prompt = int((labels[0] == IGNORE_INDEX).sum()) - 1  # the masked prompt; the last mask is the turn's "\n"
    assert labels[0, -1] == IGNORE_INDEX
    ids, labels = ids[:, :-1], labels[:, :-1]  # the answer through <|im_end|>

    out = model(input_ids=ids)
    logits = out.logits
    logits.retain_grad()
    loss = model.loss_function(logits=logits, labels=labels, vocab_size=len(tok))
    loss.backward()
    # logits at t predict token t+1: positions 0..n_prompt-2 predict prompt tokens -> no gradient
    assert torch.count_nonzero(logits.grad[0, : n_prompt - 1]) == 0
    assert torch.count_nonzero(logits.grad[0, n_prompt - 1:-1].abs().sum(-1)) == ids.shape[1] - n_prompt
    # per-token loss is exactly zero on prompt positions; the mean is over answer tokens only
    per_tok = torch.nn.functional.cross_entropy(logits[0, :-1].detach(), labels[0, 1:], reduction="none",
                                                ignore_index=IGNORE_INDEX)
    assert torch.all(per_tok[: n_prompt - 1] == 0)
    assert loss.item() == pytest.approx(per_tok[n_prompt - 1:].mean().item(), rel=1e-5)

    # whatever the model predicts at prompt positions, the loss is the same (to the bit)...
    with torch.no_grad():
        noisy = logits.detach().clone()
        noisy[0, : n_prompt - 1] += 100 * torch.randn_like(noisy[0, : n_prompt - 1])
        same = model.loss_function(logits=noisy, labels=labels, vocab_size=len(tok))
        assert torch.equal(same, loss.detach())
        # ...while a different answer token changes it
        changed = labels.clone()
        changed[0, -2] = (int(changed[0, -2]) + 1) % len(tok)
        diff = model.loss_function(logits=logits.detach(), labels=changed, vocab_size=len(tok))
        assert diff.item() != pytest.approx(loss.item(), rel=1e-6)
