"""Prompt/answer pairs formatted with the student's chat template, prompt tokens masked.

This is the data side of sequence-level distillation from an API teacher: the teacher's answers
are the targets, so the student should learn ``p(answer | prompt)`` and nothing else. Two details
decide whether that is what actually trains:

* **Same format as inference.** Pairs are rendered with the tokenizer's own chat template (the one
  ``generate`` will use), so the student sees the exact special tokens it will see at test time.
  Base models without a template (CodeLlama-7B) get :data:`FALLBACK_TEMPLATE`, an instruction
  format that :func:`format_prompt` reproduces for generation.
* **Mask exactly the prompt.** The prompt is tokenized on its own and the answer continues from
  it, which is how generation sees it; every prompt token (system, user turn, the assistant
  header) gets label ``-100``, every answer token (including the end-of-turn token, so the
  student learns to stop) keeps its id.

Pairs longer than ``max_length`` are dropped or have their answer truncated (``overlong``), and the
counts are logged per split, so a too-small ``seq_len`` shows up as a number rather than as a
silently shrunken dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.data.conventions import end_of_turn_id
from distill.losses.functional import IGNORE_INDEX
from distill.jsonl import iter_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
FALLBACK_TEMPLATE = "{system_block}### Instruction:\n{prompt}\n\n### Response:\n"


def _has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(prompt: str, system: str | None, merge_system: bool = False) -> list[dict[str, str]]:
    if system and merge_system:
        return [{"role": "user", "content": f"{system}\n\n{prompt}"}]
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": prompt}]


def _render(tokenizer, messages, **kw) -> str:
    out = tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    if not isinstance(out, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(out).__name__}, expected str")
    return out


def format_prompt(tokenizer, prompt: str, system: str | None = None) -> str:
    """The text a student is given at inference: what the training prompt part rendered to."""
    if _has_template(tokenizer):
        try:
            return _render(tokenizer, _messages(prompt, system), add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates that reject a system role (e.g. Gemma)
            return _render(tokenizer, _messages(prompt, system, merge_system=True), add_generation_prompt=True)
    block = f"### System:\n{system}\n\n" if system else ""
    return FALLBACK_TEMPLATE.format(system_block=block, prompt=prompt)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer, prompt: str, completion: str, system: str | None = None,
                eot_id: int | None = None) -> tuple[list[int], list[int], bool]:
    """``(input_ids, labels, used_template)`` for one pair, before any length handling.

    Labels run through the template's end-of-turn token and stop there: what a template writes
    after it (ChatML's ``\n``) belongs to the next turn, and generation stops before it.
    ``eot_id`` is :func:`distill.data.conventions.end_of_turn_id` (computed when not given).
    """
    if _has_template(tokenizer):
        merge = False
        try:
            prompt_text = _render(tokenizer, _messages(prompt, system), add_generation_prompt=True)
        except Exception:  # noqa: BLE001
            merge = True
            prompt_text = _render(tokenizer, _messages(prompt, system, True), add_generation_prompt=True)
        full_text = _render(tokenizer, _messages(prompt, system, merge) + [{"role": "assistant", "content": completion}])
        if full_text.startswith(prompt_text) and len(full_text) > len(prompt_text):
            p_ids = _encode(tokenizer, prompt_text)
            a_ids = _encode(tokenizer, full_text[len(prompt_text):])
            eot = end_of_turn_id(tokenizer) if eot_id is None else eot_id
            labels = list(a_ids)
            if eot in a_ids:
                end = len(a_ids) - a_ids[::-1].index(eot)  # just past the answer's end-of-turn token
                labels[end:] = [IGNORE_INDEX] * (len(a_ids) - end)
            return p_ids + a_ids, [IGNORE_INDEX] * len(p_ids) + labels, True
        # A template that rewrites history (e.g. drops reasoning) breaks the prefix property:
        # fall back to prompt + answer + EOS, which is still what generation will produce.
        p_ids = _encode(tokenizer, prompt_text)
    else:
        p_ids = _encode(tokenizer, format_prompt(tokenizer, prompt, system))
        if getattr(tokenizer, "bos_token_id", None) is not None:
            p_ids = [tokenizer.bos_token_id] + p_ids
    a_ids = _encode(tokenizer, completion)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        a_ids = a_ids + [tokenizer.eos_token_id]
    return p_ids + a_ids, [IGNORE_INDEX] * len(p_ids) + a_ids, False


def _split_of(key: str, val_fraction: float, seed: int) -> str:
    h = int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:8], 16)
    return "val" if (h % 10_000) < val_fraction * 10_000 else "train"


class ChatPairsSource:
    """Data source (``examples(split, tokenizer, max_length)``) over a prompt/completion JSONL.

    The split is by ``prompt_id`` (or the prompt text), hashed with ``seed``: all samples of one
    prompt land on the same side, so validation never scores a prompt the student trained on.
    """

    def __init__(self, path: str, prompt_field: str = "prompt", completion_field: str = "completion",
                 val_fraction: float = 0.05, seed: int = 0, overlong: str = "drop", system_prompt: str | None = None,
                 system_field: str | None = None, min_answer_tokens: int = 8, max_examples: int | None = None,
                 max_chars: int | None = None):
        if overlong not in ("drop", "truncate"):
            raise ValueError(f"overlong must be 'drop' or 'truncate', got {overlong!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.path = Path(path)
        self.prompt_field, self.completion_field = prompt_field, completion_field
        self.val_fraction, self.seed, self.overlong = float(val_fraction), int(seed), overlong
        self.system_prompt, self.system_field = system_prompt, system_field
        self.min_answer_tokens = int(min_answer_tokens)
        self.max_examples = max_examples
        self.max_chars = max_chars  # cap on prompt+completion characters read (debug runs)
        self._records: list[dict[str, Any]] | None = None
        self.stats: dict[str, dict[str, int]] = {}

    def records(self) -> list[dict[str, Any]]:
        if self._records is not None:
            return self._records
        if not self.path.is_file():
            raise FileNotFoundError(f"ChatPairsSource: {self.path} does not exist (run distill-teacher-data first, "
                                    f"or point data.source.path at your prompt/completion JSONL)")
        recs = []
        for i, r in iter_jsonl(self.path):  # errors name the line
            for fld in (self.prompt_field, self.completion_field):
                if not isinstance(r.get(fld), str):
                    raise KeyError(f"{self.path}:{i}: field {fld!r} missing or not a string "
                                   f"(set prompt_field/completion_field to your file's names)")
            recs.append(r)
        if not recs:
            raise ValueError(f"ChatPairsSource: {self.path} holds no records")
        if self.max_examples:
            recs = recs[: self.max_examples]
        if self.max_chars:
            total, cut = 0, len(recs)
            for i, r in enumerate(recs):
                total += len(r[self.prompt_field]) + len(r[self.completion_field])
                if total >= self.max_chars:
                    cut = i + 1
                    break
            recs = recs[:cut]
        self._records = recs
        return self._records

    def split_records(self, split: str) -> list[dict[str, Any]]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        recs = self.records()
        keys = [str(r.get("prompt_id") or r[self.prompt_field]) for r in recs]
        sides = [_split_of(k, self.val_fraction, self.seed) for k in keys]
        if self.val_fraction > 0 and "val" not in sides and len(set(keys)) > 1:
            # Tiny sets can hash entirely into train; move one prompt over so validation exists.
            first = min(set(keys), key=lambda k: hashlib.sha1(f"{self.seed}:{k}".encode()).hexdigest())
            sides = ["val" if k == first else s for k, s in zip(keys, sides)]
        return [r for r, s in zip(recs, sides) if s == split]

    def texts(self, split: str) -> list[str]:
        """The split's raw text (prompt, then answer), e.g. for training a tokenizer on the run's data."""
        return [f"{r[self.prompt_field]}\n{r[self.completion_field]}" for r in self.split_records(split)]

    def fingerprint(self, split: str) -> str:
        """Changes exactly when :meth:`texts` would: the file's bytes and the settings that pick records."""
        h = hashlib.sha256(self.path.read_bytes() if self.path.is_file() else b"")
        h.update(json.dumps([split, self.prompt_field, self.completion_field, self.val_fraction, self.seed,
                             self.max_examples, self.max_chars]).encode())
        return h.hexdigest()[:16]

    def system_of(self, r: dict[str, Any]) -> str | None:
        if self.system_prompt is None and self.system_field:
            return r.get(self.system_field)
        return self.system_prompt

    def example(self, tokenizer, prompt: str, completion: str, system: str | None, max_length: int,
                st: dict[str, int]) -> dict[str, list[int]] | None:
        """One encoded pair after the ``overlong`` rule (``None`` if dropped), counted into ``st``."""
        st["records"] += 1
        eots = self.__dict__.setdefault("_eot_ids", {})  # one template render per tokenizer, not per pair
        if id(tokenizer) not in eots:
            eots[id(tokenizer)] = end_of_turn_id(tokenizer)
        ids, labels, templated = encode_pair(tokenizer, prompt, completion, system, eots[id(tokenizer)])
        st["template" if templated else "fallback_format"] += 1
        if len(ids) > max_length:
            n_prompt = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(labels))  # the masked prompt
            if self.overlong == "drop":
                st["dropped_overlong"] += 1
                return None
            if n_prompt + self.min_answer_tokens > max_length:
                st["dropped_prompt_too_long"] += 1
                return None
            ids, labels = ids[:max_length], labels[:max_length]
            st["truncated"] += 1
        st["kept"] += 1
        return {"input_ids": ids, "labels": labels}

    def examples(self, split: str, tokenizer, max_length: int) -> list[dict[str, list[int]]]:
        out = []
        st = _new_stats()
        for r in self.split_records(split):
            e = self.example(tokenizer, r[self.prompt_field], r[self.completion_field], self.system_of(r),
                             max_length, st)
            if e is not None:
                out.append(e)
        self.stats[split] = st
        _log_stats(f"{self.path.name} [{split}]", st, max_length)
        return out


