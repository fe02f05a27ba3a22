"""Bits per byte: the per-id byte table against real tokenizers' text, the metric's arithmetic, and
``val/bpb`` of a config-built model against a float64 reference computed from its logits."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from distill import metrics as M
from distill.data.bytes_per_token import (BYTE_LEVEL, PROBE_TEXT, SENTENCEPIECE, byte_lengths, checked_byte_lengths,
                                          scheme)

# plain text of every kind: ASCII code, whitespace runs, tabs, CRLF, accents, CJK, emoji, symbols
TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "  two  leading spaces,\tthen a tab\n\n\n   and blank lines   ",
    "café naïve Ünïcödé — “quotes” 中文 日本語 한국어 🙂🚀 \r\n end",
    "x" * 40 + " " * 9 + "\u00a0nbsp\u2003em-space",
    PROBE_TEXT,
]


def _table_sum(tok, text: str) -> int:
    table = checked_byte_lengths(tok)
    assert table is not None
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return int(table[torch.tensor(ids, dtype=torch.long)].sum())


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from distill.data.tokenizer import train_bpe_tokenizer

    corpus = ["def f(x):\n    return x  # café naïve\n", "中文 日本\n\tx = 1\n", "hello world  \n\n"] * 30
    return train_bpe_tokenizer(corpus, 320, tmp_path_factory.mktemp("bpe") / "bpe")


def sentencepiece_style(prepend: str = "never"):
    """A Gemma / Llama-2 stand-in: a Unigram over ``▁`` pieces with ``<0xNN>`` byte fallback, built
    with the ``tokenizers`` library. ``prepend="first"``: Llama 2's dummy-prefix space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["▁def", "▁return", "▁the", "▁and", "▁a", "def", "return", "▁▁", "▁▁▁▁", "ca", "na", "▁end", "中文"]
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789()+,:.#=—“”-!\n\t\r▁"))
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(f"<0x{b:02X}>", -20.0) for b in range(256)]
    vocab += [(w, -2.0) for w in words] + [(c, -5.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prepend != "never":
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_byte_level_bpe_counts_every_byte_of_the_text(bpe):
    assert scheme(bpe) == BYTE_LEVEL
    for text in TEXTS:  # the emoji and Korean are not in its training text: cut into byte pieces
        assert _table_sum(bpe, text) == len(text.encode("utf-8")), text
    table = byte_lengths(bpe)
    assert all(table[i] == 0 for i in bpe.all_special_ids), "special tokens count no bytes"
    assert table.numel() == len(bpe)


def test_sentencepiece_style_counts_metaspace_and_byte_fallback():
    tok = sentencepiece_style()
    assert scheme(tok) == SENTENCEPIECE
    for text in TEXTS:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte fallback: lossless
        assert _table_sum(tok, text) == len(text.encode("utf-8")), text
    table = byte_lengths(tok)
    vocab = tok.get_vocab()
    assert table[vocab["<0xE4>"]] == 1 and table[vocab["▁▁▁▁"]] == 4 and table[vocab["中文"]] == 6
    assert table[vocab["<s>"]] == table[vocab["</s>"]] == table[vocab["<unk>"]] == 0


def test_a_dummy_prefix_space_is_counted_and_said(caplog):
    tok = sentencepiece_style(prepend="first")  # Llama 2: "▁" in front of every text
    with caplog.at_level(logging.WARNING):
        assert _table_sum(tok, "def f") == len("def f") + 1
    assert "prepends a space" in caplog.text


def test_smollm2_tokenizer_counts_every_byte(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert scheme(tok) == BYTE_LEVEL
    for text in TEXTS:
        assert _table_sum(tok, text) == len(text.encode("utf-8")), text
    table = byte_lengths(tok)
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert table[tok.convert_tokens_to_ids(marker)] == 0


def test_an_underivable_mapping_reports_no_bpb_and_says_why(caplog):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "def": 1, "f": 2, "##x": 3}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
    with caplog.at_level(logging.WARNING):
        assert checked_byte_lengths(tok) is None
    assert "val/bpb is not reported" in caplog.text
    # no byte fallback: the emoji becomes <unk>, the probe text miscounts
    from tokenizers import decoders

    plain = Tokenizer(models.Unigram([("<unk>", 0.0)] + [(c, -1.0) for c in "abcdef▁"], unk_id=0))
    plain.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    plain.decoder = decoders.Metaspace(prepend_scheme="never")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert checked_byte_lengths(PreTrainedTokenizerFast(tokenizer_object=plain, unk_token="<unk>")) is None
    assert "miscount" in caplog.text


def test_finalize_adds_bpb_without_changing_the_other_numbers():
    torch.manual_seed(0)
    logits, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    targets = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 10]])
    table = torch.arange(11) % 4  # id 0, 4, 8 count 0 bytes, as special tokens do
    sums = M.heldout_metrics(logits, teacher, targets)
    before = M.finalize(dict(sums))
    total = M.accumulate(dict(sums), M.byte_sums(table, targets))
    after = M.finalize(total)
    assert {k: after[k] for k in before} == before, "loss, ppl, teacher, agreement, kl: unchanged"
    n_bytes = float(table[targets.clamp_min(0)][targets != -100].sum())
    assert total["bytes"] == n_bytes == 1 + 2 + 3 + 0 + 1 + 2 + 3 + 2
    assert after["bpb"] == pytest.approx(sums["student_ce"] / math.log(2) / n_bytes, rel=1e-12)
    assert after["teacher_bpb"] == pytest.approx(sums["teacher_ce"] / math.log(2) / n_bytes, rel=1e-12)
    # a batch without bytes (no table, an id outside it): no bpb at all, never one over part of the text
    partial = M.accumulate(dict(total), M.accumulate(M.heldout_metrics(logits, None, targets),
                                                     M.byte_sums(None, targets)))
    assert "bpb" not in M.finalize(partial)
    assert M.byte_sums(table[:5], targets) == {}


