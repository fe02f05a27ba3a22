"""One teacher request (:class:`Prompt`), its stable id, and the ``prompts.jsonl`` file format.

Every prompt gets a stable ``id``: a hash of its text and the settings that shaped it, so the id
changes exactly when the request would, and a rerun finds the answers already paid for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from distill.jsonl import iter_jsonl


@dataclass
class Prompt:
    """One request to the teacher. ``meta`` drives filtering (language, task type, tests)."""

    text: str
    family: str
    task_type: str
    language: str
    difficulty: str
    modifiers: list[str] = field(default_factory=list)
    source: str = ""           # base task name, "algorithm|variant", or "path::function"
    tests: str | None = None   # Python asserts the answer should pass (base tasks in Python)
    entry_point: str | None = None
    setup_code: str | None = None  # code run before the answer's own tests (e.g. the reference)
    response_format: str = "plain"  # "rationale": reasoning, then the answer (see rationale.py)
    id: str = ""

    def __post_init__(self):
        if not self.id:
            self.id = prompt_id(self.text, self.settings())

    def settings(self) -> dict[str, Any]:
        s = {"family": self.family, "task_type": self.task_type, "language": self.language,
             "difficulty": self.difficulty, "modifiers": sorted(self.modifiers), "source": self.source,
             "tests": self.tests}
        if self.response_format != "plain":  # only when set, so plain prompts keep their old ids
            s["response_format"] = self.response_format
        return s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Prompt":
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in keys})


def prompt_id(text: str, settings: Mapping[str, Any] | None = None) -> str:
    """16 hex chars of SHA-256 over the text and its settings (canonical JSON): stable across runs."""
    blob = json.dumps({"text": text, "settings": dict(settings or {})}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]



def write_prompts(prompts: list[Prompt], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves half a prompt file


def read_prompts(path: str | Path) -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    out = []
    for i, d in iter_jsonl(path):  # errors name the line
        if "text" not in d and "prompt" in d:  # accept a plain {"prompt": ...} file of the user's own
            d = {"text": d["prompt"], "family": d.get("family", "custom"), "task_type": d.get("task_type", "write"),
                 "language": d.get("language", "python"), "difficulty": d.get("difficulty", "medium"),
                 "tests": d.get("tests"), "entry_point": d.get("entry_point")}
        if "text" not in d:
            raise ValueError(f"{path}:{i}: a prompt needs a 'text' (or 'prompt') field")
        out.append(Prompt.from_dict(d))
    return out
