"""Functions cut out of a real source tree: Python via :mod:`ast`, other languages via tree-sitter.

They become "explain / document / test / refactor / fix" prompts that carry real code.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path
from typing import Iterable

from distill.teacher_data.catalogue import LANGUAGES

EXTENSIONS = {".py": "python", ".js": "javascript", ".mjs": "javascript", ".java": "java", ".cpp": "cpp",
              ".cc": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".go": "go", ".rs": "rust"}

_TS_FUNCTION_NODES = {
    "javascript": {"function_declaration", "method_definition"},
    "java": {"method_declaration", "constructor_declaration"},
    "cpp": {"function_definition"},
    "go": {"function_declaration", "method_declaration"},
    "rust": {"function_item"},
}


def _python_functions(text: str) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            seg = lines[start - 1:node.end_lineno]
            pad = node.col_offset  # re-indent methods so the snippet parses on its own
            seg = [ln[pad:] if ln[:pad].strip() == "" else ln for ln in seg]
            out.append((node.name, "\n".join(seg)))
    return out


def _ts_functions(text: str, language: str) -> list[tuple[str, str]]:
    from distill.teacher_data.syntax import ts_parser

    parser = ts_parser(language)
    if parser is None:
        return []
    data = text.encode("utf-8")
    tree = parser.parse(data)
    out = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type in _TS_FUNCTION_NODES[language] and not node.has_error:
            name_node = node.child_by_field_name("name")
            if name_node is None:
                decl = node.child_by_field_name("declarator")
                while decl is not None and decl.child_by_field_name("declarator") is not None:
                    decl = decl.child_by_field_name("declarator")
                name_node = decl
            name = data[name_node.start_byte:name_node.end_byte].decode("utf-8", "replace") if name_node else "function"
            out.append((name, data[node.start_byte:node.end_byte].decode("utf-8", "replace")))
        stack.extend(reversed(node.children))
    return out


def _is_test_path(rel: Path, exclude_dirs: set[str]) -> bool:
    """Skip vendored/build folders and test code: tests make poor "explain this function" material."""
    dirs = rel.parts[:-1]
    if any(d in exclude_dirs or "test" in d.lower() for d in dirs):
        return True
    name = rel.name.lower()
    return name.startswith("test_") or name.split(".")[0].endswith(("_test", "_tests", "test"))


def extract_functions(root: str | Path, *, languages: Iterable[str] = LANGUAGES, min_lines: int = 5,
                      max_lines: int = 60, max_files: int = 400,
                      exclude_dirs: Iterable[str] = ("__pycache__", "node_modules", ".git", "site-packages",
                                                     "vendor", "third_party", "build", "dist"),
                      seed: int = 0) -> list[dict]:
    """Functions of a source tree with ``min_lines..max_lines`` lines, in a deterministic order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"prompts.code_files.root: folder {root} does not exist")
    langs = set(languages)
    excl = set(exclude_dirs)
    files = [p for p in sorted(root.rglob("*")) if p.suffix in EXTENSIONS and EXTENSIONS[p.suffix] in langs
             and p.is_file() and not _is_test_path(p.relative_to(root), excl)]
    if len(files) > max_files:  # an even, seeded sample of the tree, not its alphabetical head
        files = sorted(random.Random(seed).sample(files, max_files))
    out = []
    for p in files:
        lang = EXTENSIONS[p.suffix]
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        funcs = _python_functions(text) if lang == "python" else _ts_functions(text, lang)
        for name, code in funcs:
            n = code.count("\n") + 1
            if min_lines <= n <= max_lines:
                out.append({"path": p.relative_to(root).as_posix(), "name": name, "language": lang,
                            "code": code, "lines": n})
    return out