def _new_stats() -> dict[str, int]:
    return {"records": 0, "kept": 0, "truncated": 0, "dropped_overlong": 0, "dropped_prompt_too_long": 0,
            "template": 0, "fallback_format": 0}


def _log_stats(what: str, st: dict[str, int], max_length: int) -> None:
    log.info("%s: %d pairs -> %d examples (max_length %d): %d dropped over-long, %d truncated, "
             "%d dropped with prompt alone too long; %d chat template, %d fallback format",
             what, st["records"], st["kept"], max_length, st["dropped_overlong"],
             st["truncated"], st["dropped_prompt_too_long"], st["template"], st["fallback_format"])


@dataclass
class Task:
    """One task of a multi-task set: a prompt prefix, the record fields that form the target, a weight."""

    name: str
    prefix: str
    target: list[str]
    weight: float = 1.0

    def __post_init__(self):
        if isinstance(self.target, str):
            self.target = [self.target]
        self.target = [str(t) for t in self.target]
        if not self.target:
            raise ValueError(f"data.source.tasks[{self.name}].target must name at least one field")
        if self.weight < 0:
            raise ValueError(f"data.source.tasks[{self.name}].weight must be >= 0, got {self.weight}")


class MultiTaskChatSource:
    """Several tasks over one prompt/answer JSONL, e.g. rationale + answer and answer-only.

    "Distilling step-by-step" (Hsieh et al., 2023) trains one student on two tasks told apart by a
    prefix: produce the teacher's rationale (here: then the answer), and produce the answer. Each
    task gives every pair one example: ``prefix + prompt`` is the (masked) prompt, the task's
    ``target`` fields joined by ``separator`` are the trained answer. A pair that lacks one of a
    task's fields (no rationale) yields no example for that task, counted in ``stats``.

    ``weight`` is the expected number of copies per pair in the training split (``1.5`` = once,
    plus once more for a seeded half of the pairs), so each task's share of the gradient follows
    its weight - in expectation the ``L = sum_t w_t L_t`` of the paper. Validation keeps every task
    once, so held-out loss weighs the tasks equally. The split is the prompt-id split of
    :class:`ChatPairsSource`, shared by all tasks: no validation prompt is trained on in any task.
    """

    def __init__(self, path: str, tasks: list[dict[str, Any]], separator: str = "\n\n", prompt_field: str = "prompt",
                 required_field: str = "answer", val_fraction: float = 0.05, seed: int = 0, overlong: str = "drop",
                 system_prompt: str | None = None, system_field: str | None = None, min_answer_tokens: int = 8,
                 max_examples: int | None = None, max_chars: int | None = None):
        self.tasks = [t if isinstance(t, Task) else Task(**dict(t)) for t in tasks]
        if not self.tasks:
            raise ValueError("data.source.tasks is empty: give at least one {name, prefix, target, weight}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"data.source.tasks: task names must be distinct, got {names}")
        self.separator = separator
        self.seed = int(seed)
        self.pairs = ChatPairsSource(path, prompt_field=prompt_field, completion_field=required_field,
                                     val_fraction=val_fraction, seed=seed, overlong=overlong,
                                     system_prompt=system_prompt, system_field=system_field,
                                     min_answer_tokens=min_answer_tokens, max_examples=max_examples,
                                     max_chars=max_chars)
        self.stats: dict[str, dict[str, dict[str, int]]] = {}

    def target(self, task: Task, r: dict[str, Any]) -> str | None:
        parts = [r.get(f) for f in task.target]
        if not all(isinstance(x, str) and x.strip() for x in parts):
            return None
        return self.separator.join(parts)

    def texts(self, split: str) -> list[str]:
        """Every task's prompt and target text for the split (what the student will read)."""
        pf = self.pairs.prompt_field
        out = []
        for task in self.tasks:
            for r in self.pairs.split_records(split):
                target = self.target(task, r)
                if target is not None:
                    out.append(f"{task.prefix}{r[pf]}\n{target}")
        return out

    def fingerprint(self, split: str) -> str:
        tasks = json.dumps([[t.name, t.prefix, t.target, t.weight] for t in self.tasks] + [self.separator])
        return hashlib.sha256((self.pairs.fingerprint(split) + tasks).encode()).hexdigest()[:16]

    def copies(self, task: Task, key: str) -> int:
        whole = int(task.weight)
        frac = task.weight - whole
        u = int(hashlib.sha1(f"{self.seed}:{task.name}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return whole + (1 if u < frac else 0)

    def examples(self, split: str, tokenizer, max_length: int) -> list[dict[str, list[int]]]:
        out = []
        self.stats[split] = {}
        pf = self.pairs.prompt_field
        for task in self.tasks:
            st = {**_new_stats(), "missing_field": 0, "copies": 0}
            for r in self.pairs.split_records(split):
                target = self.target(task, r)
                if target is None:
                    st["missing_field"] += 1
                    continue
                e = self.pairs.example(tokenizer, task.prefix + r[pf], target, self.pairs.system_of(r), max_length, st)
                if e is None:
                    continue
                n = 1 if split != "train" else self.copies(task, str(r.get("id") or r.get("prompt_id") or r[pf]))
                out.extend(dict(e) for _ in range(n))
                st["copies"] += n
            self.stats[split][task.name] = st
            _log_stats(f"{self.pairs.path.name} [{split}] task {task.name!r} (weight {task.weight})", st, max_length)
        return out
