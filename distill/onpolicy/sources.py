"""Where each training sequence comes from: the data, the student (GKD), the teacher (SeqKD) or both (speculative KD).

:class:`SequenceSource` is the ``sequences`` seam of :class:`distill.module.DistillationModule`:
before each step's loss, the module calls ``source(batch, module, step)`` and trains on the batch
it returns. Per step, a fraction ``lmbda`` of the examples (GKD's λ, Agarwal et al., ICLR 2024; a
number or any :mod:`distill.losses.schedules` schedule, e.g. off-policy first, then on-policy) get
an **on-policy** continuation of their prompt:

* ``policy=student``: the student samples it (GKD, on-policy KD, MiniLLM-style reverse KL);
* ``policy=speculative``: the student proposes each token, the teacher replaces those outside its
  top-``K`` (speculative KD, :mod:`distill.onpolicy.speculative`).

The other examples are **off-policy**: their data continuation (``off_policy=data``), or one the
teacher samples (``off_policy=teacher``: sequence-level KD, Kim & Rush 2016; ``lmbda=0`` with it
is pure SeqKD). The teacher then scores whatever sequence the batch holds, with whatever loss
is configured, so every divergence, chunked and fused loss, hidden-state matching and
micro-batching work unchanged.

Masks: prompt tokens, padding and everything after a continuation's first stop token carry no
loss; the generated tokens (through the stop token) do. The stop tokens are the run tokenizer's
:func:`~distill.data.conventions.stop_token_ids`: a chat model's end-of-turn token (SmolLM2's
``<|im_end|>``), so a chat answer ends where its template ends the turn, as at inference. The module counts the step's loss tokens on the returned
batch, so the token normalisation counts the generated tokens (the bug of TRL's GKD trainer
fixed in its PR #6478 normalised by the data's token count instead) and stays independent of the
micro-batch size.

Randomness never touches the training streams: which examples go on-policy is drawn from a
private generator seeded by ``(seed, step, rank)``, and sampling runs inside ``fork_rng`` seeded
the same way. So ``lmbda=0`` is today's off-policy step bit for bit (dropout masks included), a
fixed seed reproduces the generated sequences, and each DDP rank samples its own shard with its
own stream.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping

import torch

from distill.config import ConfigError
from distill.data.conventions import stop_token_ids
from distill.losses.functional import IGNORE_INDEX
from distill.losses.schedules import Schedule, as_schedule
from distill.onpolicy.base import Sequences
from distill.onpolicy.buffer import GenerationBuffer, behaviour_logprobs
from distill.onpolicy.generation import Generated, Generator, HFGenerator, Sampling
from distill.onpolicy.prompts import PromptSpec, Row, data_row, generated_row, left_pad, right_pad
from distill.onpolicy.speculative import speculative_generate

log = logging.getLogger(__name__)

POLICIES = ("student", "speculative")
OFF_POLICY = ("data", "teacher")
MIXES = ("examples", "batch")
BATCH_KEYS = frozenset({"input_ids", "attention_mask", "labels"})


class SequenceSource(Sequences):
    """Replaces the continuations of a step's examples with generated ones (see the module docstring).

    Args:
        lmbda: fraction of each step's examples that get an on-policy continuation, a number in
            ``[0, 1]`` or a schedule ``step -> fraction``.
        policy: who writes the on-policy continuations: ``student`` | ``speculative``.
        off_policy: the other examples' continuations: ``data`` | ``teacher`` (SeqKD).
        mix: ``examples``: round(λ·B) examples of every step (stochastic rounding), the rest
            off-policy; ``batch``: the whole batch on-policy with probability λ (TRL's GKDTrainer).
        prompts: :class:`PromptSpec` settings (``mode``, ``prompt_tokens``).
        sampling: :class:`Sampling` settings (``max_new_tokens``, ``temperature``, ``top_p``, ...).
        top_k: speculative KD's acceptance set: the teacher's top-``top_k`` tokens.
        seed: the run's seed (``${seed}``); generation streams derive from it.
        generator: the :class:`Generator` of student and teacher continuations (default
            :class:`HFGenerator`; a vLLM engine would plug in here).
        reuse: optimizer steps each generated batch trains (:mod:`distill.onpolicy.buffer`); its
            reuses carry the student's log-probs at generation time (``old_logprobs``) for the
            loss's importance ratio (``loss=opd``).
        samples_per_prompt: answers sampled per prompt (needs ``lmbda=1``): the batch grows to
            ``B * n`` rows, one prompt's answers consecutive, with ``batch["group"]`` (the prompt's
            row) for group-normalised rewards.
        reward: a sequence-level reward of each row's answer, ``reward(answers, metas) -> (B,)``
            (:class:`distill.onpolicy.rewards.CodeReward`: unit tests in the sandbox), put in
            ``batch["reward"]``; None = none.
    """

    def __init__(self, lmbda: float | Schedule = 0.5, policy: str = "student", off_policy: str = "data",
                 mix: str = "examples", prompts: PromptSpec | Mapping | None = None,
                 sampling: Sampling | Mapping | None = None, top_k: int = 25, seed: int = 0,
                 generator: Generator | None = None, reuse: int = 1, samples_per_prompt: int = 1,
                 reward=None):
        if policy not in POLICIES:
            raise ConfigError(f"sequences.policy must be one of {POLICIES}, got {policy!r}")
        if off_policy not in OFF_POLICY:
            raise ConfigError(f"sequences.off_policy must be one of {OFF_POLICY}, got {off_policy!r}")
        if mix not in MIXES:
            raise ConfigError(f"sequences.mix must be one of {MIXES}, got {mix!r}")
        if top_k < 1:
            raise ConfigError(f"sequences.top_k must be >= 1, got {top_k}")
        self.lmbda = as_schedule(lmbda)
        self._check_lmbda(self.lmbda(0), 0)
        self.policy, self.off_policy, self.mix, self.top_k, self.seed = policy, off_policy, mix, int(top_k), int(seed)
        self.prompts = prompts if isinstance(prompts, PromptSpec) else PromptSpec(**dict(prompts or {}))
        self.sampling = sampling if isinstance(sampling, Sampling) else Sampling(**dict(sampling or {}))
        self.generator = generator or HFGenerator()
        self.stop_ids: list[int] = []
        self.pad_id: int | None = None
        self._last_start: float | None = None
        self._last_generation_s = 0.0
        self.buffer = GenerationBuffer(reuse)
        if int(samples_per_prompt) < 1:
            raise ConfigError(f"sequences.samples_per_prompt must be >= 1, got {samples_per_prompt}")
        self.samples_per_prompt = int(samples_per_prompt)
        if self.samples_per_prompt > 1 and (self.lmbda(0) != 1.0 or off_policy != "data"):
            raise ConfigError("sequences.samples_per_prompt > 1 samples every prompt several times, so every row is "
                              "on-policy: set sequences.lmbda=1 (sequences=student) and off_policy=data")
        self.reward = reward
        self.tokenizer = None

    @staticmethod
    def _check_lmbda(value: float, step: int) -> None:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"sequences.lmbda must be in [0, 1] (the fraction of on-policy sequences), got "
                              f"{value} at step {step}")

    # ------------------------------------------------------------------ set-up
    @property
    def uses_teacher_model(self) -> bool:
        """Whether the teacher must generate (SeqKD, speculative KD) and not only score."""
        return self.policy == "speculative" or self.off_policy == "teacher"

    def check(self, teacher, loss=None) -> None:
        """Refuse, before any weights load, a teacher that cannot score (or write) new sequences."""
        if teacher is None:
            raise ConfigError("sequences: on-policy / SeqKD training needs a teacher to score the generated sequences")
        # each teacher declares whether it can (distill.teachers.base.Teacher.scoring_limit); an
        # ensemble answers for its members
        why = teacher.scoring_limit()
        if why is not None:
            raise ConfigError(f"sequences: {why}")
        if self.uses_teacher_model and not teacher.can_generate:
            what = "speculative KD (sequences.policy=speculative)" if self.policy == "speculative" else \
                "SeqKD (sequences.off_policy=teacher)"
            raise ConfigError(f"sequences: {what} samples from the teacher, which needs a local Hugging Face teacher "
                              f"(teacher=hf / tiny_stdlib); {type(teacher).__name__} has no model to sample from.")

    def connect(self, tokenizer) -> "SequenceSource":
        """Take the stop and padding ids from the run's tokenizer (its end of turn, then its EOS)."""
        self.tokenizer = tokenizer  # decodes the answers a reward scores
        self.stop_ids = stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return self

    def attach(self, datamodule) -> None:
        """Have the DataModule hand each batch its prompts' ``meta`` when the reward reads it."""
        if getattr(self.reward, "needs_meta", False) and datamodule is not None:
            from distill.onpolicy.rewards import MetaHook

            if not any(isinstance(h, MetaHook) for h in datamodule.hooks):
                datamodule.add_hook(MetaHook())

    def _connect_from(self, module) -> None:
        if self.pad_id is not None:
            return
        tokenizer = getattr(getattr(module.trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is None:
            raise RuntimeError("SequenceSource: no tokenizer to take stop / padding ids from; call "
                               "source.connect(tokenizer) or train with a DataModule that has one")
        self.connect(tokenizer)

    # ------------------------------------------------------------------ per step
    def _rank(self, module) -> tuple[int, int]:
        trainer = getattr(module, "_trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _stream_seed(self, step: int, rank: int) -> int:
        # distinct per (seed, step, rank); below 2**63 for torch.Generator.manual_seed
        return (self.seed * 1_000_003 + step * 7_919 + rank * 104_729 + 12_345) % (2 ** 63 - 1)

    def choose(self, batch_size: int, step: int, rank: int = 0) -> list[int]:
        """Indices of the examples that go on-policy at ``step`` (private random stream)."""
        lam = float(self.lmbda(step))
        self._check_lmbda(lam, step)
        if lam == 0.0:
            return []
        g = torch.Generator().manual_seed(self._stream_seed(step, rank))
        u = float(torch.rand((), generator=g))
        if self.mix == "batch":
            return list(range(batch_size)) if u < lam else []
        exact = lam * batch_size
        n = int(exact) + (1 if u < exact - int(exact) else 0)
        return sorted(torch.randperm(batch_size, generator=g)[:n].tolist())

    @contextlib.contextmanager
    def _sampling_rng(self, seed: int, device: torch.device):
        """Global RNG reseeded for the block, then restored: generation never moves the training streams."""
        devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _generate(self, who: str, module, prompts: list[torch.Tensor], seed: int) -> Generated:
        ids, mask = left_pad(prompts, self.pad_id)
        vocab = module.vocab_size
        with self._sampling_rng(seed, ids.device):
            if who == "speculative":
                g = torch.Generator(device=ids.device).manual_seed(seed)
                return speculative_generate(module.student, module.teacher.causal_lm(), ids, mask, self.sampling,
                                            self.top_k, self.stop_ids, self.pad_id, vocab, generator=g)
            model = module.student if who == "student" else module.teacher.causal_lm()
            return self.generator(model, ids, mask, self.sampling, self.stop_ids, self.pad_id, vocab)

    def __call__(self, batch: dict, module, step: int) -> tuple[dict, dict[str, float]]:
        start = time.perf_counter()
        logs: dict[str, float] = {"lmbda": float(self.lmbda(step))}
        if self._last_start is not None:
            # the previous step's wall time (this call ends it), and the share of it spent generating:
            # generation (sampling, scoring the samples) against training (forward, backward, update)
            step_s = max(start - self._last_start, 1e-9)
            logs.update(step_s=step_s, generation_share=self._last_generation_s / step_s,
                        train_s=max(step_s - self._last_generation_s, 0.0))
        self._last_start = start
        batch = dict(batch)
        meta = batch.pop("meta", None)  # the prompts' fields (MetaHook), for the reward and a routed teacher
        reused = self.buffer.take()
        if reused is not None:
            # a stored generation trains once more (with its old_logprobs); this step's data batch is skipped
            self._last_generation_s = time.perf_counter() - start
            logs.update(generated_tokens=0.0, generation_s=self._last_generation_s, reused=1.0)
            return reused, logs
        n = self.samples_per_prompt
        if n > 1:
            # each prompt n times, consecutively: one generate() call samples them all, a group per prompt
            batch = {k: v.repeat_interleave(n, 0) for k, v in batch.items()}
            meta = None if meta is None else [m for m in meta for _ in range(n)]
        new, gen_logs = self._write(batch, module, step, start)
        logs.update(gen_logs)
        if meta is not None:
            new["meta"] = meta  # one per row, as the rows stay in order (teacher=routed reads it)
        if n > 1:
            new["group"] = torch.arange(new["input_ids"].shape[0] // n, device=new["input_ids"].device
                                        ).repeat_interleave(n)
        if self.reward is not None:
            t0 = time.perf_counter()
            new["reward"] = self._score(new, meta, module).to(new["input_ids"].device)
            logs.update(reward_s=time.perf_counter() - t0, reward_mean=float(new["reward"].mean()))
        if self.buffer.active:
            t0 = time.perf_counter()
            # the behaviour policy's log-probs, for the ratio on the reuses (not on this first use: exactly 1)
            self.buffer.store(new, behaviour_logprobs(module, new))
            logs["old_logprobs_s"] = time.perf_counter() - t0
            logs["reused"] = 0.0
        self._last_generation_s = time.perf_counter() - start
        logs["generation_s"] = self._last_generation_s
        return new, logs

    def answers(self, batch: dict) -> list[str]:
        """Each row's answer as text: its loss-carrying tokens (the continuation), special tokens dropped."""
        out = []
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            out.append(self.tokenizer.decode(ids[labels != IGNORE_INDEX].tolist(), skip_special_tokens=True))
        return out

    def _score(self, batch: dict, meta: list | None, module) -> torch.Tensor:
        if meta is None and getattr(self.reward, "needs_meta", False):
            raise RuntimeError("sequences.reward needs each prompt's meta (its tests), but the batch has none: train "
                               "on chat prompts (+prompts=mbpp|humaneval|api) through distill-train, or call "
                               "source.attach(datamodule) before the DataModule builds its loaders")
        if self.tokenizer is None:
            self._connect_from(module)
        return self.reward(self.answers(batch), meta).float()

    def _write(self, batch: dict, module, step: int, start: float) -> tuple[dict, dict[str, float]]:
        """The step's batch with its on-policy / teacher-written continuations, and their log values."""
        logs: dict[str, float] = {}
        rank, _ = self._rank(module)
        size = batch["input_ids"].shape[0]
        on = self.choose(size, step, rank)
        off = [i for i in range(size) if i not in set(on)] if self.off_policy == "teacher" else []
        if not on and not off:
            logs.update(generated_tokens=0.0)
            return batch, logs
        extra = sorted(set(batch) - BATCH_KEYS)
        if extra:
            raise ValueError(f"sequences: the batch carries per-token fields {extra} that belong to the data's own "
                             "tokens and cannot follow generated ones (a cached teacher's rows?); use an online teacher")
        self._connect_from(module)
        strategy = type(getattr(getattr(module, "_trainer", None), "strategy", None)).__name__
        if strategy.startswith(("FSDP", "DeepSpeed")):
            # each rank holds a shard of the weights: generate() on it would need the full model gathered
            raise RuntimeError(f"sequences: generation during training is not supported with the {strategy} strategy "
                               "(sharded weights); use hardware=ddp or a single device")
        lengths = self.prompts.lengths(batch)
        prompt = {i: batch["input_ids"][i, :lengths[i]] for i in range(size)}
        rows: dict[int, Row] = {}
        generated, replaced = 0, 0
        base = self._stream_seed(step, rank)
        for offset, (who, idx) in enumerate(((self.policy, on), ("teacher", off))):
            if not idx:
                continue
            out = self._generate(who, module, [prompt[i] for i in idx], base + 1 + offset)
            lens = out.lengths.tolist()
            for j, i in enumerate(idx):
                rows[i] = generated_row(prompt[i], out.completion[j], int(lens[j]))
            generated += int(sum(lens))
            if out.from_teacher is not None:
                replaced += int(out.from_teacher.sum())
        new = right_pad([rows[i] if i in rows else data_row(batch, i) for i in range(size)], self.pad_id)
        logs.update(generated_tokens=float(generated), sampling_s=time.perf_counter() - start,
                    on_policy=len(on) / size)
        if self.policy == "speculative" and on:
            logs["teacher_replaced"] = replaced / max(generated, 1)
        return new, logs