def test_val_bpb_of_a_config_built_model_equals_a_float64_reference(tiny_cfg, tmp_path):
    """A prompt-masked known text ending in EOS through Lightning's validation loop; the reference
    takes its bytes from the text itself, not from the table."""
    import lightning as L

    from distill.build import build_components

    parts = build_components(tiny_cfg()).load()  # debug=tiny: a random teacher on the same tokenizer
    tok, module = parts.tokenizer, parts.module
    prompt, body = "# a prompt, masked:\n", "def hello(x):\n    return 'héllo 中文 🙂'  \n\tpass"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    b_ids = tok(body, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    cut = len(p_ids) + 3  # row 1: the prompt and the body's first 3 tokens, then padding
    ids = torch.tensor([p_ids + b_ids, (p_ids + b_ids)[:cut] + [tok.pad_token_id] * (len(p_ids) + len(b_ids) - cut)])
    attention = (torch.arange(ids.shape[1]) < torch.tensor([[ids.shape[1]], [cut]])).long()
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, : len(p_ids)] = -100  # the prompt, as a chat source masks it
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}

    class KnownText(L.LightningDataModule):
        tokenizer = tok

        def val_dataloader(self):
            return torch.utils.data.DataLoader([batch], batch_size=None)

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    logged = trainer.validate(module, datamodule=KnownText(), verbose=False)[0]

    with torch.no_grad():
        logits = module.student(input_ids=ids, attention_mask=attention).logits.double()
    targets = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], 1)
    mask = targets != -100
    nll = -torch.log_softmax(logits, -1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    # scored: the body and EOS of row 0 (0 bytes), and row 1's body tokens before its padding
    row1 = tok.decode(ids[1, len(p_ids):cut].tolist())
    n_bytes = len(body.encode("utf-8")) + len(row1.encode("utf-8"))
    assert row1 and body.startswith(row1)
    reference = float(nll[mask].sum() / math.log(2) / n_bytes)
    assert logged["val/bpb"] == pytest.approx(reference, rel=1e-5)
    assert logged["val/loss"] == pytest.approx(float(nll[mask].mean()), rel=1e-5)
    # the teacher's CE over the same bytes (its per-token mean is val/teacher_loss)
    teacher_nats = logged["val/teacher_loss"] * float(mask.sum())
    assert logged["val/teacher_bpb"] == pytest.approx(teacher_nats / math.log(2) / n_bytes, rel=1e-5)
