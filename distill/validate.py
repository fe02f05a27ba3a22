"""Checks on a composed config and its cheap parts, before any weights load.

Each check raises a :class:`~distill.config.ConfigError` that names the config key (or file) at
fault and says what would fix it, so a bad sweep point fails in a second instead of after a model
download. :mod:`distill.build` runs them in order; nothing here instantiates anything.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from distill.config import ConfigError
from distill.data.tokenizer import load_tokenizer, same_vocabulary
from distill.losses.combine import DistillationLoss
from distill.models import ModelSpec
from distill.teachers.base import Teacher
from distill.types import Need, TeacherKind

log = logging.getLogger(__name__)

FLASH = ("flash_attention_2", "flash_attention_3", "sdpa")


def check_trainer(cfg: DictConfig) -> None:
    """Trainer settings that conflict with the module's manual, token-exact accumulation."""
    acc = cfg.trainer.get("accumulate_grad_batches", 1)
    if acc not in (None, 1):
        raise ConfigError(
            f"trainer.accumulate_grad_batches={acc}: distill accumulates itself so that the loss is normalised "
            "by the tokens of the whole step. Set data.batch_size to the step batch and "
            "module.micro_batch_size to the per-forward size instead.")
    if cfg.trainer.get("gradient_clip_val"):
        raise ConfigError("trainer.gradient_clip_val: use module.grad_clip (the module clips itself)")
    mbs = cfg.module.get("micro_batch_size")
    if mbs is not None and mbs > cfg.data.batch_size:
        raise ConfigError(f"module.micro_batch_size={mbs} is larger than data.batch_size={cfg.data.batch_size}")


def check_vocab(student_tok, teacher: Teacher, loss: DistillationLoss) -> int | None:
    """Logit losses compare distributions id by id, so both models must share one tokenizer.

    The teacher's *own* tokenizer is compared (its ``tokenizer`` setting, which defaults to the
    folder or hub id it loads from), so a teacher folder whose ids differ from the student's is
    refused even when its vocabulary has the same size. Components that declare
    ``shared_vocabulary = False`` (ULD, which compares sorted probability vectors) need no shared
    vocabulary.

    Returns the number of ids to compare (the tokenizer's size): models whose embedding matrices are
    padded to different sizes (e.g. Qwen2.5 0.5B 151,936 vs 7B 152,064 rows) line up on those ids.
    None when the tokenizers differ and no component needs them to agree.
    """
    logit_users = sorted(name for name, c in loss.components.items()
                         if Need.TEACHER_LOGITS in c.needs and getattr(c, "shared_vocabulary", True))
    if teacher.kind == TeacherKind.NONE or not logit_users and teacher.kind != TeacherKind.FULL:
        return len(student_tok)
    size = len(student_tok)
    if teacher.tokenizer and teacher.tokenizer != getattr(student_tok, "name_or_path", None):
        teacher_tok = load_tokenizer(teacher.tokenizer, key="teacher.model.tokenizer / teacher.model.name_or_path")
        if not same_vocabulary(teacher_tok, student_tok):
            if not logit_users and not teacher.aligns_tokenizers:
                raise ConfigError(
                    f"teacher tokenizer {teacher.tokenizer!r} differs from the student's {student_tok.name_or_path!r}, "
                    "and this teacher reads the student's token ids as its own. A cross-tokenizer loss (ULD) needs "
                    "the teacher to tokenize the text itself: use teacher=cross_tokenizer.")
            if logit_users:
                # The recipe that works for the common case (a fresh small student next to a real
                # teacher) comes first, with the values filled in: the user can paste it.
                info = teacher.info()
                rows = info.vocab_size if info is not None else len(teacher_tok)
                raise ConfigError(
                    f"teacher tokenizer {teacher.tokenizer!r} ({len(teacher_tok)} tokens) differs from the student's "
                    f"{student_tok.name_or_path!r} ({len(student_tok)} tokens): the loss components {logit_users} "
                    "compare next-token distributions id by id and need one shared vocabulary. "
                    "A fresh student built from a config (the default student, student=tiny...) takes the "
                    f"teacher's tokenizer with: student.tokenizer={teacher.tokenizer} "
                    f"student.config.vocab_size={rows}. Or cut the student out of the teacher: student=pruned. "
                    "Otherwise pick a teacher/student pair from one model family; or distil across tokenizers "
                    "with ULD (loss=uld); or use loss=ce / hidden-state matching only. If the two really are the "
                    "same tokenizer, say so with teacher.model.tokenizer=<the student's tokenizer>.")
            return None
    info = teacher.info()
    if info is not None and info.vocab_size < size:
        raise ConfigError(f"teacher has {info.vocab_size} output rows but the tokenizer has {size} ids")
    return size


def check_loss(loss, student: ModelSpec, teacher: Teacher) -> None:
    """The loss against both models: kinds, attention kernels, shapes (configures the loss, once)."""
    if not isinstance(loss, DistillationLoss):
        raise ConfigError(f"loss must build a distill.losses.combine.DistillationLoss, got {type(loss).__name__}")
    needs = loss.needs
    # Attentions are probabilities materialised by the eager kernel only.
    for role, spec, need in (("student", student, Need.STUDENT_ATTN),
                             ("teacher", teacher.spec, Need.TEACHER_ATTN)):
        impl = spec and (spec.config_kwargs or {}).get("attn_implementation")
        if need in needs and impl in FLASH:
            raise ConfigError(f"{role} uses attn_implementation={impl!r}, which never materialises attention "
                              "maps, but the loss has an attention-matching component. Remove the setting (distill "
                              "switches to eager) or drop the attention component.")
    if teacher.kind == TeacherKind.SPARSE and (Need.TEACHER_HIDDEN in needs or Need.TEACHER_ATTN in needs):
        raise ConfigError(f"teacher={type(teacher).__name__} stores only top-k log-probs (a sparse teacher): "
                          "hidden-state and attention matching need an online teacher (teacher=<model>), or remove "
                          "those components from the loss")
    try:
        loss.configure(student.info(), teacher.info(), teacher.kind)
    except ValueError as e:
        raise ConfigError(f"loss: {e}") from e


def check_student_tokenizer(tokenizer, student: ModelSpec) -> None:
    rows = student.info().vocab_size
    if len(tokenizer) > rows:
        raise ConfigError(f"student tokenizer has {len(tokenizer)} ids but the student model only "
                          f"{rows} output rows; student.config.vocab_size must be >= {len(tokenizer)} "
                          f"(student.config.vocab_size={len(tokenizer)} for a student built from a config)")
