"""On-policy distillation as reinforcement learning with a dense, per-token reward (``loss=opd``).

The student samples a continuation; the teacher scores each sampled token; the student takes a
policy-gradient step whose per-token advantage is a one-sample estimate of the reverse KL
``KL(q || p)`` on that token. Only the teacher's log-probability **of the sampled token** is read
(:attr:`~distill.types.Need.TEACHER_SAMPLED_LOGPROB`), so a served teacher that returns a few
log-probs, or a teacher with another tokenizer (spans mapped by :mod:`distill.data.byte_spans`),
can teach. :func:`sampled_token_logprobs` fills that field from whatever a teacher already has
(full logits, its final hidden states and head, or a top-k support), so the existing teachers can
answer the need without materialising anything new.

Batch fields read (through ``DistillationLoss(..., batch=micro_batch)``), all optional:

* ``old_logprobs (B, L)``: the student's log-prob of each target token when the batch was
  generated, for reused generations (PPO ratios); absent on a batch's first use.
* ``reward (B,)``: a sequence-level task reward (e.g. unit tests passed), added to the advantage.
* ``group (B,)`` int: which prompt each sequence answers, for group-normalised rewards (GRPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.losses.base import LossComponent
from distill.losses.functional import upcast
from distill.losses.inputs import LossInputs, PerToken
from distill.losses.schedules import Schedule, as_schedule
from distill.structured import from_mapping
from distill.types import ModelInfo, Need, TeacherKind

IGNORE = -100


# ----------------------------------------------------------------------------- estimators
def k1(student_lp: torch.Tensor, teacher_lp: torch.Tensor) -> torch.Tensor:
    """``log q - log p`` at the sampled token: unbiased for ``KL(q || p)`` under ``y ~ q``, any sign."""
    return student_lp - teacher_lp


def k3(student_lp: torch.Tensor, teacher_lp: torch.Tensor) -> torch.Tensor:
    """``(r - 1) - log r`` with ``r = p / q`` (Schulman, 2020, "Approximating KL Divergence"):
    unbiased for ``KL(q || p)`` under ``y ~ q`` (``E_q[r] = 1``), never negative, lower variance
    than k1 when ``p`` is close to ``q``."""
    d = teacher_lp - student_lp  # log r
    return torch.expm1(d) - d


ESTIMATORS = {"k1": k1, "k3": k3}


def discounted_returns(costs: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_{s >= t} gamma^(s - t) c_s`` along each row of ``costs (B, L)`` (0 at masked positions).

    ``gamma = 0`` returns ``costs`` itself. The discount runs over positions, so a completion's
    tokens, contiguous after its prompt, see their own future only (prompt and padding hold 0).
    """
    if gamma == 0.0:
        return costs
    out = torch.empty_like(costs)
    run = torch.zeros_like(costs[:, 0])
    # A reverse scan: the matrix form needs an (L, L) table and gamma^-t scalings that overflow.
    for t in range(costs.shape[1] - 1, -1, -1):
        run = costs[:, t] + gamma * run
        out[:, t] = run
    return out


def group_normalize(reward: torch.Tensor, group: torch.Tensor, eps: float = 1e-4,
                    size: int | None = None) -> torch.Tensor:
    """``(r - mean_g) / (std_g + eps)`` within each group of sequences answering one prompt (GRPO,
    Shao et al., 2024, "DeepSeekMath"); ``std`` with Bessel's correction, as TRL's GRPO computes it.

    Args:
        reward: ``(B,)`` sequence rewards.
        group: ``(B,)`` int group ids (any values; equal ids form one group).
        eps: keeps a group whose rewards are all equal at 0 instead of 0/0.
        size: the expected group size (``samples_per_prompt``), checked when given: a micro-batch
            that splits a group would normalise over part of it.
    """
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    if (counts < 2).any() or (size is not None and (counts != size).any()):
        raise ValueError(f"group-normalised rewards need every group whole in the micro-batch with at least 2 "
                         f"samples (samples_per_prompt={size}); got group sizes {counts.tolist()}. Keep a "
                         "prompt's samples in one micro-batch, or normalise the rewards before the loss")
    r = reward.to(torch.promote_types(reward.dtype, torch.float32))
    n = counts.to(r.dtype)
    mean = torch.zeros_like(n).index_add_(0, inverse, r) / n
    dev = r - mean[inverse]
    std = (torch.zeros_like(n).index_add_(0, inverse, dev * dev) / (n - 1)).sqrt()
    return dev / (std[inverse] + eps)


