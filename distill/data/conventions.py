"""Each model family's own token conventions, read off its tokenizer.

Two questions every path that builds token streams has to answer, and which ``eos_token`` alone
answers wrongly for instruct models:

* **Where does a document end?** Pretraining packs documents separated by an end-of-*text* token.
  An instruct model's ``eos_token`` is usually its end-of-*turn* token instead (SmolLM2-Instruct
  and Qwen2.5-Instruct: ``<|im_end|>``), while its pretraining separator is still in the vocabulary
  (``<|endoftext|>``). A document starts with BOS only where the tokenizer itself adds one (Gemma,
  Llama: ``<bos>`` / ``<s>``); SmolLM2's ``bos_token`` is ``<|im_start|>``, a chat marker that its
  tokenizer never adds to plain text.
* **Where does an assistant turn end?** At the token the chat template writes right after the
  answer (``<|im_end|>``, Gemma's ``<end_of_turn>``, Llama 3's ``<|eot_id|>``). What the template
  writes after that token (a newline) is formatting for the *next* turn: it is neither trained on
  nor generated.
"""

from __future__ import annotations

from dataclasses import dataclass

#: End-of-text tokens that families use between pretraining documents, in order of preference.
DOCUMENT_END_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")

_SENTINEL = "\u2063distill-answer\u2063"  # text no real answer contains: finds the answer inside a rendered turn


@dataclass(frozen=True)
class DocumentTokens:
    """Token ids that frame one document in a packed stream (None = that side gets nothing)."""

    bos_id: int | None
    eos_id: int | None


def _special(tokenizer) -> set[str]:
    names = set(getattr(tokenizer, "all_special_tokens", None) or [])
    names |= set(getattr(tokenizer, "added_tokens_encoder", None) or {})
    return names


def document_tokens(tokenizer) -> DocumentTokens:
    """The family's document framing: its end-of-text token (else ``eos``), and BOS only where the
    tokenizer adds BOS to plain text itself."""
    special = _special(tokenizer)
    eos_id = next((tokenizer.convert_tokens_to_ids(t) for t in DOCUMENT_END_TOKENS if t in special), None)
    if eos_id is None:
        eos_id = tokenizer.eos_token_id
    bos_id = tokenizer.bos_token_id
    if bos_id is not None:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        bos_id = bos_id if probe and probe[0] == bos_id else None
    return DocumentTokens(bos_id=bos_id, eos_id=eos_id)


def end_of_turn_id(tokenizer) -> int | None:
    """The token the chat template writes right after an assistant answer (None without a template
    that writes a special token there: such a turn ends at ``eos``)."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.eos_token_id
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that insists on its own roles: fall back to eos
        return tokenizer.eos_token_id
    after = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
    special = _special(tokenizer)
    for name in sorted(special, key=len, reverse=True):
        if after.lstrip(" ").startswith(name):
            return tokenizer.convert_tokens_to_ids(name)
    return tokenizer.eos_token_id


def stop_token_ids(tokenizer) -> list[int]:
    """Ids at which chat generation stops: the end-of-turn token, then ``eos`` if it differs."""
    ids = [end_of_turn_id(tokenizer), tokenizer.eos_token_id]
    return [i for n, i in enumerate(ids) if i is not None and i not in ids[:n]]
