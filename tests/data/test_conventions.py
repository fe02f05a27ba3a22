"""Token conventions on real tokenizers: document framing, end of turn, chat labels, held-out size."""

from __future__ import annotations


import pytest

from distill.data.chat import encode_pair
from distill.data.conventions import document_tokens, end_of_turn_id, stop_token_ids
from distill.data.corpus import TextFiles, held_out, pack
from distill.losses.functional import IGNORE_INDEX





def test_smollm2_documents_end_with_endoftext_not_the_end_of_turn(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.eos_token == "<|im_end|>"  # the instruct model's eos is its end of turn...
    framing = document_tokens(tok)
    assert tok.convert_ids_to_tokens(framing.eos_id) == "<|endoftext|>"  # ...its pretraining separator is this
    assert framing.bos_id is None  # bos_token is <|im_start|>, a chat marker its tokenizer never adds
    examples = pack([[5, 6], [7]], block=3, eos_id=framing.eos_id, bos_id=framing.bos_id)
    assert examples[0]["input_ids"] == [5, 6, framing.eos_id]


def test_smollm2_end_of_turn_and_chat_labels(smollm2_tokenizer):
    tok = smollm2_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tok) == im_end
    assert stop_token_ids(tok) == [im_end]
    ids, labels, templated = encode_pair(tok, "Write a function.", "def f():\n    return 1")
    assert templated
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert trained[-1] == im_end  # the answer's labels end at the end-of-turn token...
    assert labels[-1] == IGNORE_INDEX and tok.decode(ids[-1:]) == "\n"  # ...the template's newline is not trained
    prompt_len = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert tok.decode(ids[:prompt_len]).endswith("<|im_start|>assistant\n")  # the whole prompt is masked
    assert tok.decode(trained) == "def f():\n    return 1<|im_end|>"


def test_default_bpe_frames_as_before(tmp_path):
    from distill.data.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["def f(x):\n    return x\n"] * 50, 300, tmp_path / "bpe")
    framing = document_tokens(tok)
    assert framing.eos_id == tok.eos_token_id and framing.bos_id is None  # the embedded default is unchanged
    assert end_of_turn_id(tok) == tok.eos_token_id  # no template: a turn ends at eos


def test_a_tokenizer_that_adds_bos_frames_documents_with_it(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "a": 3, "b": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    framing = document_tokens(tok)
    assert (framing.bos_id, framing.eos_id) == (1, 2)  # Gemma / Llama style: <bos> text <eos>
    assert pack([[3, 4]], block=4, eos_id=2, bos_id=1)[0]["input_ids"] == [1, 3, 4, 2]


def test_held_out_split_is_enlarged_to_its_minimum_and_stays_a_superset():
    names = [str(i) for i in range(34)]
    plain = held_out(names, 0.05, min_docs=0)
    assert sum(plain) < 8
    enlarged = held_out(names, 0.05, min_docs=8)
    assert sum(enlarged) == 8
    assert all(e for p, e in zip(plain, enlarged) if p)  # every document of the plain split stays held out
    big = [str(i) for i in range(2000)]
    assert held_out(big, 0.05, 8) == held_out(big, 0.05, 0)  # a large corpus is split exactly as before


def test_too_few_documents_to_hold_out_is_refused_naming_the_key(tmp_path):
    for i in range(5):
        (tmp_path / f"m{i}.py").write_text(f"x = {i}\n")
    with pytest.raises(ValueError, match="min_val_docs"):
        TextFiles(str(tmp_path)).texts("val")
    assert len(TextFiles(str(tmp_path), min_val_docs=2).texts("val")) == 2