# ----------------------------------------------------------------------------- token log-probs
def selected_token_logprobs(x: torch.Tensor, head: torch.Tensor | None, targets: torch.Tensor,
                            chunk_rows: int | None = None) -> torch.Tensor:
    """``log softmax(z)[y]`` at the positions that carry a target, ``(B, L)`` (0 elsewhere), where
    ``z`` is ``x`` itself (logits ``(B, L, V)``) or ``x @ head.T`` (final hidden states ``(B, L, D)``
    and an output head ``(V, D)``). Differentiable in ``x`` and ``head``.

    Why only there: on-policy batches are chat prompts plus a short answer, and only the answer's
    tokens carry a target. Forming ``(B, L, V)`` logits and their log-softmax over the prompt too
    (four to six times the answer's length on MBPP) was most of the student's and the teacher's
    head cost (``experiments/benchmarks/RESULTS.md``). ``log p(y) = z_y - logsumexp(z)``, chunk by
    chunk, so no ``(n, V)`` log-softmax is kept beyond what autograd needs.
    """
    mask = (targets != IGNORE).reshape(-1)
    idx = mask.nonzero().squeeze(-1)
    y = targets.reshape(-1).index_select(0, idx).long()
    flat = x.reshape(-1, x.shape[-1]).index_select(0, idx)
    v = x.shape[-1] if head is None else head.shape[0]
    step = chunk_rows or max(1, (1 << 24) // max(v, 1))
    parts = []
    for a in range(0, idx.shape[0], step):
        z = flat[a:a + step]
        z = upcast(z if head is None else z.to(head.dtype) @ head.T)
        parts.append(z.gather(-1, y[a:a + step, None]).squeeze(-1) - z.logsumexp(-1))
    dtype = torch.promote_types(x.dtype if head is None else head.dtype, torch.float32)
    vals = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=x.device)
    out = torch.zeros(mask.shape[0], dtype=vals.dtype, device=x.device).index_copy(0, idx, vals)
    return out.reshape(targets.shape)


