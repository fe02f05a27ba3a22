"""Bytes per token: the UTF-8 byte length of every vocabulary id, for bits per byte.

Per-token losses (``val/loss``) of models with different tokenizers are not comparable: one
tokenizer cuts the same text into fewer, harder tokens. Bits per byte is::

    bpb = sum over scored tokens of CE (nats) / ln 2 / sum of the UTF-8 byte lengths of those tokens

and depends on the text only. Validation needs the byte length of each scored *target* id, so
:func:`byte_lengths` builds one ``(V,)`` table per tokenizer, from the tokenizer's own byte mapping,
and a step costs one gather (``table[targets]``) instead of a decode:

* **byte-level BPE** (GPT-2, SmolLM2, Qwen, Llama 3, the project's trained BPE): every character of
  a token string stands for one byte through the GPT-2 byte alphabet, so a token is
  ``len(token)`` bytes (a piece of a split multi-byte character is its own share of the bytes);
* **SentencePiece-style** (Gemma, Llama 2, Mistral: a ``▁`` metaspace and ``<0xNN>`` byte
  fallback): ``<0xNN>`` is one byte, any other piece ``len(piece.replace('▁', ' ').encode())``;
* **added tokens that are not special** (user-added words) are raw text: ``len(content.encode())``.

**Special tokens count 0 bytes** (BOS, EOS, pad, unk, chat markers such as ``<|im_end|>``). bpb
then measures the *text*: the bytes are the text's own, the same for every tokenizer, while a target
that is a special token still adds its nats to the numerator (a model that cannot predict where a
document or turn ends pays for it, in bits per byte of the text around it).

**Checked, or not used.** A mapping is only trusted after :func:`checked_byte_lengths` tokenized a
probe text (ASCII, whitespace runs, tabs, CRLF, accents, CJK, an emoji) and the table's sum over its
ids equalled the text's UTF-8 length. A tokenizer whose mapping cannot be derived (WordPiece drops
spaces; a vocabulary without byte fallback maps an emoji to ``<unk>``; a normaliser that collapses
whitespace) gets None and a logged warning: validation then reports no ``bpb`` rather than a wrong
one. One deviation is accepted with a warning: a tokenizer that prepends a space to every text (Llama
2's legacy dummy prefix, ``Metaspace(prepend_scheme="always"/"first")``) counts that ``▁`` as the one
byte it decodes to: one byte more per tokenized document than the text has.
"""

from __future__ import annotations

import json
import logging
import re

import torch

log = logging.getLogger(__name__)

BYTE_LEVEL, SENTENCEPIECE = "byte_level", "sentencepiece"
METASPACE = "\u2581"  # ▁
_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")

#: What the table is checked on: every kind of text a held-out set of code and prose holds.
PROBE_TEXT = ("def f(x):\n    return x  # two  spaces,\ttab\n\n\tcafé naïve Ünïcödé, 中文 日本語, emoji 🙂🚀!\r\n"
              "   leading and trailing   \nEnd.")


class ByteMappingError(ValueError):
    """The tokenizer's ids cannot be mapped onto byte lengths (the message says why)."""


def _types(node) -> list[dict]:
    """A serialised normaliser / pre-tokenizer / decoder and, for a ``Sequence``, its members."""
    if not isinstance(node, dict):
        return []
    members = node.get("decoders") or node.get("pretokenizers") or node.get("normalizers") or []
    return [node] + [m for child in members for m in _types(child)]


