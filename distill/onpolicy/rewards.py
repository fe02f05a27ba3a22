"""Verifiable rewards for on-policy training: each sampled answer's program runs against its prompt's tests.

``sequences.reward`` (a :class:`CodeReward`) gives every row of a generated batch a sequence-level
reward, ``batch["reward"] (B,)``, that ``loss=opd`` adds to its advantage
(``loss.components.opd.reward.weight``, optionally group-normalised over
``sequences.samples_per_prompt`` samples of one prompt, GRPO-style).

The reward is the one ``distill-eval`` computes, so training optimises what is measured: the
answer's code is extracted as for a chat model (:func:`distill.evaluation.postprocess.make_completion`:
the fenced block that defines the entry point), placed into the benchmark's program
(:meth:`distill.evaluation.benchmarks.task.Task.programs`: setup, completion-style prompt, the
answer, the tests) and run by :class:`distill.sandbox.Sandbox`: a forked child per program with
a wall-clock timeout, CPU, memory, process and file-size limits, a private temp directory and
the in-process guard (no fork/exec, no sockets, no writes outside that directory). Nothing the
model wrote runs in the training process. Reward 1 when every test passes, else 0 (a failed
assert, an exception, a timeout, a blocked call, a crash).

The tests come from each prompt's ``meta`` (``tests``, ``entry_point``, ``setup``, ``prompt``,
``call_check``: :mod:`distill.onpolicy.prompt_sets` keeps them), which the DataModule's collate
leaves out of batches: :class:`MetaHook` puts them back as ``batch["meta"]`` (a list, one dict
per row) for the sequence source, which takes it off the batch before the loss.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


class MetaHook:
    """A :class:`~distill.data.datamodule.BatchHook` that hands each batch its examples' ``meta``."""

    def example(self, split: str, index: int, example: dict) -> dict:
        return example

    def batch(self, examples: list[dict], batch: dict) -> dict:
        return {**batch, "meta": [dict(e.get("meta") or {}) for e in examples]}


class CodeReward:
    """Unit-test reward for code answers (see the module docstring).

    Args:
        timeout: wall-clock seconds per program (its tests included).
        workers: programs run in parallel (sandbox children).
        sandbox: further :class:`~distill.sandbox.SandboxConfig` fields (``memory_mb``,
            ``max_processes``, ``file_size_mb``, ...), as ``conf/eval/sandbox`` spells them.
    """

    #: the sequence source must hand over the rows' ``meta`` (it adds :class:`MetaHook`)
    needs_meta = True

    def __init__(self, timeout: float = 5.0, workers: int = 2, sandbox: Mapping[str, Any] | None = None):
        from distill.sandbox import SandboxConfig

        self.config = SandboxConfig.from_mapping({"timeout": float(timeout), "workers": int(workers),
                                                  **dict(sandbox or {})})
        self._sandbox = None

    def _box(self):
        if self._sandbox is None:
            from distill.sandbox import Sandbox

            self._sandbox = Sandbox(self.config)  # its workers start once and are reused every step
        return self._sandbox

    @staticmethod
    def programs(answer: str, meta: Mapping[str, Any]) -> list[str]:
        """What the sandbox runs for ``answer``: the benchmark's program around the extracted code."""
        from distill.evaluation.benchmarks.task import Task
        from distill.evaluation.postprocess import make_completion

        task = Task(task_id=str(meta.get("task_id", "")), prompt=meta.get("prompt") or "", test=meta["tests"],
                    entry_point=meta.get("entry_point"), setup=meta.get("setup") or "",
                    call_check=bool(meta.get("call_check", False)))
        return task.programs(make_completion(answer, task.prompt, "chat", None, task.entry_point))

    def __call__(self, answers: Sequence[str], metas: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """``(B,)`` float rewards: 1.0 where the answer passes all its prompt's tests, else 0.0."""
        if len(answers) != len(metas):
            raise ValueError(f"CodeReward: {len(answers)} answers but {len(metas)} prompts' meta")
        programs, owner = [], []
        untested = 0
        for i, (answer, meta) in enumerate(zip(answers, metas)):
            if not (meta or {}).get("tests"):
                untested += 1  # nothing to verify: no reward
                continue
            for p in self.programs(answer, meta):
                programs.append(p)
                owner.append(i)
        if untested:
            log.warning("CodeReward: %d of %d prompts have no tests in their meta; they score 0", untested, len(answers))
        passed = [bool(meta and meta.get("tests")) for meta in metas]
        for i, res in zip(owner, self._box().map(programs) if programs else []):
            passed[i] = passed[i] and res.passed
        return torch.tensor([1.0 if p else 0.0 for p in passed])

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def __del__(self):  # pragma: no cover - best effort: the sandbox's workers end with it
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
