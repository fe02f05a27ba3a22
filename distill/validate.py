"""Check a composed config against what its components need, before any weights load.

Each check raises an error that names the config key (or file) at fault and says what would fix
it, so a bad sweep point fails in a second instead of after a model download.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from distill.config import ConfigError, instantiate
from distill.losses.combine import DistillationLoss
from distill.losses.components import STUDENT_ATTN, TEACHER_ATTN, TEACHER_HIDDEN, TEACHER_LOGITS
from distill.models import ModelSpec
from distill.teachers.base import Teacher
from distill.types import TeacherKind

log = logging.getLogger(__name__)

FLASH = ("flash_attention_2", "flash_attention_3", "sdpa")


@dataclass
class Checked:
    student: ModelSpec
    teacher: Teacher
    loss: DistillationLoss
    tokenizer: Any
    vocab_size: int | None


def _build(node: DictConfig, what: str):
    return instantiate(node, what)


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

    Returns the number of ids to compare (the tokenizer's size): models whose embedding matrices are
    padded to different sizes (e.g. Qwen2.5 0.5B 151,936 vs 7B 152,064 rows) line up on those ids.
    """
    from distill.data.tokenizer import load_tokenizer

    if teacher.kind == TeacherKind.NONE or TEACHER_LOGITS not in loss.needs and teacher.kind != TeacherKind.FULL:
        return len(student_tok)
    size = len(student_tok)
    if teacher.tokenizer and teacher.tokenizer != getattr(student_tok, "name_or_path", None):
        teacher_tok = load_tokenizer(teacher.tokenizer)
        if teacher_tok.get_vocab() != student_tok.get_vocab():
            if TEACHER_LOGITS in loss.needs:
                raise ConfigError(
                    f"teacher tokenizer {teacher.tokenizer!r} ({len(teacher_tok)} tokens) differs from the student's "
                    f"{student_tok.name_or_path!r} ({len(student_tok)} tokens): logit losses (KL, JSD) compare "
                    "next-token distributions id by id and need one shared vocabulary. Pick a teacher/student "
                    "pair from one model family, or use loss=ce / hidden-state matching only.")
            return None
    info = teacher.info()
    if info is not None and info.vocab_size < size:
        raise ConfigError(f"teacher has {info.vocab_size} output rows but the tokenizer has {size} ids")
    return size


def build_checked(cfg: DictConfig) -> Checked:
    """Instantiate the cheap parts and check them together. Loads tokenizers and configs only."""
    from distill.data.tokenizer import load_tokenizer

    student: ModelSpec = _build(cfg.student, "student")
    student.role = "student"
    teacher: Teacher = _build(cfg.teacher, "teacher")
    loss = _build(cfg.loss, "loss")
    if not isinstance(loss, DistillationLoss):
        raise ConfigError(f"loss must build a distill.losses.combine.DistillationLoss, got {type(loss).__name__}")
    needs = loss.needs
    # Attentions are probabilities materialised by the eager kernel only.
    for role, spec, need in (("student", student, STUDENT_ATTN), ("teacher", getattr(teacher, "spec", None), TEACHER_ATTN)):
        impl = spec and (spec.config_kwargs or {}).get("attn_implementation")
        if need in needs and impl in FLASH:
            raise ConfigError(f"{role} uses attn_implementation={impl!r}, which never materialises attention "
                              "maps, but the loss has an attention-matching component. Remove the setting (distill "
                              "switches to eager) or drop the attention component.")
    if teacher.kind == TeacherKind.SPARSE and (TEACHER_HIDDEN in needs or TEACHER_ATTN in needs):
        raise ConfigError("teacher=cached stores only top-k log-probs: hidden-state and attention matching need an "
                          "online teacher (teacher=<model>), or remove those components from the loss")
    student_info = student.info()
    teacher_info = teacher.info()
    try:
        loss.configure(student_info, teacher_info, teacher.kind)
    except ValueError as e:
        raise ConfigError(f"loss: {e}") from e
    tokenizer = load_tokenizer(student.tokenizer, student.tokenizer_build)
    if len(tokenizer) > student_info.vocab_size:
        raise ConfigError(f"student tokenizer has {len(tokenizer)} ids but the student model only "
                          f"{student_info.vocab_size} output rows; student.config.vocab_size must be >= {len(tokenizer)}")
    vocab = check_vocab(tokenizer, teacher, loss)
    return Checked(student, teacher, loss, tokenizer, vocab)


def validate(cfg: DictConfig) -> Checked:
    """Every check ``train`` runs before loading weights (for tests and ``--cfg`` style dry runs)."""
    check_trainer(cfg)
    return build_checked(cfg)


