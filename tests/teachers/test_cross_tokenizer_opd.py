"""Cross-tokenizer OPD: teacher=cross_tokenizer fills ``sampled_logprobs`` for the student's own
tokens. The student's text is re-tokenized with the teacher's tokenizer, scored there and mapped
back by byte spans; on two real tokenizers (SmolLM2's and a byte-level BPE trained here) the
summed log-probs equal the teacher's log-likelihood of the text, computed directly."""

from __future__ import annotations


import pytest
import torch

from distill.models import ModelSpec
from distill.teachers.cross_tokenizer import CrossTokenizerTeacher, decode_bytes, span_offsets, token_bytes
from distill.teachers.hf import HFTeacher
from distill.types import Need

TEXT = ("def café(naïve):\n    return '中文' + \"🙂🚀\"   # émoji\n\n\n\t\tx  =   1\r\n"
        "    ß→∑ 日本語のテキスト  \n")


@pytest.fixture(scope="module")
def tokenizer_folders(tmp_path_factory, smollm2_folder):
    from distill.data.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    # trained on text with é and some CJK but no emoji: the emoji are cut into byte pieces
    corpus = ["def f(x):\n    return x  # café naïve\n", "中文 日本\n\tx = 1\n", "hello world  \n\n"] * 30
    train_bpe_tokenizer(corpus, 320, root / "bpe")
    return {"smollm2": smollm2_folder, "bpe": root / "bpe"}  # the converted folder: a plain HF folder


def _teacher(folders, side: str) -> CrossTokenizerTeacher:
    """A tiny random Llama with SmolLM2's vocabulary (hidden 16, one layer) behind teacher=cross_tokenizer;
    either tokenizer can be the teacher's (the BPE's ids fit in that vocabulary too)."""
    from distill.data.tokenizer import load_tokenizer

    other = "bpe" if side == "smollm2" else "smollm2"
    config = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
              "max_position_embeddings": 512}
    torch.manual_seed(0)
    teacher = CrossTokenizerTeacher(HFTeacher(ModelSpec(config=config, dtype="float32")), tokenizer=str(folders[side]))
    teacher.connect(load_tokenizer(str(folders[other])))
    teacher.load()
    return teacher


def _direct(teacher: CrossTokenizerTeacher, text: str) -> float:
    """The teacher's log-likelihood of ``text`` in its own tokens, from its full logits over its
    tokenizer's ids (its first token has no context, as in the teacher)."""
    tok = teacher._teacher_tokenizer()
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = teacher.teacher.causal_lm()(input_ids=ids).logits[0, :-1, :len(tok)].double()
    return float(logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).sum())


@pytest.mark.parametrize("teacher_side", ["smollm2", "bpe"])
def test_summed_student_token_scores_equal_the_teachers_log_likelihood(tokenizer_folders, teacher_side):
    teacher = _teacher(tokenizer_folders, teacher_side)
    s_tok, t_tok = teacher.student_tok, teacher._teacher_tokenizer()
    ids = s_tok(TEXT, add_special_tokens=False)["input_ids"]
    t_ids, s_off, t_off = span_offsets(s_tok, t_tok, ids)
    # the premise: the two sides cut the text differently (and the BPE splits the emoji)
    assert t_ids == t_tok(TEXT, add_special_tokens=False)["input_ids"] and len(t_ids) != len(ids)
    assert {e for _, e in s_off} != {e for _, e in t_off}
    assert s_off[-1][1] == t_off[-1][1] == len(TEXT.encode("utf-8"))
    (scores,) = teacher.span_scores([ids])
    assert scores.shape == (len(ids),) and scores.dtype == torch.float64
    assert abs(scores.sum().item() - _direct(teacher, TEXT)) < 1e-4
    assert (scores <= 0).all()


def test_batched_sampled_logprobs_follow_the_target_convention(tokenizer_folders):
    """Rows of a padded batch are scored apart; position t holds the score of the token at t + 1."""
    teacher = _teacher(tokenizer_folders, "smollm2")
    s_tok = teacher.student_tok
    a = s_tok(TEXT, add_special_tokens=False)["input_ids"]
    b = s_tok("x  =   '中文'\n\n", add_special_tokens=False)["input_ids"]
    length = len(a) + 2
    pad = s_tok.pad_token_id or 0
    # row 0 right-padded, row 1 left-padded: only the attention mask says where the text is
    ids = torch.tensor([a + [pad] * 2, [pad] * (length - len(b)) + b])
    mask = torch.tensor([[1] * len(a) + [0, 0], [0] * (length - len(b)) + [1] * len(b)])
    out = teacher({"input_ids": ids, "attention_mask": mask, "labels": ids}, frozenset({Need.TEACHER_SAMPLED_LOGPROB}))
    assert out.logits is None and out.sampled_logprobs.shape == ids.shape
    sa, sb = teacher.span_scores([a, b])
    got = out.sampled_logprobs.double()
    assert torch.allclose(got[0, :len(a) - 1], sa[1:], atol=1e-5)
    start = length - len(b)
    assert torch.allclose(got[1, start:-1], sb[1:], atol=1e-5)
    assert (got[0, len(a) - 1:] == 0).all() and (got[1, :start] == 0).all()
    # the whole row's text except its first token's (which has no target position)
    assert abs(got[1].sum().item() - (_direct(teacher, s_tok.decode(b)) - sb[0].item())) < 1e-4


def test_a_sample_ending_inside_a_character_is_scored_as_replacement_characters(tokenizer_folders):
    """A student may sample half a character: those bytes reach the teacher as U+FFFD, and the sum
    is still the teacher's log-likelihood of the text it scored."""
    teacher = _teacher(tokenizer_folders, "smollm2")
    s_tok = teacher.student_tok
    ids = s_tok("x = '🙂🚀'", add_special_tokens=False)["input_ids"]
    # the BPE never saw an emoji: it writes them as byte pieces, so some prefix ends inside one
    cut = next(k for k in range(len(ids), 0, -1) if decode_bytes(b"".join(token_bytes(s_tok, ids[:k])))[0].endswith("\ufffd"))
    text, ends = decode_bytes(b"".join(token_bytes(s_tok, ids[:cut])))
    assert ends[-1] == sum(map(len, token_bytes(s_tok, ids[:cut])))
    (scores,) = teacher.span_scores([ids[:cut]])
    assert abs(scores.sum().item() - _direct(teacher, text)) < 1e-4


def test_decode_bytes_keeps_each_characters_end_in_the_original_bytes():
    assert decode_bytes("aé中🙂".encode()) == ("aé中🙂", [1, 3, 6, 10])
    # a cut character and a stray continuation byte: one U+FFFD per invalid byte
    assert decode_bytes(b"a\xe4\xb8b\x80") == ("a\ufffd\ufffdb\ufffd", [1, 2, 3, 4, 5])
    assert decode_bytes(b"") == ("", [])
