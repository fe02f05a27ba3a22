"""Chat prompt sets as a data source: each prompt rendered with the model's chat template, masked.

On-policy distillation (``sequences=student|gkd|speculative``) and sequence-level KD
(``sequences=seqkd``) need *prompts* more than they need text: the student or the teacher writes
the answer during training. A :class:`ChatPromptSource` serves the DataModule one example per
prompt:

* the prompt is the user turn rendered with the tokenizer's own chat template and
  ``add_generation_prompt=True``, i.e. through the assistant header (``<|im_start|>assistant\\n``),
  exactly the text the model is given at inference and in ``distill-eval``; every one of its
  tokens has label ``-100``, so no loss ever trains on it;
* a **reference answer** follows where the set has one and ``answers=reference`` (MBPP's code,
  HumanEval's canonical solution), with labels through the end-of-turn token and not past it
  (:func:`distill.data.chat.encode_pair`). That is what off-policy examples train on
  (``sequences=data``, GKD's data share) and what the held-out metrics score. With
  ``answers=none`` (and for sets without answers: the API prompts) the example is the prompt
  alone, and only a sequence source gives it a loss.

The sequence sources find the prompt as the masked segment (``sequences.prompts.mode=auto``) and
replace whatever followed it. Each example also carries ``meta``: the record's fields that are not
tokens (``task_id``, ``tests``, ``entry_point``, ...), which the DataModule's collate leaves out of
the batch and a :class:`~distill.data.datamodule.BatchHook` can read from the examples (unit-test
rewards need them).

A template is required, and refused early with the fix when missing: the student would otherwise
train on one prompt format and be evaluated on another.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from distill.config import ConfigError
from distill.data.chat import encode_pair, format_prompt
from distill.data.conventions import end_of_turn_id
from distill.losses.functional import IGNORE_INDEX

log = logging.getLogger(__name__)

ANSWERS = ("reference", "none")
OVERLONG = ("truncate", "drop")


@dataclass
class PromptRecord:
    """One prompt of a set: the user message, its reference answer (None = the set has none), and
    the fields a reward or a report needs later (``task_id``, ``tests``, ``entry_point``)."""

    prompt: str
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def require_chat_template(tokenizer, what: str) -> None:
    """A :class:`ConfigError` naming the fix when ``tokenizer`` has no chat template."""
    if getattr(tokenizer, "chat_template", None):
        return
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise ConfigError(
        f"{what}: the tokenizer {name!r} has no chat template, and chat prompts are rendered with the "
        "model's own template (the format generation and distill-eval use). Fix: use a student whose "
        "tokenizer has one (student=smollm2-135m-instruct, or an instruct model's folder as "
        f"student.tokenizer), or add a \"chat_template\" to {name}/tokenizer_config.json. For a base "
        "model without a template, train on plain text (data=stdlib|text|hf) or on API answers in the "
        "instruction format (data=api_sft).")


def hashed_split(key: str, val_fraction: float, seed: int) -> str:
    """``"val"`` for a seeded ``val_fraction`` of keys, else ``"train"`` (stable across runs)."""
    h = int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:8], 16)
    return "val" if (h % 10_000) < val_fraction * 10_000 else "train"


class ChatPromptSource:
    """Base of the chat prompt sets (see the module docstring); a subclass implements :meth:`read`.

    Args:
        system_prompt: a system turn before every prompt (None = the template's default).
        answers: ``reference`` (the set's answers follow the prompt, where it has them) | ``none``.
        overlong: an example longer than ``max_length``: ``truncate`` its reference answer (the
            prompt stays usable on-policy) or ``drop`` it. A prompt that leaves fewer than
            ``min_answer_tokens`` positions is always dropped; the counts are logged per split.
        min_answer_tokens: positions a prompt must leave free for an answer.
        max_examples: keep the first N prompts of each split (debug runs).
        max_chars: keep prompts until their text (prompt and answer) reaches N characters.
    """

    #: what the logs and errors call the set
    label = "chat prompts"

    def __init__(self, system_prompt: str | None = None, answers: str = "reference", overlong: str = "truncate",
                 min_answer_tokens: int = 16, max_examples: int | None = None, max_chars: int | None = None,
                 **unknown: Any):
        if unknown:
            # `data=<preset> +prompts=<set>` merges the data preset's source keys into this one
            raise ConfigError(f"data.source ({self.label}) takes no {sorted(unknown)}: `+prompts=...` replaces the "
                              "data preset, so leave `data=...` off the command line (or remove those keys)")
        if answers not in ANSWERS:
            raise ConfigError(f"data.source.answers must be one of {ANSWERS}, got {answers!r}")
        if overlong not in OVERLONG:
            raise ConfigError(f"data.source.overlong must be one of {OVERLONG}, got {overlong!r}")
        self.system_prompt, self.answers, self.overlong = system_prompt, answers, overlong
        self.min_answer_tokens = int(min_answer_tokens)
        self.max_examples, self.max_chars = max_examples, max_chars
        self._records: dict[str, list[PromptRecord]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ records
    def read(self, split: str) -> list[PromptRecord]:
        """Every record of ``split`` (``train`` | ``val``), in a stable order."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What picks the records besides their text (for :meth:`fingerprint`)."""
        return {}

    def records(self, split: str) -> list[PromptRecord]:
        """The split's records after ``max_examples`` / ``max_chars``, read once."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if split not in self._records:
            recs = list(self.read(split))
            if self.max_examples:
                recs = recs[: int(self.max_examples)]
            if self.max_chars:
                total, cut = 0, len(recs)
                for i, r in enumerate(recs):
                    total += len(r.prompt) + len(r.answer or "")
                    if total >= self.max_chars:
                        cut = i + 1
                        break
                recs = recs[:cut]
            self._records[split] = recs
        return self._records[split]

    def texts(self, split: str) -> list[str]:
        """The split's raw text (prompt, then answer), e.g. to train a tokenizer on."""
        return [r.prompt + ("\n" + r.answer if r.answer else "") for r in self.records(split)]

    def fingerprint(self, split: str) -> str:
        """Changes exactly when :meth:`texts` would."""
        h = hashlib.sha256(json.dumps([type(self).__name__, split, self.settings(), self.max_examples,
                                       self.max_chars], sort_keys=True, default=str).encode())
        for text in self.texts(split):
            h.update(text.encode())
            h.update(b"\0")
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ examples
    def examples(self, split: str, tokenizer, max_length: int) -> list[dict[str, Any]]:
        """One example per prompt: ``input_ids``, ``labels`` (-100 over the prompt) and ``meta``."""
        require_chat_template(tokenizer, f"data.source ({self.label})")
        eot = end_of_turn_id(tokenizer)  # one template render per split, not per prompt
        st = {"prompts": 0, "kept": 0, "with_answer": 0, "truncated": 0, "dropped_overlong": 0,
              "dropped_prompt_too_long": 0}
        out = []
        for r in self.records(split):
            st["prompts"] += 1
            e = self._example(r, tokenizer, max_length, eot, st)
            if e is not None:
                out.append(e)
        self.stats[split] = st
        log.info("%s [%s]: %d prompts -> %d examples (max_length %d): %d with a reference answer, %d answers "
                 "truncated, %d dropped over-long, %d dropped with the prompt alone too long", self.label, split,
                 st["prompts"], st["kept"], max_length, st["with_answer"], st["truncated"], st["dropped_overlong"],
                 st["dropped_prompt_too_long"])
        if split == "val" and out and not st["with_answer"]:
            log.warning("%s [val]: no example has a reference answer, so held-out metrics score no token; "
                        "distill-eval measures what these runs learn", self.label)
        return out

    def _example(self, r: PromptRecord, tokenizer, max_length: int, eot: int | None,
                 st: dict[str, int]) -> dict[str, Any] | None:
        prompt_ids = list(tokenizer(format_prompt(tokenizer, r.prompt, self.system_prompt),
                                    add_special_tokens=False)["input_ids"])
        if len(prompt_ids) + self.min_answer_tokens > max_length:
            st["dropped_prompt_too_long"] += 1
            return None
        if self.answers == "reference" and r.answer is not None:
            ids, labels, _ = encode_pair(tokenizer, r.prompt, r.answer, self.system_prompt, eot)
            if len(ids) > max_length:
                if self.overlong == "drop":
                    st["dropped_overlong"] += 1
                    return None
                ids, labels = ids[:max_length], labels[:max_length]
                st["truncated"] += 1
            st["with_answer"] += 1
        else:
            ids, labels = prompt_ids, [IGNORE_INDEX] * len(prompt_ids)
        st["kept"] += 1
        return {"input_ids": ids, "labels": labels, "meta": dict(r.meta)}
