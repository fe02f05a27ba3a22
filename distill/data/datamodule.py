"""The one ``LightningDataModule`` for causal-LM distillation.

It asks a *source* (see :mod:`distill.data.corpus`, :mod:`distill.data.chat`) for tokenized
examples, pads them into batches ``{input_ids, attention_mask, labels}`` and checks, before any
training, that there is enough data for at least one full optimizer step.

``batch_size`` is the **optimizer-step** batch; the module splits it into micro-batches itself
(``module.micro_batch_size``), which is what makes loss normalisation exact under accumulation.

Teachers that bring per-example data (an offline cache's rows) add a :class:`BatchHook` with
:meth:`DistillDataModule.add_hook`: the DataModule calls it for every example it serves and every
batch it collates, so no teacher ever replaces the DataModule's datasets or collate.
"""

from __future__ import annotations

import itertools
import logging
from typing import Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from distill.losses.functional import IGNORE_INDEX
from distill.data.heldout import HeldoutShards, Uncounted
from distill.data.resumable import ResumableLoader

log = logging.getLogger(__name__)


class BatchHook(Protocol):
    """Adds fields to the examples and batches a DataModule serves (the public seam for teachers).

    ``example`` sees each example of a split by its index (stable: the source's order) and returns
    it with extra fields; ``batch`` sees the examples of a batch and the padded batch the DataModule
    built from them, and returns the batch with the extra fields padded alongside. Both must leave
    ``input_ids``, ``attention_mask`` and ``labels`` as they are.
    """

    def example(self, split: str, index: int, example: dict) -> dict: ...

    def batch(self, examples: list[dict], batch: dict) -> dict: ...


class ExampleDataset(Dataset):
    """A split's tokenized examples; ``hooks`` add fields to each one as it is served."""

    def __init__(self, examples: list[dict], split: str = "train", hooks: list[BatchHook] | None = None):
        self.examples, self.split = examples, split
        self.hooks = hooks if hooks is not None else []

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        example = self.examples[i]
        for hook in self.hooks:
            example = hook.example(self.split, int(i), example)
        if isinstance(i, Uncounted):  # a rank's held-out padding (distill.data.heldout): no loss, no metric
            example = {**example, "labels": [IGNORE_INDEX] * len(example["labels"])}
        return example


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
        self.hooks: list[BatchHook] = []

    def connect(self, tokenizer) -> "DistillDataModule":
        self.tokenizer = tokenizer
        return self

    def add_hook(self, hook: BatchHook) -> None:
        """Have every served example and collated batch pass through ``hook`` (see :class:`BatchHook`)."""
        if hook not in self.hooks:
            self.hooks.append(hook)

    def examples(self, split: str) -> list[dict]:
        """The tokenized examples of ``split`` ("train" or "val"), as the source gave them (no hooks)."""
        self.setup("fit")
        return (self.train_set if split == "train" else self.val_set).examples

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
        self.train_set = ExampleDataset(train, "train", self.hooks)
        self.val_set = ExampleDataset(val, "val", self.hooks)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Pad ``examples`` into a batch, then let each hook add its fields."""
        batch = collate(examples, self.tokenizer.pad_token_id)
        for hook in self.hooks:
            batch = hook.batch(examples, batch)
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.train_set, self.collate)

    def _train_loader(self, dataset, collate_fn) -> DataLoader:
        # ResumableLoader serves DataLoader(shuffle=True)'s exact order and puts its position in the
        # checkpoint, so a run resumed mid-epoch continues with the batch it would have seen next.
        g = torch.Generator().manual_seed(self.seed)
        return ResumableLoader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=g,
                               collate_fn=collate_fn, num_workers=self.num_workers)

    def train_order(self, num_batches: int | None = None) -> list[list[int]]:
        """Example indices of the first ``num_batches`` training batches (one epoch when None), in
        the order a run's :meth:`train_dataloader` serves them, epoch after epoch (each epoch
        re-iterates the same loader, so it reshuffles with the same generator, as Lightning does).
        """
        self.setup("fit")
        # The real loader over a stand-in dataset of indices: creating a DataLoader iterator draws
        # a base seed from the generator first, so only the real loader gives the run's order.
        loader = self._train_loader(range(len(self.train_set)), list)
        order: list[list[int]] = []
        while True:
            before = len(order)
            # len(loader) batches, never the exhausted iterator: Lightning stops an epoch there, and
            # asking the sampler for more would draw from the generator and reshuffle the next epoch.
            for batch in itertools.islice(loader, len(loader)):
                order.append([int(i) for i in batch])
                if num_batches is not None and len(order) >= num_batches:
                    return order
            if num_batches is None or len(order) == before:
                return order

    def val_dataloader(self) -> DataLoader:
        sampler = None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # each held-out example counted once on some rank (Lightning's sampler would repeat some)
            kwargs = trainer.distributed_sampler_kwargs or {}
            sampler = HeldoutShards(self.val_set, num_replicas=kwargs.get("num_replicas", trainer.world_size),
                                    rank=kwargs.get("rank", trainer.global_rank))
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False, sampler=sampler,
                          collate_fn=self.collate, num_workers=self.num_workers)