# ----------------------------------------------------------------------------- teacher side
def sampled_token_logprobs(teacher, targets: torch.Tensor, vocab: int | None = None,
                           chunk_rows: int | None = None) -> torch.Tensor:
    """The teacher's log-probability (at ``T = 1``) of each target token, ``(B, L)``, detached.

    Read from the first of: ``sampled_logprobs`` (as given); full ``logits``; the final hidden
    states and head (``last_hidden``, ``lm_head_weight``: logits formed ``chunk_rows`` rows at a
    time, never whole); a top-k support (``topk_ids``, ``topk_logprobs``: a target outside the
    support gets the log of the whole tail mass, an upper bound, since its own share is unknown).
    A teacher can call this on its own output to fill :attr:`TeacherOutput.sampled_logprobs`.

    Args:
        teacher: a :class:`~distill.types.TeacherOutput` (or the loss's masked view of one).
        targets: ``(B, L)`` next-token ids, ``-100`` where no loss applies (0 is returned there).
        vocab: normalise over the first ``vocab`` logits only (the student's vocabulary when the
            teacher's head is padded wider); None: all.
        chunk_rows: positions per chunk on the logits / head paths (default about ``2^24 / V``).
    """
    mask = targets != IGNORE
    y = targets.clamp_min(0).long()
    given = getattr(teacher, "sampled_logprobs", None)
    if given is not None:
        return torch.where(mask, upcast(given.detach()), 0.0)
    logits, h, w = teacher.logits, teacher.last_hidden, teacher.lm_head_weight
    if (logits is not None or w is not None) and getattr(teacher, "positions", None) is not None:
        raise ValueError("a cross-tokenizer teacher's logits are over its own vocabulary, so the student's "
                         "sampled ids cannot index them: the teacher must fill sampled_logprobs (map its "
                         "per-token log-probs to the student's tokens with distill.data.byte_spans)")
    if logits is not None:
        v = logits.shape[-1] if vocab is None else min(vocab, logits.shape[-1])
        return selected_token_logprobs(logits.detach()[..., :v], None, targets, chunk_rows)
    if h is not None and w is not None:
        return selected_token_logprobs(h.detach(), w.detach() if vocab is None else w.detach()[:vocab], targets,
                                       chunk_rows)
    if teacher.topk_logprobs is not None:
        if teacher.sampled:
            raise ValueError("an importance-sampled cache holds estimator weights, not the teacher's "
                             "log-probabilities: on-policy distillation needs a top-k cache or an online teacher")
        ids, lp = teacher.topk_ids.long(), upcast(teacher.topk_logprobs.detach())
        hit = ids == y.unsqueeze(-1)
        tail = getattr(teacher, "tail", None)
        if tail is None:
            tail = -torch.expm1(lp.logsumexp(-1).clamp_max(0.0))
        log_tail = torch.log(upcast(tail.detach()).clamp_min(1e-30))
        out = torch.where(hit.any(-1), torch.where(hit, lp, 0.0).sum(-1), log_tail)
        return torch.where(mask, out, 0.0)
    raise ValueError("on-policy distillation needs the teacher's log-prob of each sampled token, but the "
                     "teacher output has no sampled_logprobs, logits, head or top-k support")


# ----------------------------------------------------------------------------- the component
@dataclass
class RewardSettings:
    """``loss.components.opd.reward``: a sequence-level task reward added to the advantage.

    Attributes:
        weight: a number or a :class:`~distill.losses.schedules.Schedule` (``step -> weight``); 0
            = no reward (``batch["reward"]`` is then not read).
        group_normalize: GRPO's ``(r - mean) / (std + eps)`` within each prompt's samples.
        samples_per_prompt: the group size: groups are consecutive rows when ``batch["group"]`` is
            absent, and group sizes are checked when it is present.
        eps: added to the group's std.
    """

    weight: float | Schedule = 0.0
    group_normalize: bool = False
    samples_per_prompt: int | None = None
    eps: float = 1e-4

    def __post_init__(self):
        self.weight = as_schedule(self.weight)
        if self.samples_per_prompt is not None and self.samples_per_prompt < 2 and self.group_normalize:
            raise ValueError(f"loss.components.opd.reward.samples_per_prompt must be >= 2 to normalise within a "
                             f"group, got {self.samples_per_prompt}")


@dataclass
class OPDTerms:
    """The per-token pieces of one micro-batch, ``(B, L)`` each (exposed for tests and logs)."""

    student_lp: torch.Tensor  # log q_theta(y_t), differentiable
    teacher_lp: torch.Tensor  # log p(y_t), detached
    kl: torch.Tensor  # the estimator's per-token value (k1 or k3), detached
    advantage: torch.Tensor  # detached, 0 at masked positions
    ratio: torch.Tensor  # q_theta / q_old, differentiable; exactly 1 on a batch's first use
    clipped: torch.Tensor  # bool: the clipped branch was taken
    loss: torch.Tensor  # -min(ratio A, clip(ratio) A)


