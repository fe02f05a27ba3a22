"""Cross-tokenizer spans: a teacher's per-token log-probs mapped onto another tokenizer's tokens by
byte offsets, summing to the teacher's log-likelihood of the text; straddling tokens and split
UTF-8 characters by the documented rule; two real tokenizers (SmolLM2's and a trained byte-level BPE)."""


import pytest
import torch

from distill.data.byte_spans import attribute, char_to_byte_offsets, span_logprobs, token_byte_offsets

TEXT = ("def café(naïve):\n    return '中文' + \"🙂🚀\"   # émoji\n\n\n\t\tx  =   1\r\n"
        "    ß→∑ 日本語のテキスト  \n")


# ----------------------------------------------------------------------------- the rule, by hand
def test_char_offsets_become_byte_offsets_and_split_characters_keep_the_whole_character():
    text = "aé中🙂"  # 1 + 2 + 3 + 4 bytes
    assert char_to_byte_offsets(text, [(0, 1), (1, 2), (2, 3), (2, 3), (3, 4)]) == [(0, 1), (1, 3), (3, 6), (3, 6), (6, 10)]
    with pytest.raises(ValueError, match="outside the text"):
        char_to_byte_offsets(text, [(0, 5)])


def test_a_straddling_teacher_token_counts_where_it_ends():
    # bytes:      0..3 "abc", 3..6 "def"             (student: "ab" "cd" "ef")
    student = [(0, 2), (2, 4), (4, 6)]
    teacher = [(0, 3), (3, 6)]  # "abc" ends inside "cd"; "def" ends with "ef"
    lp = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    assert attribute(student, teacher).tolist() == [1, 2]
    assert span_logprobs(student, teacher, lp).tolist() == [0.0, -1.0, -2.0]
    # a teacher boundary at each student boundary: each student token gets exactly its own span's
    teacher = [(0, 1), (1, 2), (2, 4), (4, 5), (5, 6)]
    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0], dtype=torch.float64)
    assert span_logprobs(student, teacher, lp).tolist() == [-3.0, -3.0, -9.0]


def test_split_characters_on_either_side():
    text = "x中y"  # 中 is bytes 1..4
    # the student cut 中 into its 3 byte pieces (each reports the whole character); the teacher has it whole
    student = char_to_byte_offsets(text, [(0, 1), (1, 2), (1, 2), (1, 2), (2, 3)])
    teacher = char_to_byte_offsets(text, [(0, 1), (1, 2), (2, 3)])
    lp = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    # the character's log-prob goes on the piece that completes it, 0 on the others
    assert span_logprobs(student, teacher, lp).tolist() == [-1.0, 0.0, 0.0, -2.0, -3.0]
    # the other way round: the teacher's pieces are summed onto the student token that holds 中
    lp = torch.tensor([-1.0, -0.5, -0.25, -0.125, -3.0], dtype=torch.float64)
    assert span_logprobs(teacher, student, lp).tolist() == [-1.0, -0.875, -3.0]


def test_a_teacher_token_past_the_students_last_goes_to_the_last_and_the_sum_is_kept():
    student = [(0, 2), (2, 4)]
    teacher = [(0, 0), (0, 3), (3, 5), (5, 5)]  # a zero-width start token, text past the student's, an end token
    lp = torch.tensor([-0.5, -1.0, -2.0, -4.0], dtype=torch.float64, requires_grad=True)
    out = span_logprobs(student, teacher, lp)
    assert out.tolist() == [-0.5, -7.0]
    out.sum().backward()
    assert lp.grad.tolist() == [1.0, 1.0, 1.0, 1.0]  # differentiable: each teacher token counted once
    with pytest.raises(ValueError, match="teacher tokens"):
        span_logprobs(student, teacher, lp[:2])


# ----------------------------------------------------------------------------- two real tokenizers


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    from distill.data.tokenizer import train_bpe_tokenizer

    # trained on text that has é and some CJK but no emoji: those characters are cut into byte pieces
    corpus = ["def f(x):\n    return x  # café naïve\n", "中文 日本\n\tx = 1\n", "hello world  \n\n"] * 30
    return train_bpe_tokenizer(corpus, 320, tmp_path_factory.mktemp("bpe") / "bpe")


@pytest.fixture(scope="module")
def teacher_model(smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(config).eval()


def teacher_scores(model, ids: list[int], start_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of ``ids`` after a start token, and the log-likelihood computed directly
    (the model's own mean cross-entropy times the count)."""
    x = torch.tensor([[start_id] + ids])
    with torch.no_grad():
        out = model(input_ids=x, labels=x)
    lp = out.logits[0, :-1].double().log_softmax(-1).gather(-1, x[0, 1:, None])[:, 0]
    return lp, -out.loss.double() * len(ids)


def test_both_real_tokenizers_disagree_on_this_text(smollm2_tokenizer, bpe_tokenizer):
    """The premise of the next test: different cuts, a straddling token, split characters."""
    s_ids, s_off = token_byte_offsets(bpe_tokenizer, TEXT)
    t_ids, t_off = token_byte_offsets(smollm2_tokenizer, TEXT)
    assert s_off[-1][1] == t_off[-1][1] == len(TEXT.encode("utf-8"))
    s_ends, t_ends = {e for _, e in s_off}, {e for _, e in t_off}
    assert s_ends != t_ends and t_ends - s_ends and s_ends - t_ends
    assert len(s_off) != len(set(s_off))  # the BPE splits a character into pieces sharing its span
    straddles = [(a, b) for a, b in t_off if any(a < e < b for e in s_ends)]
    assert straddles, "some teacher token must straddle a student boundary"


@pytest.mark.parametrize("teacher_side", ["smollm2", "bpe"])
def test_summed_span_log_probs_equal_the_teachers_log_likelihood(smollm2_tokenizer, bpe_tokenizer, teacher_model,
                                                                 teacher_side):
    """A tiny random Llama with SmolLM2's vocabulary scores the text in the teacher's tokens (the
    BPE's ids fit in that vocabulary too, so either tokenizer can be the teacher's); mapped onto
    the other tokenizer's tokens, the log-probs add up to the log-likelihood computed directly."""
    tok_t, tok_s = (smollm2_tokenizer, bpe_tokenizer) if teacher_side == "smollm2" else (bpe_tokenizer, smollm2_tokenizer)
    t_ids, t_off = token_byte_offsets(tok_t, TEXT)
    _, s_off = token_byte_offsets(tok_s, TEXT)
    lp, direct = teacher_scores(teacher_model, t_ids, start_id=0)
    out = span_logprobs(s_off, t_off, lp)
    assert out.shape == (len(s_off),)
    assert abs(out.sum().item() - direct.item()) < 1e-4
    # per token: where both sides share the student token's start and end boundaries, the value is
    # exactly the teacher's log-prob of that token's bytes (the teacher tokens inside it); the
    # pieces of a split character before its last carry 0
    t_bounds = {0} | {e for _, e in t_off}
    prev_end, exact = 0, 0
    for i, (start, end) in enumerate(s_off):
        if i + 1 < len(s_off) and s_off[i + 1][1] == end:
            assert out[i].item() == 0.0
            continue
        if prev_end in t_bounds and end in t_bounds:
            inside = [j for j, (_, e) in enumerate(t_off) if prev_end < e <= end]
            assert abs(out[i].item() - lp[inside].sum().item()) < 1e-9
            exact += 1
        prev_end = end
    assert 0 < exact < len(s_off)
