"""Reused generations (``sequences.reuse=k``): one generated batch trains ``k`` optimizer steps.

Sampling dominates an on-policy step on small models, so PPO-style training samples once and
takes several gradient steps on the same sequences. The policy that wrote them (the student
*at generation time*) then differs from the one being trained after the first step, and the
loss corrects for it with the importance ratio ``q_theta / q_old``
(:class:`distill.losses.opd.OnPolicyDistillation` reads ``batch["old_logprobs"]``).

``old_logprobs`` are the student's log-probs of each next-token target, computed right after
sampling with the weights that sampled (one extra forward without gradients), aligned as the
loss's targets are (``next_token_targets(labels)``: position ``t`` scores token ``t + 1``; 0
where the target is -100). The batch's **first** use carries no ``old_logprobs``: the loss then
takes ``q_old = stop_grad(q_theta)``, a ratio of exactly 1 whose clipping changes nothing; the
reuses carry them.

While a batch is reused, the data loader's batches of those steps are not read (their prompts
are skipped): with ``reuse=k`` an epoch visits one prompt in ``k``.
"""

from __future__ import annotations

import torch

from distill.losses.functional import IGNORE_INDEX, log_probs, next_token_targets
from distill.losses.opd import selected_token_logprobs
from distill.types import Need


@torch.no_grad()
def behaviour_logprobs(module, batch: dict) -> torch.Tensor:
    """``(B, L)`` the student's log-prob of each target token of ``batch``, in the loss's precision
    (:func:`~distill.losses.functional.log_probs` at T = 1), micro-batch by micro-batch."""
    targets = next_token_targets(batch["labels"])
    size = targets.shape[0]
    mbs = module.micro_batch_size or size
    # as the loss will compute q_theta: from the head at the target positions when the loss asks for
    # no logits (loss=opd alone), else from the full logits, so a reuse's first ratio is exactly 1
    needs = frozenset({Need.STUDENT_LAST_HIDDEN}) if module._skips_student_head(module.loss.needs) else \
        frozenset({Need.STUDENT_LOGITS})
    parts = []
    for start in range(0, size, mbs):
        micro = {k: batch[k][start:start + mbs] for k in ("input_ids", "attention_mask")}
        out = module.student_forward(micro, needs)
        y = targets[start:start + mbs]
        if out.logits is None:
            parts.append(selected_token_logprobs(out.last_hidden, out.lm_head_weight, y))
        else:
            parts.append(log_probs(out.logits).gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1))
    out = torch.cat(parts)
    return torch.where(targets != IGNORE_INDEX, out, torch.zeros((), dtype=out.dtype, device=out.device))


class GenerationBuffer:
    """Holds the last generated batch for ``reuse`` optimizer steps in all (its first use included).

    Args:
        reuse: optimizer steps per generated batch (1 = always generate: no buffer).
    """

    def __init__(self, reuse: int = 1):
        if int(reuse) < 1:
            raise ValueError(f"sequences.reuse must be >= 1 (optimizer steps per generated batch), got {reuse}")
        self.reuse = int(reuse)
        self._batch: dict | None = None
        self._uses = 0

    @property
    def active(self) -> bool:
        return self.reuse > 1

    def take(self) -> dict | None:
        """The stored batch with its ``old_logprobs`` for one more step, or None when a new one is due."""
        if self._batch is None or self._uses >= self.reuse:
            return None
        self._uses += 1
        return self._batch

    def store(self, batch: dict, old_logprobs: torch.Tensor) -> None:
        """Keep ``batch`` (used once already, by the caller) for its ``reuse - 1`` further steps."""
        self._batch = {**batch, "old_logprobs": old_logprobs}
        self._uses = 1

    def clear(self) -> None:
        self._batch, self._uses = None, 0
