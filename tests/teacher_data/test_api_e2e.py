"""End to end: local Messages server -> 24 answers -> filters -> chat pairs -> a tiny student trains."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distill.data.chat import ChatPairsSource
from distill.losses.functional import IGNORE_INDEX

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer_from(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    hf.chat_template = CHATML
    return hf


def collate(examples, pad_id):
    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), n), pad_id)
    labels = torch.full((len(examples), n), IGNORE_INDEX)
    attn = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[i, : len(e["labels"])] = torch.tensor(e["labels"])
        attn[i, : len(e["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def test_server_to_filtered_set(teacher_dataset):
    out, result, server = teacher_dataset
    gen, report = result["generation"], result["filter"]
    assert gen["done_now"] == 24 and gen["failed"] == 0
    assert report["input_records"] == 24 and report["kept"] >= 20
    assert sum(report["syntax"]["checked_blocks"].values()) >= 24
    filtered = [json.loads(x) for x in (out / "filtered.jsonl").read_text().splitlines()]
    assert len(filtered) == report["kept"]
    assert gen["cost"]["cost_usd"] == pytest.approx(
        sum(json.loads(x)["cost_usd"] for x in (out / "results.jsonl").read_text().splitlines()), abs=1e-6)


def test_tiny_student_trains_on_the_filtered_set_with_prompts_masked(teacher_dataset):
    out, _, _ = teacher_dataset
    path = out / "filtered.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    tok = tokenizer_from([r["prompt"] + r["completion"] for r in recs])
    src = ChatPairsSource(str(path), val_fraction=0.1, overlong="truncate")
    train, val = src.examples("train", tok, 1024), src.examples("val", tok, 1024)
    st = src.stats
    assert st["train"]["records"] + st["val"]["records"] == len(recs) and val
    assert len(train) + len(val) == st["train"]["kept"] + st["val"]["kept"] >= 20
    for e in train:  # every example: a masked prompt, then a trained answer
        n_prompt = e["labels"].index(next(x for x in e["labels"] if x != IGNORE_INDEX))
        assert n_prompt > 0 and all(x == IGNORE_INDEX for x in e["labels"][:n_prompt])
        end = len(e["labels"]) - next(i for i, x in enumerate(reversed(e["labels"])) if x != IGNORE_INDEX)
        assert e["labels"][n_prompt:end] == e["input_ids"][n_prompt:end]  # the answer through <|im_end|>...
        assert all(x == IGNORE_INDEX for x in e["labels"][end:])  # ...and not the template's newline after it

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=512, pad_token_id=tok.pad_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = collate(train[:8], tok.pad_token_id)
    losses = []
    for step in range(6):
        out_ = model(**batch)
        out_.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out_.loss.item())
    assert losses[-1] < losses[0]

    # Gradient w.r.t. the logits is exactly zero at every position whose target is a prompt token.
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits.retain_grad()
    model.loss_function(logits=logits, labels=batch["labels"], vocab_size=len(tok)).backward()
    no_target = batch["labels"][:, 1:] == IGNORE_INDEX  # logits[t] is scored against labels[t+1]
    g = logits.grad[:, :-1].abs().sum(-1)
    assert torch.all(g[no_target] == 0) and torch.all(g[~no_target] > 0)


def test_distill_train_runs_on_the_filtered_set(teacher_dataset, tiny_cfg, tmp_path):
    """The real training entry point: data=api_sft teacher=none loss=ce on the tiny debug student."""
    from distill import pipeline

    out, _, _ = teacher_dataset
    cfg = tiny_cfg("data=api_sft", "teacher=none", "loss=ce", f"data.source.path={out / 'filtered.jsonl'}",
                   "data.seq_len=256", "data.source.overlong=truncate", "data.source.val_fraction=0.1",
                   "trainer.max_steps=3", output_dir=tmp_path / "run")
    metrics = pipeline.run(cfg)
    assert metrics["val/loss"] > 0
    assert (tmp_path / "run" / "student").exists()