class OnPolicyDistillation(LossComponent):
    """On-policy distillation as a policy gradient with a per-token reverse-KL reward.

    With ``q`` the student, ``p`` the teacher and ``y_t`` the student's sampled token at ``t``::

        c_t = k1 = log q(y_t) - log p(y_t)            or   k3 = (r_t - 1) - log r_t,  r_t = p(y_t) / q(y_t)
        A_t = -sum_{s >= t} gamma^(s - t) c_s  +  w_R(step) * R~          (detached)
        rho_t = q_theta(y_t) / q_old(y_t)                                  (1 on a first use)
        loss_t = -min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)

    ``gamma = 0`` is the Thinking Machines recipe (Lu et al., 2025, "On-Policy Distillation",
    Tinker cookbook: reward ``-(log q - log p)`` per token, importance-sampled PG); ``gamma > 0``
    is MiniLLM's sequence-level return (Gu et al., 2024, "MiniLLM", eq. 3, without its length
    normalisation). Both optimise the reverse KL of GKD's on-policy setting (Agarwal et al., 2024,
    "On-Policy Distillation of Language Models") from samples only. With k1 and ``gamma = 0`` the
    expected gradient is exactly ``grad KL(q || p)`` per token: ``E_q[(log q - log p) grad log q]
    = sum_y grad q (log q - log p)``. k3 is a lower-variance *value* estimate (logged), but as an
    advantage its expected gradient is ``grad KL(q || p) - grad KL(p || q)`` (the extra
    ``sum_y p grad log q``), so ``estimator: k1`` is the default.

    The advantage uses the *current* ``log q_theta`` (detached): with the ratio that keeps the
    unclipped gradient an unbiased estimate of ``grad KL(q_theta || p)`` on a reused batch.
    ``R~`` is ``batch["reward"]``, group-normalised when asked, broadcast to every token of its
    sequence (not discounted). On a batch's first use (no ``batch["old_logprobs"]``) the ratio is
    ``exp(log q - stop_grad(log q)) = 1`` exactly, so clipping changes neither value nor gradient.
    The per-token value is then ``-A_t``: with ``gamma = 0`` and no reward, the estimate itself.

    Logged next to the value: ``<name>_kl`` (mean estimate of the reverse KL per token),
    ``<name>_clipped`` (share of tokens clipped), both per token of the step.

    Args:
        estimator: "k1" or "k3".
        gamma: discount in ``[0, 1]``.
        clip_eps: PPO clip range of the ratio.
        teacher_logits: also ask the teacher for its full logits and gather the sampled tokens'
            log-probs here (for a teacher that does not fill ``sampled_logprobs`` itself).
        reward: :class:`RewardSettings` fields, or None (no reward).
    """

    # The student's final hidden states and head, not its logits: the loss forms logits only at the
    # answer's positions (selected_token_logprobs). Another component that reads the logits makes
    # the student produce them, and then they are read here as they are.
    needs = frozenset({Need.STUDENT_LAST_HIDDEN, Need.TEACHER_SAMPLED_LOGPROB})
    # A served or cross-tokenizer teacher may bring only sampled log-probs (kind "none"); a teacher
    # that brings nothing fails at the first step, naming what is missing.
    teacher_kinds = frozenset(TeacherKind)
    # The teacher scores the student's own tokens: a teacher with another tokenizer maps its scores
    # onto them (distill.data.byte_spans) instead of sharing ids.
    shared_vocabulary = False

    def __init__(self, estimator: str = "k1", gamma: float = 0.0, clip_eps: float = 0.2,
                 teacher_logits: bool = False, reward=None):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"loss component OnPolicyDistillation: estimator must be one of {sorted(ESTIMATORS)}, "
                             f"got {estimator!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"loss component OnPolicyDistillation: gamma must be in [0, 1], got {gamma}")
        if not 0.0 < clip_eps < 1.0:
            raise ValueError(f"loss component OnPolicyDistillation: clip_eps must be in (0, 1), got {clip_eps}")
        self.estimator, self.gamma, self.clip_eps = estimator, float(gamma), float(clip_eps)
        self.reward = from_mapping(RewardSettings, reward, "loss.components.opd.reward")
        if teacher_logits:
            # an instance attribute shadows the class contract (as LogitLoss.bind does); gathering
            # the student's ids from the teacher's logits needs one vocabulary
            self.needs = type(self).needs | {Need.TEACHER_LOGITS}
            self.shared_vocabulary = True

    def configure(self, student: ModelInfo, teacher: ModelInfo | None) -> None:
        if teacher is None:
            raise ValueError("OnPolicyDistillation needs a teacher to score the student's samples, but the run "
                             "has no teacher (teacher=none)")

    def _reward(self, inputs: LossInputs, like: torch.Tensor) -> torch.Tensor | None:
        weight = self.reward.weight(inputs.step)
        if weight == 0.0:
            return None
        batch = inputs.batch
        if "reward" not in batch:
            raise ValueError("loss.components.opd.reward.weight is not 0 but the batch has no 'reward' (B,) "
                             "tensor: the sequence source must score each sample")
        r = batch["reward"].to(device=like.device, dtype=like.dtype).reshape(-1)
        if self.reward.group_normalize:
            group = batch.get("group")
            n = self.reward.samples_per_prompt
            if group is None:
                if n is None or r.shape[0] % n:
                    raise ValueError(f"group-normalised rewards need batch['group'] or samples_per_prompt dividing "
                                     f"the micro-batch ({r.shape[0]} rows, samples_per_prompt={n})")
                group = torch.arange(r.shape[0], device=r.device) // n
            r = group_normalize(r, group.to(r.device), self.reward.eps, n)
        return weight * r

    def terms(self, inputs: LossInputs) -> OPDTerms:
        mask = inputs.mask
        student = inputs.student
        if student.logits is not None:
            lq_all = inputs.student_log_probs(1.0)  # shared with any CE of the step
            lq = lq_all.gather(-1, inputs.targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            vocab = lq_all.shape[-1]
        else:
            lq = selected_token_logprobs(student.last_hidden, student.lm_head_weight, inputs.targets)
            vocab = student.lm_head_weight.shape[0]
        lp = sampled_token_logprobs(inputs.teacher, inputs.targets, vocab=vocab).to(lq.dtype)
        cur = lq.detach()
        kl = torch.where(mask, ESTIMATORS[self.estimator](cur, lp), 0.0)
        adv = -discounted_returns(kl, self.gamma)
        reward = self._reward(inputs, adv)
        if reward is not None:
            adv = adv + reward.unsqueeze(-1)
        adv = torch.where(mask, adv, 0.0)  # finite and 0 where no loss applies, whatever came in
        old = inputs.batch.get("old_logprobs")
        # First use: log q - stop_grad(log q) is exactly 0, so the ratio is exactly 1 with the
        # gradient of log q; prompt and padding rows of old log-probs may hold anything.
        old = cur if old is None else torch.where(mask, old.to(device=lq.device, dtype=lq.dtype), cur)
        ratio = torch.exp(lq - old)
        unclipped = ratio * adv
        clipped_obj = ratio.clamp(1.0 - self.clip_eps, 1.0 + self.clip_eps) * adv
        # min by torch.where, not torch.minimum: at a tie (every token of a first use) the gradient
        # is the unclipped one whole, not split between two equal branches
        take_clipped = clipped_obj < unclipped
        objective = torch.where(take_clipped, clipped_obj, unclipped)
        return OPDTerms(student_lp=lq, teacher_lp=lp, kl=kl, advantage=adv, ratio=ratio,
                        clipped=take_clipped & mask, loss=-objective)

    def forward(self, inputs: LossInputs) -> PerToken:
        t = self.terms(inputs)
        return PerToken(t.loss, logs={"kl": t.kl, "clipped": t.clipped.to(t.kl.dtype)})


__all__ = ["OnPolicyDistillation", "RewardSettings", "OPDTerms", "k1", "k3", "discounted_returns",
           "group_normalize", "sampled_token_logprobs", "selected_token_logprobs"]
