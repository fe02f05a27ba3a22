"""From a composed config to the objects a run needs, checks first and weights last.

:func:`build_checked` instantiates the cheap parts (model specs, teacher, loss, data, tokenizer)
and runs every check of :mod:`distill.validate` on them; no weights load. :func:`build_components`
then prepares the teacher (the default teacher is pretrained here once, then reused) and builds the
training module, which loads the student and teacher weights itself when Lightning calls its
``configure_model``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from distill.config import ConfigError, instantiate
from distill.data.datamodule import DistillDataModule
from distill.data.tokenizer import load_tokenizer
from distill.losses.combine import DistillationLoss
from distill.models import ModelSpec
from distill.module import DistillationModule
from distill.onpolicy.base import Sequences
from distill.teachers.base import Teacher
from distill.validate import check_loss, check_student_tokenizer, check_trainer, check_vocab

log = logging.getLogger(__name__)


@dataclass
class Checked:
    """The cheap, checked parts of a run (no weights loaded)."""

    student: ModelSpec
    teacher: Teacher
    loss: DistillationLoss
    datamodule: DistillDataModule
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int | None


@dataclass
class Components:
    """What ``fit`` needs; the module loads its weights in ``configure_model``."""

    tokenizer: PreTrainedTokenizerBase
    datamodule: DistillDataModule
    teacher: Teacher
    module: DistillationModule

    def load(self) -> "Components":
        """Load the student and teacher weights now, as Lightning does at the start of fit (for
        export, notebooks and tests that use the models outside a Trainer)."""
        self.module.configure_model()
        return self


def build_checked(cfg: DictConfig) -> Checked:
    """Instantiate the cheap parts and check them together. Loads tokenizers and configs only."""
    check_trainer(cfg)
    student: ModelSpec = instantiate(cfg.get("student"), "student")
    student.role = "student"
    teacher: Teacher = instantiate(cfg.get("teacher"), "teacher")
    if not isinstance(teacher, Teacher):
        raise ConfigError(f"teacher must build a distill.teachers.base.Teacher, got {type(teacher).__name__}")
    loss = instantiate(cfg.get("loss"), "loss")
    check_loss(loss, student, teacher)
    datamodule: DistillDataModule = instantiate(cfg.get("data"), "data")
    tokenizer = load_tokenizer(student.tokenizer, student.tokenizer_build, source=datamodule.source)
    student.tokenizer = tokenizer.name_or_path  # the folder actually loaded (trained ones are keyed)
    check_student_tokenizer(tokenizer, student)
    vocab = check_vocab(tokenizer, teacher, loss)
    return Checked(student, teacher, loss, datamodule.connect(tokenizer), tokenizer, vocab)


def build_components(cfg: DictConfig) -> Components:
    """Everything ``fit`` needs. Config checks run first; the teacher is prepared (pretrained once,
    or its cache checked against the data); the module is built without loading weights."""
    checked = build_checked(cfg)
    sequences = instantiate(cfg.sequences, "sequences") if cfg.get("sequences") else None
    if sequences is not None:
        if not isinstance(sequences, Sequences):
            raise ConfigError(f"sequences must build a distill.onpolicy.base.Sequences, got {type(sequences).__name__}")
        # before the teacher is prepared: a cached one cannot score new sequences
        sequences.check(checked.teacher, checked.loss)
        sequences.connect(checked.tokenizer)
    checked.teacher.prepare(checked.datamodule)
    checked.student.prepare(checked.datamodule)  # student=pruned cuts itself from the teacher on this data (no-op otherwise)
    module = instantiate(cfg.module, "module", student=checked.student, teacher=checked.teacher,
                         loss=checked.loss, vocab_size=checked.vocab_size,
                         **({"sequences": sequences} if sequences is not None else {}))
    if not isinstance(module, DistillationModule):
        raise ConfigError(f"module must build a distill.module.DistillationModule, got {type(module).__name__}")
    return Components(checked.tokenizer, checked.datamodule, checked.teacher, module)
