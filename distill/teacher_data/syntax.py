"""Code-block extraction and per-language syntax checking for teacher answers.

Python is checked with :mod:`ast` (the reference parser); JavaScript, Java, C++, Go and Rust with
tree-sitter grammars from PyPI (``tree-sitter-javascript`` etc.), which are real, error-recovering
parsers: ``has_error`` on the tree means the text is not valid in that language.

Answers contain *snippets*, not files: a Java method without its class, Go statements without a
``func``. Rejecting those would throw away good answers, so a snippet that fails as-is is retried
once inside the smallest wrapper that makes such a snippet legal (class / function body). Only a
snippet that fails both ways is a syntax error.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

TAGS = {
    "python": "python", "py": "python", "python3": "python", "py3": "python",
    "javascript": "javascript", "js": "javascript", "jsx": "javascript", "node": "javascript", "mjs": "javascript",
    "java": "java",
    "cpp": "cpp", "c++": "cpp", "cc": "cpp", "cxx": "cpp", "hpp": "cpp",
    "go": "go", "golang": "go",
    "rust": "rust", "rs": "rust",
}
_TS_MODULES = {"javascript": "tree_sitter_javascript", "java": "tree_sitter_java", "cpp": "tree_sitter_cpp",
               "go": "tree_sitter_go", "rust": "tree_sitter_rust"}
_WRAPPERS = {
    "java": ["class __Snippet {{\n{code}\n}}", "class __Snippet {{ void __f() {{\n{code}\n}} }}"],
    "go": ["package main\n{code}", "package main\nfunc __f() {{\n{code}\n}}"],
    "cpp": ["void __f() {{\n{code}\n}}"],
    "rust": ["fn __f() {{\n{code}\n}}"],
    "javascript": ["async function __f() {{\n{code}\n}}"],
}

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})[ \t]*(?P<tag>[^\s`{]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.MULTILINE | re.DOTALL)


@dataclass
class CodeBlock:
    tag: str            # the fence's info string, lower-cased ("" when untagged)
    language: str | None  # normalised language, None when not one we check
    code: str


def extract_code_blocks(text: str) -> list[CodeBlock]:
    """Fenced blocks (```` ``` ```` or ``~~~``) in order; an unclosed fence is not a block."""
    out = []
    for m in _FENCE.finditer(text or ""):
        tag = m.group("tag").strip().lower()
        out.append(CodeBlock(tag, TAGS.get(tag), m.group("body")))
    return out


@functools.lru_cache(maxsize=None)
def ts_parser(language: str):
    """A cached tree-sitter parser, or None (logged once) when the grammar package is missing."""
    mod_name = _TS_MODULES.get(language)
    if mod_name is None:
        return None
    try:
        import importlib

        import tree_sitter

        mod = importlib.import_module(mod_name)
        lang_fn = getattr(mod, "language", None) or getattr(mod, "language_cpp")
        return tree_sitter.Parser(tree_sitter.Language(lang_fn()))
    except Exception as e:  # noqa: BLE001 - missing or incompatible grammar: skip that language
        log.warning("syntax: no tree-sitter parser for %s (%s); install the 'api' extra "
                    "(pip install 'distill[api]') to check it", language, e)
        return None


def _doctest_to_code(code: str) -> str:
    lines = [ln[4:] for ln in code.splitlines() if ln.startswith((">>> ", "... "))]
    return "\n".join(lines)


def check_python(code: str) -> tuple[bool, str]:
    try:
        ast.parse(code)
        return True, ""
    except SyntaxError as e:
        if ">>> " in code:  # an interactive-session block: check the statements typed at the prompt
            try:
                ast.parse(_doctest_to_code(code))
                return True, ""
            except SyntaxError:
                pass
        return False, f"line {e.lineno}: {e.msg}"


def check_syntax(code: str, language: str) -> tuple[bool | None, str]:
    """``(ok, message)``; ``ok`` is None when the language cannot be checked here."""
    if language == "python":
        return check_python(code)
    parser = ts_parser(language)
    if parser is None:
        return None, f"no parser for {language}"
    tree = parser.parse(code.encode("utf-8"))
    if not tree.root_node.has_error:
        return True, ""
    for wrapper in _WRAPPERS.get(language, []):
        if not parser.parse(wrapper.format(code=code).encode("utf-8")).root_node.has_error:
            return True, ""
    node = _first_error(tree.root_node)
    where = f"line {node.start_point[0] + 1}" if node is not None else "somewhere"
    return False, f"{where}: {language} parse error"


def _first_error(node):
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type == "ERROR" or n.is_missing:
            return n
        stack.extend(reversed(n.children))
    return None


def check_blocks(blocks: list[CodeBlock], default_language: str | None = None,
                 check_untagged: bool = False) -> dict:
    """Check every block in a language we know. Returns counts and the first error per language.

    Untagged blocks are checked as ``default_language`` only when asked: they are as often program
    output or shell commands as code.
    """
    checked, failed, errors, unchecked = 0, 0, {}, 0
    for b in blocks:
        lang = b.language or (default_language if check_untagged and not b.tag else None)
        if lang is None:
            continue
        ok, msg = check_syntax(b.code, lang)
        if ok is None:
            unchecked += 1
            continue
        checked += 1
        if not ok:
            failed += 1
            errors.setdefault(lang, msg)
    return {"checked": checked, "failed": failed, "errors": errors, "unchecked": unchecked}
