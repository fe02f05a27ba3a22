"""A frozen Hugging Face causal LM as an online teacher."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from distill.types import ModelInfo, Need
from distill.config import ConfigError
from distill.models import ModelSpec, head_is_plain_linear, output_head
from distill.teachers.base import Teacher
from distill.types import TeacherOutput
from distill.types import TeacherKind

log = logging.getLogger(__name__)


class HFTeacher(Teacher):
    """Online teacher: runs the frozen model on every batch, in eval mode, without gradients.

    Args:
        model: how to build the teacher (any ``AutoModelForCausalLM``, optionally 4-bit).
        pretrain: settings of :func:`distill.teachers.pretrain.pretrain_teacher` plus ``dir`` and
            ``name``. The teacher is then trained from ``model.config`` on the run's training data
            (with the run's tokenizer) the first time, and kept in
            ``<dir>/<name>-s<steps>-<key>``, keyed by everything that determines it; later runs with
            the same data and recipe load it. This is how the embedded default gets a teacher on
            a machine without a model hub. Exclusive with ``model.name_or_path`` (your own model).
    """

    kind = TeacherKind.FULL
    can_generate = True

    def __init__(self, model: ModelSpec, pretrain: dict | None = None):
        self.spec = model
        self.spec.role = "teacher"
        self.pretrain = dict(pretrain) if pretrain else None
        if self.spec.lora is not None:
            raise ValueError("teacher.model.lora: a frozen teacher takes no LoRA adapter; remove it")
        if self.pretrain and model.name_or_path:
            # Loading a folder while the preset also describes a teacher to pretrain would record
            # one model in the saved config and train against another.
            raise ConfigError(
                f"teacher.model.name_or_path={model.name_or_path!r} loads a trained teacher, but this teacher preset "
                "also pretrains one (teacher.pretrain, from teacher.model.config). To use your own model start from "
                f"the preset for it: teacher=hf teacher.model.name_or_path={model.name_or_path} (its own tokenizer "
                "is then checked against the student's). See README, 'Your own models'.")
        if self.pretrain and not model.config_kwargs:
            raise ConfigError("teacher.pretrain needs teacher.model.config: the architecture to pretrain")
        self.model: torch.nn.Module | None = None
        self._plain_head = False
        self.vocab_size: int | None = None  # the run's tokenizer size, set by prepare()

    def info(self) -> ModelInfo:
        return self.spec.info()

    @property
    def tokenizer(self) -> str | None:
        return self.spec.tokenizer

    def pretrained_folder(self, datamodule) -> Path | None:
        """Where the teacher that ``pretrain`` describes for this data is (or will be) kept."""
        if not self.pretrain:
            return None
        from distill.teachers.pretrain import pretrain_key

        return Path(self.pretrain["dir"]) / f"{self.pretrain.get('name', 'teacher')}-s{self.pretrain.get('steps')}-" \
            f"{pretrain_key(self.spec, datamodule, self.pretrain)}"

    def prepare(self, datamodule) -> None:
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            self.vocab_size = len(tokenizer)
        if not self.pretrain:
            return
        from distill.teachers.pretrain import pretrain_teacher

        folder = self.pretrained_folder(datamodule)
        settings = {k: v for k, v in self.pretrain.items() if k not in ("dir", "name")}
        self.spec.name_or_path = str(folder)
        if folder.exists():
            log.info("default teacher: loading %s (trained on this run's data and tokenizer)", folder)
        else:
            pretrain_teacher(self.spec, datamodule, **settings)

    def load(self, attn_implementation: str | None = None) -> None:
        if self.model is None:
            if self.spec.from_scratch:
                log.warning("teacher is built from config with random weights: it has nothing to teach. "
                            "Point teacher.model.name_or_path at a trained model (or set teacher.pretrain).")
            model = self.spec.build(attn_implementation)
            model.eval()
            model.requires_grad_(False)
            self.model = model
            # Soft-capped or scaled heads (e.g. Gemma 2) cannot be handed to a fused loss as a matrix.
            self._plain_head = head_is_plain_linear(model)

    def causal_lm(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("the teacher's weights are not loaded yet: call load() first (the training module "
                               "does it in configure_model)")
        return self.model

    def _sampled_only(self, needs: frozenset[str]) -> bool:
        """Whether the loss reads the sampled tokens' log-probs and no distribution (``loss=opd``)."""
        return (Need.TEACHER_SAMPLED_LOGPROB in needs and self._plain_head
                and not needs & {Need.TEACHER_LOGITS, Need.TEACHER_LAST_HIDDEN, Need.TEACHER_ATTN})

    def _sampled(self, batch: dict, hidden: bool) -> TeacherOutput:
        """Only ``log p(target)`` per position: the final hidden states times the head, a chunk of
        positions at a time (:func:`~distill.losses.opd.sampled_token_logprobs`), so neither the
        (B, L, V) logits nor their log-softmax are ever held whole."""
        from distill.losses.functional import next_token_targets
        from distill.losses.opd import sampled_token_logprobs

        body, head = output_head(self.model)
        out = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_hidden_states=hidden, use_cache=False)
        # normalised over the run's tokenizer ids, as the module trims full logits (padded head rows
        # of a wider embedding are never a token)
        view = TeacherOutput(last_hidden=out.last_hidden_state, lm_head_weight=head)
        lp = sampled_token_logprobs(view, next_token_targets(batch["labels"]), vocab=self.vocab_size)
        return TeacherOutput(sampled_logprobs=lp, hidden_states=out.hidden_states if hidden else None)

    def to(self, device: torch.device) -> "HFTeacher":
        if self.model is not None and self.spec.quantization is None:
            self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        hidden, attn = Need.TEACHER_HIDDEN in needs, Need.TEACHER_ATTN in needs
        if self._sampled_only(needs):
            return self._sampled(batch, hidden)
        if Need.TEACHER_LOGITS not in needs and not attn and (Need.TEACHER_LAST_HIDDEN not in needs or self._plain_head):
            # No component reads the logits (fused losses form them chunk by chunk from the final
            # hidden states and the head; hidden-state matching never needs them): skip the head,
            # so the (B, L, V) teacher logits are never held whole.
            body, head = output_head(self.model)
            out = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=hidden, use_cache=False)
            fused = Need.TEACHER_LAST_HIDDEN in needs
            return TeacherOutput(last_hidden=out.last_hidden_state if fused else None,
                                 lm_head_weight=head if fused else None,
                                 hidden_states=out.hidden_states if hidden else None)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=hidden, output_attentions=attn, use_cache=False)
        return TeacherOutput(logits=out.logits, hidden_states=out.hidden_states if hidden else None,
                             attentions=out.attentions if attn else None)
