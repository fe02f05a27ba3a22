"""Answers recorded in a JSONL (an API teacher's generated dataset) as a completion source."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from distill.evaluation.settings import GenerationResult
from distill.evaluation.sources.base import CompletionSource, Role, name_from_path
from distill.jsonl import iter_jsonl

ANSWER_TEXT_FIELDS = ("completion", "response", "answer", "output", "text", "content")


class AnswersSource(CompletionSource):
    """Answers recorded earlier, e.g. the API teacher's generated dataset (JSONL).

    Rows are matched to tasks by ``task_id`` when the rows have one, else by the prompt text
    (the benchmark prompt, or the chat message built from it). A row may carry one answer or a
    list of answers; several rows per task add up. Field names are configurable through
    ``answers_fields: {task_id: ..., prompt: ..., text: ...}``
    (``conf/eval/model/answers.yaml``).

    Args:
        answers: the JSONL file.
        answers_fields: field names, ``{task_id, prompt, text}``.
        chat: ``false`` when the answers continue the code prompt instead of replying to it.
        name, role: as in :class:`CompletionSource`.
    """

    kind = "answers"
    style = "chat"
    wants_raw_prompts = True  # rows without a task_id are matched by the task's own prompt too

    def __init__(self, answers: str | Path, answers_fields: Mapping[str, str] | None = None,
                 chat: Any = "auto", name: str | None = None, role: Role = "model"):
        super().__init__(name, role)
        self.path = Path(answers)
        self.fields = dict(answers_fields or {})
        self.chat = chat
        # recorded answers are chat replies unless the config says chat: false
        self.style = "completion" if chat is False else "chat"
        self.by_id: dict[str, list[str]] | None = None
        self.by_prompt: dict[str, list[str]] = {}

    def default_name(self) -> str:
        return name_from_path(str(self.path))

    def settings(self) -> dict[str, Any]:
        return {"answers": str(self.path), "answers_fields": self.fields, "chat": self.chat}

    def open(self, benchmark=None, work_dir=None) -> None:
        if self.by_id is not None:
            return
        if not self.path.exists():
            raise FileNotFoundError(f"model.answers: {self.path} does not exist")
        fields = self.fields
        self.by_id = {}
        id_key, prompt_key = fields.get("task_id", "task_id"), fields.get("prompt", "prompt")
        text_key = fields.get("text")
        for lineno, row in iter_jsonl(self.path):  # the one JSONL reader: errors name the line
            key = text_key or next((k for k in ANSWER_TEXT_FIELDS if k in row), None)
            if key is None or key not in row:
                raise KeyError(f"{self.path}:{lineno}: no answer field (looked for "
                               f"{[text_key] if text_key else list(ANSWER_TEXT_FIELDS)}); "
                               f"set model.answers_fields.text")
            answers = row[key] if isinstance(row[key], list) else [row[key]]
            if row.get(id_key) is not None:
                self.by_id.setdefault(str(row[id_key]), []).extend(answers)
            elif row.get(prompt_key) is not None:
                self.by_prompt.setdefault(str(row[prompt_key]).strip(), []).extend(answers)
            else:
                raise KeyError(f"{self.path}:{lineno}: needs {id_key!r} or {prompt_key!r}")

    def generate(self, requests, settings, stop, style: str = "chat",
                 raw_prompts: Sequence[str] | None = None, **kwargs) -> GenerationResult:
        self.open()
        n = int(settings.n)
        texts = []
        for idx, (task_id, text) in enumerate(requests):
            found = self.by_id.get(task_id)
            if found is None:
                for cand in (text, raw_prompts[idx] if raw_prompts else None):
                    if cand is not None and cand.strip() in self.by_prompt:
                        found = self.by_prompt[cand.strip()]
                        break
            if not found:
                raise KeyError(f"model.answers: {self.path} has no answer for task {task_id}")
            if len(found) < n:
                raise ValueError(f"model.answers: {self.path} has {len(found)} answer(s) for "
                                 f"{task_id}, generation.n={n} needs {n}")
            texts.append(list(found[:n]))
        return GenerationResult(texts, [[0] * n for _ in texts], 0.0)

