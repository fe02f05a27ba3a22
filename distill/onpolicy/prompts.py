"""The prompt part of each training example, and the training rows built from a prompt and a continuation.

* Chat / API-teacher data (:mod:`distill.data.chat`) masks its prompt: the leading positions with
  label ``-100``. That segment is the prompt (``mode="masked"``).
* A plain code corpus masks nothing: the first ``prompt_tokens`` tokens of the example are the
  prompt (``mode="prefix"``).
* ``mode="auto"`` (the default) decides per example: its masked segment when it has one, else
  its first ``prompt_tokens`` tokens.

The prompts go to the generator left-padded (so every row's last prompt token sits in the last
column and decoding appends in step); the rows go back to training right-padded, as the DataModule
pads, with the prompt's labels at ``-100`` and the continuation's (through its first stop token:
the end-of-turn token of a chat model) kept.

Chat prompt sets (MBPP, HumanEval, the API prompts) are data sources whose examples are exactly
such masked prompts (:mod:`distill.onpolicy.chat_prompts`): ``mode=auto`` takes the whole rendered
prompt, through the template's assistant header, as the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.losses.functional import IGNORE_INDEX

MODES = ("auto", "masked", "prefix")


@dataclass
class PromptSpec:
    """Which leading tokens of an example are its prompt.

    Args:
        mode: ``auto`` | ``masked`` | ``prefix`` (see the module docstring).
        prompt_tokens: prompt length for examples without a masked prompt (``prefix``, or ``auto``
            on unmasked data). An example shorter than this keeps its first half as the prompt.
    """

    mode: str = "auto"
    prompt_tokens: int = 64

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"sequences.prompts.mode must be one of {MODES}, got {self.mode!r}")
        if self.prompt_tokens < 1:
            raise ValueError(f"sequences.prompts.prompt_tokens must be >= 1, got {self.prompt_tokens}")

    def lengths(self, batch: dict) -> list[int]:
        """Prompt length of each row of a right-padded batch (at least 1 token, at most its length)."""
        labels, attn = batch["labels"], batch["attention_mask"]
        real = attn.sum(-1).tolist()
        kept = (labels != IGNORE_INDEX) & (attn != 0)
        # the masked segment: positions before the first kept label
        first_kept = torch.where(kept.any(-1), kept.long().argmax(-1), attn.sum(-1)).tolist()
        out = []
        for i, (n, masked) in enumerate(zip(real, first_kept)):
            if self.mode == "masked" and masked == 0:
                raise ValueError(f"sequences.prompts.mode=masked: example {i} of the batch has no masked prompt "
                                 "(every label is kept). Plain text / code data has none: use mode=prefix (or "
                                 "auto) with prompts.prompt_tokens")
            if self.mode != "prefix" and masked > 0:
                length = masked
            else:
                length = self.prompt_tokens if n > self.prompt_tokens else max(1, n // 2)
            out.append(max(1, min(int(length), int(n))))
        return out


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, both ``(B, max_len)``: each row right-aligned, padding (mask 0) on the left."""
    width = max(int(r.numel()) for r in rows)
    device = rows[0].device
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        n = int(r.numel())
        ids[i, width - n:] = r
        mask[i, width - n:] = 1
    return ids, mask


@dataclass
class Row:
    """One training row before padding: ``labels`` aligned with ``input_ids`` (``-100`` = no loss)."""

    input_ids: torch.Tensor
    labels: torch.Tensor


def data_row(batch: dict, i: int) -> Row:
    """Row ``i`` of a right-padded batch, without its padding."""
    n = int(batch["attention_mask"][i].sum())
    return Row(batch["input_ids"][i, :n], batch["labels"][i, :n])


def generated_row(prompt: torch.Tensor, completion: torch.Tensor, length: int) -> Row:
    """``prompt`` (label -100) followed by the first ``length`` generated tokens (their ids as labels).

    ``length`` counts through the first stop token: it carries loss (the student learns to end
    its turn), nothing after it is in the row at all.
    """
    kept = completion[:length]
    ids = torch.cat([prompt, kept])
    labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), kept])
    return Row(ids, labels)


def right_pad(rows: list[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch ``{input_ids, attention_mask, labels}`` as :func:`distill.data.datamodule.collate` pads."""
    width = max(int(r.input_ids.numel()) for r in rows)
    device = rows[0].input_ids.device
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long, device=device)
    attn = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        n = int(r.input_ids.numel())
        ids[i, :n], labels[i, :n], attn[i, :n] = r.input_ids, r.labels, 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}
