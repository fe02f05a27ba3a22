"""The one ``LightningDataModule`` for causal-LM distillation.

It asks a *source* (see :mod:`distill.data.corpus`, :mod:`distill.data.chat`) for tokenized
examples, pads them into batches ``{input_ids, attention_mask, labels}`` and checks, before any
training, that there is enough data for at least one full optimizer step.

``batch_size`` is the **optimizer-step** batch; the module splits it into micro-batches itself
(``module.micro_batch_size``), which is what makes loss normalisation exact under accumulation.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from distill.losses.functional import IGNORE_INDEX

log = logging.getLogger(__name__)


class ExampleDataset(Dataset):
    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding gets ``attention_mask=0`` and label ``-100``."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.as_tensor(e["input_ids"])
        labels[i, :n] = torch.as_tensor(e["labels"])
        attn[i, :n] = 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


class DistillDataModule(L.LightningDataModule):
    """Batches from any source.

    Args:
        source: object with ``examples(split, tokenizer, max_length) -> list[dict]``.
        seq_len: maximum tokens per example.
        batch_size: examples per optimizer step.
        val_batch_size: examples per validation batch (defaults to ``batch_size``).
        max_val_examples: cap on held-out examples, to keep validation cheap.
        tokenizer: set later with :meth:`connect` (known only once the student is chosen).
    """

    def __init__(self, source, seq_len: int = 128, batch_size: int = 16, val_batch_size: int | None = None,
                 max_val_examples: int | None = 256, num_workers: int = 0, seed: int = 0, tokenizer=None):
        super().__init__()
        if seq_len < 2:
            raise ValueError(f"data.seq_len must be >= 2, got {seq_len}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.source, self.seq_len, self.batch_size = source, seq_len, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.max_val_examples, self.num_workers, self.seed = max_val_examples, num_workers, seed
        self.tokenizer = tokenizer
        self.train_set: ExampleDataset | None = None
        self.val_set: ExampleDataset | None = None

    def connect(self, tokenizer) -> "DistillDataModule":
        self.tokenizer = tokenizer
        return self

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.tokenizer is None:
            raise RuntimeError("DistillDataModule.setup: call connect(tokenizer) first")
        train = self.source.examples("train", self.tokenizer, self.seq_len)
        val = self.source.examples("val", self.tokenizer, self.seq_len)
        if self.max_val_examples is not None:
            val = val[: self.max_val_examples]
        name = type(self.source).__name__
        if len(train) < self.batch_size:
            raise ValueError(f"data: source {name} gave {len(train)} training examples of up to {self.seq_len} "
                             f"tokens, fewer than one batch (data.batch_size={self.batch_size}). Add data, "
                             "lower data.batch_size or data.seq_len.")
        if not val:
            raise ValueError(f"data: source {name} gave no held-out examples; add validation data or raise "
                             "its val_fraction")
        log.info("data: %d train / %d val examples of <= %d tokens from %s", len(train), len(val), self.seq_len, name)
        self.train_set, self.val_set = ExampleDataset(train), ExampleDataset(val)

    def _collate(self, examples):
        return collate(examples, self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=g,
                          collate_fn=self._collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False,
                          collate_fn=self._collate, num_workers=self.num_workers)
