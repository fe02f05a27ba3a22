"""Turn a model's raw text into the completion that is appended to the task prompt.

Two styles, because base and chat models answer differently:

* ``completion`` (base / code models): the text *continues* the prompt (a signature and
  docstring, or an MBPP docstring). It is cut at the first stop sequence, because a base model
  does not stop after the function: it goes on to write the next function, a ``print`` or a test.
* ``chat`` (instruction models): the answer is prose around a fenced code block that usually
  repeats the whole function. The code is extracted from the fence; if it defines the entry
  point it is appended after the prompt as new top-level code (the prompt's stub, whose body is
  only its docstring, is valid Python and simply gets redefined), so the prompt's imports and
  helper functions stay in place. A bare function body is treated as a continuation.

Either way the result satisfies the invariant the executor relies on:
``program = prompt + completion + tests``.
"""

from __future__ import annotations

import re
from typing import Sequence

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_PY_LANGS = {"", "python", "py", "python3", "py3", "pycon"}


def truncate_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """Cut ``text`` at the earliest occurrence of any stop sequence (the stop is dropped)."""
    if not stop:
        return text
    cut = len(text)
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block; an unterminated last fence counts."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def defines(code: str, name: str | None) -> bool:
    """Does ``code`` define function ``name`` at top level?"""
    if not name:
        return False
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in a chat answer: the fenced block that defines ``entry_point``, else the first
    Python block, else the whole text (a model that answered with bare code)."""
    blocks = [(lang, code) for lang, code in code_blocks(text) if lang in _PY_LANGS]
    if not blocks:
        return text.strip("\n")
    for _, code in blocks:
        if defines(code, entry_point):
            return code
    return blocks[0][1]


def strip_prompt_echo(text: str, prompt: str) -> str:
    """Drop a verbatim echo of the prompt (some servers return prompt + completion)."""
    if prompt and text.startswith(prompt):
        return text[len(prompt):]
    return text


def _is_body(code: str) -> bool:
    for line in code.splitlines():
        if line.strip():
            return line[0] in " \t"
    return False


def make_completion(raw: str, prompt: str, style: str, stop: Sequence[str] | None = None,
                    entry_point: str | None = None) -> str:
    """The completion to append after ``prompt`` (see the module docstring).

    Args:
        raw: what the model returned (new text only).
        prompt: the task's completion-style prompt.
        style: ``completion`` or ``chat``.
        stop: stop sequences (completion style).
        entry_point: the function under test, to pick the right fenced block.
    """
    if style == "completion":
        text = strip_prompt_echo(raw, prompt)
        if "```" in text and not prompt.rstrip().endswith("```"):
            # a base model that drifted into markdown: keep what precedes the fence
            text = text[: text.index("```")]
        return truncate_at_stop(text, stop)
    if style != "chat":
        raise ValueError(f"generation.style must be completion or chat, got {style!r}")
    code = extract_code(raw, entry_point)
    if _is_body(code) and not defines(code, entry_point):
        return code if code.endswith("\n") else code + "\n"
    return "\n" + code.strip("\n") + "\n"