def scheme(tokenizer) -> str:
    """``byte_level`` or ``sentencepiece``: how the tokenizer's strings map onto bytes, read off its
    decoder and pre-tokenizer (a slow SentencePiece tokenizer: its ``sp_model``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        if hasattr(tokenizer, "sp_model"):
            return SENTENCEPIECE
        if hasattr(tokenizer, "byte_encoder"):
            return BYTE_LEVEL
        raise ByteMappingError(f"{type(tokenizer).__name__} is neither a fast tokenizer nor a SentencePiece / "
                               "byte-level one: its byte mapping is unknown")
    spec = json.loads(backend.to_str())
    parts = _types(spec.get("decoder")) + _types(spec.get("pre_tokenizer"))
    kinds = {p.get("type") for p in parts}
    if "ByteLevel" in kinds:
        return BYTE_LEVEL
    replaces_metaspace = any(p.get("type") == "Replace" and METASPACE in json.dumps(p.get("pattern"), ensure_ascii=False)
                             for p in parts)
    if kinds & {"Metaspace", "ByteFallback"} or replaces_metaspace:
        return SENTENCEPIECE
    raise ByteMappingError(f"decoder/pre-tokenizer {sorted(k for k in kinds if k)} is neither byte-level nor "
                           "SentencePiece-style (WordPiece drops the spaces, for one): its byte mapping is unknown")


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for i, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    return ids


def byte_lengths(tokenizer) -> torch.Tensor:
    """``(V,)`` int64: the UTF-8 bytes each id stands for (0 for special tokens); unchecked (see
    :func:`checked_byte_lengths`).

    Raises:
        ByteMappingError: the scheme is unknown, or a vocabulary string is not made of the byte
            alphabet it should be.
    """
    kind = scheme(tokenizer)
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    table = torch.zeros(size, dtype=torch.long)
    special = _special_ids(tokenizer)
    added = {int(i): t for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
    alphabet = None
    if kind == BYTE_LEVEL:
        from tokenizers import pre_tokenizers

        alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    for token, i in vocab.items():
        if i in special:
            continue
        if i in added:  # raw text, matched before the model runs: never byte-level-encoded
            table[i] = len(str(getattr(added[i], "content", token)).encode("utf-8"))
        elif kind == BYTE_LEVEL:
            if not set(token) <= alphabet:
                raise ByteMappingError(f"token {i} {token!r} has characters outside the byte-level alphabet")
            table[i] = len(token)
        elif _BYTE_FALLBACK.match(token):
            table[i] = 1
        else:
            table[i] = len(token.replace(METASPACE, " ").encode("utf-8"))
    return table


def prefix_bytes(tokenizer, table: torch.Tensor) -> int:
    """Bytes a tokenizer adds in front of every text (the SentencePiece dummy-prefix space): the
    table's sum over ``"a"`` minus 1."""
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    return int(table[torch.as_tensor(ids, dtype=torch.long)].sum()) - 1


def check(tokenizer, table: torch.Tensor, text: str = PROBE_TEXT) -> str | None:
    """Why ``table`` miscounts ``text`` under ``tokenizer`` (None: it counts every byte)."""
    ids = torch.as_tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() and int(ids.max()) >= table.numel():
        return f"id {int(ids.max())} is outside the {table.numel()}-entry table"
    counted, wanted = int(table[ids].sum()), len(text.encode("utf-8")) + prefix_bytes(tokenizer, table)
    if counted != wanted:
        return f"the table counts {counted} bytes in a probe text of {wanted}"
    return None


def checked_byte_lengths(tokenizer) -> torch.Tensor | None:
    """:func:`byte_lengths`, trusted only after :func:`check` on :data:`PROBE_TEXT`; None, with a
    logged warning, when the mapping cannot be derived or miscounts (bpb is then not reported)."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    try:
        table = byte_lengths(tokenizer)
    except ByteMappingError as e:
        log.warning("val/bpb is not reported: no byte length per token for tokenizer %s (%s)", name, e)
        return None
    problem = check(tokenizer, table)
    if problem is not None:
        log.warning("val/bpb is not reported: the byte lengths derived for tokenizer %s miscount text (%s; "
                    "a normaliser that rewrites text, or <unk> without byte fallback)", name, problem)
        return None
    extra = prefix_bytes(tokenizer, table)
    if extra:
        log.warning("tokenizer %s prepends a space to every text; val/bpb counts it: %d byte(s) more per "
                    "tokenized document than the text holds", name, extra)
    return table
