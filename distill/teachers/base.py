"""The teacher interface: anything that turns a batch into a :class:`TeacherOutput`, and says what it can do.

Code outside :mod:`distill.teachers` never asks which class a teacher is: on-policy sources, the
config checks and validation read the capabilities declared here (``kind``, ``members``,
``aligns_tokenizers``, ``spec``, ``can_generate`` / :meth:`Teacher.causal_lm`,
:meth:`Teacher.scoring_limit`, :meth:`Teacher.covers`, :meth:`Teacher.heldout_output`), and each
teacher kind answers them for itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from distill.types import Need, ModelInfo, TeacherKind, TeacherOutput

if TYPE_CHECKING:
    from distill.models import ModelSpec


class Teacher:
    """Base class. ``kind`` says which :class:`TeacherOutput` form it produces.

    Teachers are deliberately *not* ``nn.Module`` attributes of the training module: they are
    frozen, never in the optimizer and never in checkpoints.
    """

    kind: TeacherKind = TeacherKind.NONE
    #: True for a teacher that reads its own tokenization of the student's text and aligns it
    #: back to the student's positions (``teacher=cross_tokenizer``): it may have another vocabulary.
    aligns_tokenizers: bool = False
    #: The model this teacher runs, for the checks that read its config (attention kernel) and
    #: the provenance record; None when it runs none here (a cache, a server).
    spec: ModelSpec | None = None
    #: The teachers it combines, by name (an ensemble's members); empty for a single teacher.
    members: Mapping[str, Teacher] = MappingProxyType({})
    #: Whether :meth:`causal_lm` gives a local model to sample continuations from (SeqKD,
    #: speculative KD).
    can_generate: bool = False

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

    # ------------------------------------------------------------------ capabilities
    def scoring_limit(self) -> str | None:
        """Why this teacher cannot score sequences written during training (on-policy, SeqKD),
        as a message that names the fix; None when it can (it reads whatever ``input_ids`` hold)."""
        return None

    @property
    def scores_new_sequences(self) -> bool:
        return self.scoring_limit() is None

    def causal_lm(self) -> torch.nn.Module:
        """The loaded causal LM to sample continuations from (only where ``can_generate``)."""
        raise NotImplementedError(f"{type(self).__name__} has no local model to sample from (can_generate is False)")

    def covers(self, batch: dict) -> bool:
        """Whether this teacher has a signal for ``batch`` (a cache only for the examples it holds)."""
        return self.kind != TeacherKind.NONE

    def heldout_output(self, batch: dict) -> TeacherOutput:
        """What validation compares the student with on ``batch``: full logits or a sparse support
        on the student's vocabulary and positions, or :meth:`TeacherOutput.none` when this teacher
        has nothing comparable there (validation then reports the student's own metrics)."""
        if not self.covers(batch):
            return TeacherOutput.none()
        return self(batch, frozenset({Need.TEACHER_LOGITS}))


class NoTeacher(Teacher):
    """No teacher signal: the data itself was written by the teacher (sequence-level KD), or a
    CE-only baseline."""

    kind = TeacherKind.NONE

    def scoring_limit(self) -> str | None:
        return ("on-policy / SeqKD training needs a teacher to score the generated sequences, but teacher=none. "
                "Pick an online teacher (teacher=tiny_stdlib, teacher=hf ...).")
