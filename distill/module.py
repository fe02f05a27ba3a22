"""``DistillationModule``: the student, the frozen teacher and the loss in one LightningModule.

Optimization is manual on purpose: the module receives a whole optimizer-step batch, splits it
into micro-batches and normalises every token-level term by the unmasked tokens of the **whole
step** (on all devices). The loss and its gradient then do not depend on the micro-batch size,
which Lightning's automatic accumulation (divide each micro-batch mean by the number of
micro-batches) gets wrong whenever micro-batches hold different numbers of real tokens.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable

import lightning as L
import torch

from distill import metrics as M
from distill.data.bytes_per_token import checked_byte_lengths
from distill.losses.combine import DistillationLoss
from distill.lightning_compat import set_logged_step
from distill.losses.functional import next_token_targets
from distill.models import ModelSpec, head_is_plain_linear, output_head
from distill.teachers.base import NoTeacher, Teacher
from distill.types import Need, StudentOutput, TeacherOutput

log = logging.getLogger(__name__)


class DistillationModule(L.LightningModule):
    """Trains a student against a teacher with a multi-component loss.

    Args:
        student: how to build the student (full fine-tune or LoRA).
        teacher: a :class:`Teacher` (online HF model, cached logits, or none).
        loss: the :class:`DistillationLoss` combiner.
        optimizer: partial ``params -> torch.optim.Optimizer``.
        scheduler: partial ``optimizer -> LRScheduler`` stepped every optimizer step, or None.
        micro_batch_size: examples per forward/backward; the step batch is split into chunks of
            this size (None = no split).
        grad_clip: max global gradient norm (None = off).
        vocab_size: compare logits over the first ``vocab_size`` ids only (the shared tokenizer's
            size), so models whose embedding matrices are padded differently still line up.
    """

    def __init__(self, student: ModelSpec, teacher: Teacher | None, loss: DistillationLoss,
                 optimizer: Callable, scheduler: Callable | None = None, micro_batch_size: int | None = None,
                 grad_clip: float | None = 1.0, vocab_size: int | None = None,
                 sequences: Callable | None = None):
        super().__init__()
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"module.micro_batch_size must be >= 1 or null, got {micro_batch_size}")
        # Cheap on purpose (Hydra calls this): the student and teacher weights load in
        # configure_model, which Lightning calls at the start of fit/validate. The loss arrives
        # configured (distill.build checks it against both models' shapes before any weights load).
        self.student_spec = student
        self.student: torch.nn.Module | None = None
        self.loss = loss
        # A plain list hides the teacher from nn.Module registration: never trained, never saved.
        self._teacher = [teacher or NoTeacher()]
        self._teacher_needs = loss.teacher_needs
        self.sequences = sequences
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.micro_batch_size, self.grad_clip, self.vocab_size = micro_batch_size, grad_clip, vocab_size
        self.automatic_optimization = False
        self._val_totals: dict[str, float] = {}
        self.last_validated_step: int | None = None

    def configure_model(self) -> None:
        """Build the student and load the teacher (once; Lightning calls this before fit/validate)."""
        if self.student is not None:
            return
        needs = self.loss.needs
        wants_attn = bool(needs & {Need.STUDENT_ATTN, Need.TEACHER_ATTN})
        if wants_attn:
            log.info("attention matching needs attention probabilities: using the eager attention "
                     "implementation (slower and more memory than sdpa/flash)")
        attn_impl = "eager" if wants_attn else None
        self.student = self.student_spec.build(attn_impl)
        fused = sorted(n for n, c in self.loss.components.items() if Need.STUDENT_LAST_HIDDEN in c.needs)
        if fused and self._skips_student_head(needs) and not head_is_plain_linear(self.student):
            raise ValueError(f"the loss applies the student's output head itself (components {fused}), "
                             "but this student's logits are not a plain linear map of its last hidden state "
                             "(soft-capping, scaling or a bias). Use loss=kd_chunked instead of loss=kd_fused; "
                             "for loss=opd, add a component that reads the logits (e.g. a weight-0 CE).")
        self.teacher.load(attn_impl)

    @property
    def teacher(self) -> Teacher:
        return self._teacher[0]

    # ------------------------------------------------------------------ forward passes
    def _vocab(self, logits: torch.Tensor | None) -> torch.Tensor | None:
        if logits is None or self.vocab_size is None or logits.shape[-1] == self.vocab_size:
            return logits
        return logits[..., : self.vocab_size]

    @staticmethod
    def _skips_student_head(needs: frozenset[Need]) -> bool:
        """True when no active component reads the student's logits or attentions: the student
        then stops at its final hidden states and the (fused) loss applies the head chunk by chunk."""
        return Need.STUDENT_LOGITS not in needs and Need.STUDENT_ATTN not in needs

    def student_forward(self, batch: dict, needs: frozenset[str]) -> StudentOutput:
        """Run the student, computing only what the loss needs (hidden states, attentions, logits)."""
        hidden, attn = Need.STUDENT_HIDDEN in needs, Need.STUDENT_ATTN in needs
        if self._skips_student_head(needs):
            # Fused losses: stop at the final hidden states; the loss applies lm_head chunk by chunk.
            body, head = output_head(self.student)
            out = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=hidden, use_cache=False)
            head = head if self.vocab_size is None else head[: self.vocab_size]
            return StudentOutput(last_hidden=out.last_hidden_state, lm_head_weight=head,
                                 hidden_states=out.hidden_states if hidden else None)
        out = self.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=hidden, output_attentions=attn, use_cache=False)
        return StudentOutput(logits=self._vocab(out.logits), hidden_states=out.hidden_states if hidden else None,
                             attentions=out.attentions if attn else None)

    def teacher_forward(self, batch: dict, needs: frozenset[str]) -> TeacherOutput:
        return self._trim_vocab(self.teacher(batch, needs))

    def _trim_vocab(self, out: TeacherOutput) -> TeacherOutput:
        if out.logits is not None:
            out.logits = self._vocab(out.logits)
        return out

    def _move_teacher(self) -> None:
        self.teacher.to(self.device)

    def on_fit_start(self) -> None:
        self._move_teacher()
        if self.sequences is not None and hasattr(self.sequences, "attach"):
            # before the loaders are built: a reward reads each prompt's tests from the batches
            self.sequences.attach(getattr(self.trainer, "datamodule", None))

    def on_validation_start(self) -> None:
        self._move_teacher()

    # ------------------------------------------------------------------ training
    def _global_tokens(self, n_local: torch.Tensor) -> torch.Tensor:
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(n_local.float(), reduce_op="sum")
        return n_local

    def step_loss(self, batch: dict, step: int, backward: Callable | None = None,
                  measure_unweighted: bool = True) -> tuple[torch.Tensor, dict]:
        """Loss of one optimizer-step batch, split into micro-batches; optionally backprops each.

        Returns the step loss (sum over micro-batches) and the summed component logs. With
        ``measure_unweighted=False`` components at weight 0 are skipped (and absent from the logs).
        """
        targets = next_token_targets(batch["labels"])
        n_step = self._global_tokens((targets != -100).sum())
        world = self.trainer.world_size if self._trainer is not None else 1
        size = batch["input_ids"].shape[0]
        mbs = self.micro_batch_size or size
        total = torch.zeros((), device=targets.device)
        logs: dict[str, float | torch.Tensor] = {}
        needs = self.loss.needs
        for start in range(0, size, mbs):
            micro = {k: v[start:start + mbs] for k, v in batch.items()}
            student = self.student_forward(micro, needs)
            teacher = (self.teacher_forward(micro, self._teacher_needs) if self._teacher_needs
                       else TeacherOutput.none())
            # the micro-batch goes to the loss too: on-policy terms read its old_logprobs / reward / group
            loss, parts = self.loss(student, teacher, targets[start:start + mbs], step, n_step, measure_unweighted,
                                    batch=micro)
            if backward is not None:
                # DDP averages gradients over ranks; undo it so the step loss is sum / global tokens.
                # Only the last micro-batch all-reduces gradients; the others accumulate locally.
                last = start + mbs >= size
                no_sync = getattr(self._trainer.model, "no_sync", None) if world > 1 and not last else None
                with no_sync() if no_sync is not None else contextlib.nullcontext():
                    backward(loss * world)
            total = total + loss.detach()
            for k, v in parts.items():
                # component values add up over micro-batches (each is already / N_step); weights
                # and the temperature are the same for all of them.
                summed = not k.startswith("w_") and k != "temperature"
                logs[k] = logs.get(k, 0.0) + v if summed else v
        return total, logs

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Keep the loggers' x-axis equal to the optimizer step after a resume (see lightning_compat).
        set_logged_step(self.trainer, self.trainer.global_step)

    def _logs_this_step(self) -> bool:
        """Whether the loggers record this step: Lightning writes every ``log_every_n_steps``
        stepped batches, a count kept equal to ``global_step`` by :meth:`on_train_batch_start`."""
        t = self.trainer
        return (t.global_step + 1) % max(1, t.log_every_n_steps) == 0 or t.should_stop

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        step = self.trainer.global_step
        seq_logs: dict = {}
        if self.sequences is not None:
            # on-policy / teacher-written continuations replace the data's (distill.onpolicy)
            batch, seq_logs = self.sequences(batch, self, step)
        # Weight-0 terms are measured for their log line only: skip them on steps not logged.
        loss, logs = self.step_loss(batch, step, backward=self.manual_backward, measure_unweighted=self._logs_this_step())
        logs.update(seq_logs)
        if self.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=bs)
        self.log("train/lr", opt.param_groups[0]["lr"], batch_size=bs)
        return loss

    # ------------------------------------------------------------------ validation
    # (tokenizer, its per-id byte lengths or None): derived once per tokenizer, for val/bpb
    _byte_table_of: tuple = (None, None)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        targets = next_token_targets(batch["labels"])
        student = self.student_forward(batch, frozenset({Need.STUDENT_LOGITS}))
        # The teacher says what it compares with (full logits, a sparse support, or nothing: another
        # vocabulary, or a cache without this split), so every teacher that can is scored here.
        teacher = self._trim_vocab(self.teacher.heldout_output(batch))
        M.accumulate(self._val_totals, M.heldout_sums(student.logits, teacher, targets))
        # the targets' bytes (a gather in a per-tokenizer table): bits per byte of the held-out text
        M.accumulate(self._val_totals, M.byte_sums(self.byte_table(), targets))

    def byte_table(self, tokenizer=None) -> torch.Tensor | None:
        """UTF-8 bytes per id of ``tokenizer`` (default: the DataModule's, the student's), checked
        on a probe text once per tokenizer; None when they cannot be derived (a warning says why,
        and no ``val/bpb`` is reported) or no tokenizer is known."""
        if tokenizer is None and self._trainer is not None:
            tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._byte_table_of[0]
        if tokenizer is not None and self._byte_table_of[0] is not tokenizer:
            self._byte_table_of = (tokenizer, checked_byte_lengths(tokenizer))
        return self._byte_table_of[1]

    def on_validation_epoch_start(self) -> None:
        self._val_totals = {}

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.last_validated_step = self.trainer.global_step
        totals = self._val_totals
        if self._trainer is not None and self.trainer.world_size > 1:
            keys = sorted(totals)
            t = self.trainer.strategy.reduce(torch.tensor([totals[k] for k in keys], device=self.device),
                                             reduce_op="sum")
            totals = dict(zip(keys, t.tolist()))
        for k, v in M.finalize(totals).items():
            self.log(f"val/{k}", v, sync_dist=False)

    # ------------------------------------------------------------------ optimizers
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Student (or its LoRA adapters) plus trainable loss parts (projections); never the teacher."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return opt
        factory = self.scheduler_factory
        if getattr(factory, "keywords", {}).get("total_steps", 1) < 1:
            # epoch-based runs (trainer.max_steps=-1): size the schedule from the epochs and data
            factory = functools.partial(factory, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": factory(opt), "interval": "step"}}
