"""The rationale response format: ask for reasoning, then code, and split the answer in two.

"Distilling step-by-step" (Hsieh et al., 2023) trains a small model on the teacher's rationale as
well as its answer, as two tasks with their own prefixes. For that the rationale must come back
separable from the answer, so ``response_format: rationale`` appends :data:`INSTRUCTION` to every
prompt, and :func:`parse` splits the reply at the tags it asks for. A reply without both parts is
unparseable (``None``), and the filter drops it rather than guessing where the reasoning ends.

A rationale is only worth learning if it describes the code that follows. :func:`disagreements`
lists the functions the rationale names (``name()`` or a backticked ``name(...)``, or "function
`name`") that appear nowhere in the answer's code, neither defined nor called: the tell-tale of a
plan the code did not follow.
"""

from __future__ import annotations

import dataclasses
import re

from distill.teacher_data.promptset import Prompt
from distill.teacher_data.syntax import extract_code_blocks

RESPONSE_FORMATS = ("plain", "rationale")
INSTRUCTION = ("Structure your reply in two parts. First, inside <rationale> and </rationale>, reason step by "
               "step: what the task requires, the approach you choose and why, the functions you will write "
               "(by name) and the edge cases. Then, inside <answer> and </answer>, give the final code in fenced "
               "code blocks tagged with the language, and nothing else.")

_RATIONALE = re.compile(r"<rationale>\s*(.*?)\s*</rationale>", re.S | re.I)
_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S | re.I)
_MENTIONS = (
    re.compile(r"`(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*)\s*\([^`\n]*\)`"),   # `name(args)` / `obj.name()`
    re.compile(r"(?<![\w.`])([A-Za-z_]\w*)\(\)"),                         # name()
    re.compile(r"\b(?:function|method|helper)\s+`([A-Za-z_]\w*)`", re.I),  # function `name`
)
_IDENT = re.compile(r"[A-Za-z_]\w*")


def with_response_format(p: Prompt, fmt: str) -> Prompt:
    """``p`` asking for ``fmt``; a new prompt (and id) unless the format is ``plain``."""
    if fmt not in RESPONSE_FORMATS:
        raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}, got {fmt!r}")
    if fmt == "plain":
        return p
    return dataclasses.replace(p, text=f"{p.text}\n\n{INSTRUCTION}", response_format=fmt, id="")


def parse(text: str) -> tuple[str, str] | None:
    """``(rationale, answer)`` of a reply in the rationale format, or ``None`` if either is missing."""
    r, a = _RATIONALE.search(text or ""), _ANSWER.search(text or "")
    if not r or not a or not r.group(1).strip() or not a.group(1).strip():
        return None
    return r.group(1).strip(), a.group(1).strip()


def mentioned_functions(rationale: str) -> set[str]:
    """Names the rationale writes as function references (see the module docstring)."""
    return {m.group(1) for pat in _MENTIONS for m in pat.finditer(rationale or "")}


def code_identifiers(answer: str) -> set[str]:
    """Every identifier in the answer's code blocks (the whole answer if it has none)."""
    blocks = extract_code_blocks(answer or "")
    code = "\n".join(b.code for b in blocks) if blocks else (answer or "")
    return set(_IDENT.findall(code))


def disagreements(rationale: str, answer: str) -> list[str]:
    """Functions the rationale names that the answer's code neither defines nor calls (sorted)."""
    return sorted(mentioned_functions(rationale) - code_identifiers(answer))
