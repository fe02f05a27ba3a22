"""Held-out distillation metrics on text for ``distill-eval``.

The per-batch math is :func:`distill.metrics.heldout_metrics` (the same function the training
module's validation step uses), so a number in the eval report and the same number logged during
training mean exactly the same thing. This module only feeds it: reads texts, tokenizes and packs
them with the student's tokenizer, runs student and teacher, shifts labels (HF-aligned batches:
the logits at position t predict token t+1), and accumulates sums.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from distill.data.corpus import jsonl_texts
from distill.structured import from_mapping

log = logging.getLogger(__name__)


@dataclass
class HeldoutSettings:
    """Keys of ``conf/eval/heldout/*.yaml``.

    Attributes:
        source: ``null`` (off), ``stdlib`` (the held-out split of the Python stdlib corpus that
            training validates on), or a path: ``.jsonl`` (field ``text_field``), a text file, or
            a folder (every ``*.py``/``*.txt`` in it).
        text_field: JSONL field with the text.
        max_length: tokens per packed sequence.
        batch_size: sequences per forward pass.
        max_tokens: stop after this many tokens of text (keeps CPU runs short).
        max_chars: characters read from the source before tokenizing.
    """

    source: str | None = None
    text_field: str = "text"
    max_length: int = 256
    batch_size: int = 4
    max_tokens: int = 16384
    max_chars: int = 400_000

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "HeldoutSettings":
        s = from_mapping(cls, cfg, "heldout")
        for key in ("max_length", "batch_size", "max_tokens", "max_chars"):
            if int(getattr(s, key)) < 2:
                raise ValueError(f"heldout.{key} must be >= 2, got {getattr(s, key)!r}")
        return s

    @property
    def enabled(self) -> bool:
        return bool(self.source)


def load_texts(settings: HeldoutSettings) -> list[str]:
    src = settings.source
    if src == "stdlib":
        from distill.data.corpus import read_stdlib_texts

        return read_stdlib_texts("val", max_chars=settings.max_chars)
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"heldout.source: {path} does not exist (or use 'stdlib')")
    texts: list[str] = []
    budget = settings.max_chars

    def add(text: str) -> bool:
        nonlocal budget
        texts.append(text[:budget])
        budget -= len(texts[-1])
        return budget > 0

    if path.is_dir():
        for f in sorted([*path.rglob("*.py"), *path.rglob("*.txt")]):
            if not add(f.read_text(encoding="utf-8", errors="replace")):
                break
    elif path.suffix == ".jsonl":
        for text in jsonl_texts(path, settings.text_field, "heldout.text_field"):
            if not add(text):
                break
    else:
        add(path.read_text(encoding="utf-8", errors="replace"))
    if not texts:
        raise ValueError(f"heldout.source: {path} holds no text")
    return texts


def pack_batches(texts: list[str], tokenizer, settings: HeldoutSettings):
    """Yield HF-aligned batches ``{input_ids, attention_mask, labels}`` of packed text."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= settings.max_tokens:
            break
    ids = ids[: settings.max_tokens]
    L = int(settings.max_length)
    blocks = [ids[i:i + L] for i in range(0, len(ids), L) if len(ids[i:i + L]) >= 2]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for b in range(0, len(blocks), settings.batch_size):
        chunk = blocks[b:b + settings.batch_size]
        width = max(len(x) for x in chunk)
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in chunk])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk])
        labels = input_ids.masked_fill(mask == 0, -100)
        yield {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def evaluate_heldout(student, tokenizer, texts: list[str], settings: HeldoutSettings,
                     teacher=None, device: str = "cpu") -> dict[str, float]:
    """Student loss/perplexity and, with a teacher on the same vocabulary, teacher loss, top-1
    agreement and KL(teacher || student) per token.

    Returns the means of :func:`distill.metrics.finalize` plus ``tokens``.
    """
    import torch

    from distill.metrics import accumulate, finalize, heldout_metrics

    total: dict[str, float] = {}
    teacher_device = None
    if teacher is not None:
        teacher_device = next(teacher.parameters()).device
    with torch.no_grad():
        for batch in pack_batches(texts, tokenizer, settings):
            ids = batch["input_ids"].to(device)
            mask = batch["attention_mask"].to(device)
            s_logits = student(input_ids=ids, attention_mask=mask).logits
            t_logits = None
            if teacher is not None:
                t_logits = teacher(input_ids=ids.to(teacher_device),
                                   attention_mask=mask.to(teacher_device)).logits.to(s_logits.device)
                if t_logits.shape[-1] != s_logits.shape[-1]:
                    v = min(t_logits.shape[-1], s_logits.shape[-1])
                    # padded embedding rows (vocab rounded up) carry no real tokens
                    t_logits, s_logits = t_logits[..., :v], s_logits[..., :v]
            targets = batch["labels"][:, 1:].to(s_logits.device)
            accumulate(total, heldout_metrics(
                s_logits[:, :-1], None if t_logits is None else t_logits[:, :-1], targets))
    if not total.get("tokens"):
        raise ValueError("heldout: no tokens to evaluate (texts too short for max_length?)")
    out = finalize(total)
    out["tokens"] = total["tokens"]
    return out
