"""The teacher interface: anything that turns a batch into a :class:`TeacherOutput`."""

from __future__ import annotations

import torch

from distill.types import ModelInfo
from distill.types import TeacherOutput
from distill.types import TeacherKind


class Teacher:
    """Base class. ``kind`` says which :class:`TeacherOutput` form it produces.

    Teachers are deliberately *not* ``nn.Module`` attributes of the training module: they are
    frozen, never in the optimizer and never in checkpoints.
    """

    kind: TeacherKind = TeacherKind.NONE
    #: True for a teacher that reads its own tokenization of the student's text and aligns it
    #: back to the student's positions (``teacher=cross_tokenizer``): it may have another vocabulary.
    aligns_tokenizers: bool = False

    def info(self) -> ModelInfo | None:
        """Shapes of the teacher model, from its config only (None when there is no model)."""
        return None

    @property
    def tokenizer(self) -> str | None:
        """Tokenizer id/folder, used to check vocabulary compatibility with the student."""
        return None

    def prepare(self, datamodule) -> None:
        """One-off work before training (e.g. build and cache the default teacher)."""

    def load(self, attn_implementation: str | None = None) -> None:
        """Load weights (lazily: called by the training module, never by config validation)."""

    def to(self, device: torch.device) -> "Teacher":
        return self

    def __call__(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        return TeacherOutput.none()


class NoTeacher(Teacher):
    """No teacher signal: the data itself was written by the teacher (sequence-level KD), or a
    CE-only baseline."""

    kind = TeacherKind.NONE
