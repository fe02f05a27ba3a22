"""Teacher log-probs on the student's tokens, across tokenizers, through byte spans.

Cross-tokenizer on-policy distillation (``loss=opd`` with a teacher whose tokenizer differs) needs,
for every token the student sampled, the teacher's log-probability of *that token's bytes*. The
student's text is re-tokenized with the teacher's tokenizer and scored there; the teacher's
per-token log-probs are then mapped back onto the student's tokens here.

**The rule.** Each token is reduced to the byte where it ends. A teacher token is attributed to
the student token in which it ends: the first student token whose end byte is at or past the
teacher token's end (the last of several when they share that end, as the byte pieces of one
split character do). So a teacher token that straddles two student tokens is counted, whole, at
the second; student token ``i`` carries the log-probs of the teacher tokens that end inside it::

    out[i] = sum_{j : student_end[i-1] < teacher_end[j] <= student_end[i]} teacher_logprobs[j]

Every teacher token goes to exactly one student token (a teacher token ending after the student's
last one, e.g. a trailing special token, goes to the last), so ``sum(out)`` is the teacher's
log-likelihood of the text, whatever the two tokenizations. And ``out[i]`` depends only on bytes
the student has produced by the end of token ``i``: a per-token reward stays causal. Where both
tokenizers have a boundary at the start and at the end of a student token, ``out[i]`` is exactly
the teacher's log-prob of that token's bytes given the text before it; elsewhere it is the
teacher's log-prob of the bytes from the previous shared boundary to the end of the last teacher
token inside ``i`` (GOLD, in TRL, merges straddling spans the same way, on probabilities).

**Split characters.** Tokenizers report character offsets. A byte-level BPE may cut one multi-byte
character (``中`` = 3 bytes, an emoji = 4) into several tokens; each piece then reports the whole
character's span. Here every piece ends at the character's last byte: no token of either side can
end inside a character, so the pieces of the student's split character carry the character's
teacher log-prob on the last piece (0 on the others), and a teacher's pieces are summed onto the
student token that completes the character.

Only the end bytes are read, so offsets that leave gaps (tokenizers that trim whitespace from
their offsets) shift where a teacher token is counted inside the gap, never whether it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def char_to_byte_offsets(text: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character offsets ``[(start, end)]`` into ``text`` as UTF-8 byte offsets.

    A token holding part of a multi-byte character reports the whole character (see the module
    docstring), so its byte span is the whole character's too.
    """
    cum = [0]
    for ch in text:
        cum.append(cum[-1] + len(ch.encode("utf-8")))
    n = len(text)
    out = []
    for start, end in offsets:
        if not (0 <= start <= end <= n):
            raise ValueError(f"offset ({start}, {end}) is outside the text ({n} characters)")
        out.append((cum[start], cum[end]))
    return out


def token_byte_offsets(tokenizer, text: str, add_special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """``(ids, byte_offsets)`` of ``text`` under a fast tokenizer, from ``return_offsets_mapping``."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    return list(enc["input_ids"]), char_to_byte_offsets(text, [tuple(o) for o in enc["offset_mapping"]])


def _ends(offsets) -> torch.Tensor:
    ends = torch.as_tensor([int(e) for _, e in offsets], dtype=torch.long).reshape(-1)
    # non-decreasing, so a token reported shorter than the one before it (a zero-width special
    # token, a trimmed offset) is taken to end where the text so far ends
    return ends.cummax(0).values if ends.numel() else ends


def attribute(student_offsets: Sequence[tuple[int, int]], teacher_offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """For each teacher token, the index of the student token it is counted at, ``(T,)`` long.

    Args:
        student_offsets, teacher_offsets: byte spans ``[(start, end)]`` of each side's tokens over
            the same text, in token order (:func:`token_byte_offsets`).
    """
    s_end, t_end = _ends(student_offsets), _ends(teacher_offsets)
    if s_end.numel() == 0:
        raise ValueError("the student has no tokens to attribute the teacher's log-probs to")
    first = torch.searchsorted(s_end, t_end, side="left").clamp_max(s_end.numel() - 1)
    # the last student token sharing that end: the one that completes a split character
    return torch.searchsorted(s_end, s_end[first], side="right") - 1


def span_logprobs(student_offsets: Sequence[tuple[int, int]], teacher_offsets: Sequence[tuple[int, int]],
                  teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """The teacher's log-prob of each student token's byte span, ``(S,)``, by the module's rule.

    Args:
        student_offsets: ``S`` byte spans of the student's tokens.
        teacher_offsets: ``T`` byte spans of the teacher's tokens of the same text.
        teacher_logprobs: ``(T,)`` ``log p(teacher token j | teacher tokens < j)`` (any float
            dtype; differentiable, the sum is an ``index_add``).

    Returns:
        ``(S,)`` in ``teacher_logprobs``' dtype; its sum equals ``teacher_logprobs.sum()``.
    """
    if teacher_logprobs.shape != (len(teacher_offsets),):
        raise ValueError(f"teacher_logprobs has shape {tuple(teacher_logprobs.shape)}, but there are "
                         f"{len(teacher_offsets)} teacher tokens")
    idx = attribute(student_offsets, teacher_offsets).to(teacher_logprobs.device)
    out = torch.zeros(len(student_offsets), dtype=teacher_logprobs.dtype, device=teacher_logprobs.device)
    return out.index_add(0, idx, teacher_logprobs)
