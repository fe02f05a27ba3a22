"""The API-teacher modules import one way: no cycles, ``batches`` never imports ``generate``."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "distill" / "teacher_data"


def api_imports(path: Path) -> set[str]:
    """Every ``distill.teacher_data.<module>`` a file imports, inside functions too."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "distill.teacher_data":
                out |= {a.name for a in node.names}
            elif node.module.startswith("distill.teacher_data."):
                out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[2] for a in node.names if a.name.startswith("distill.teacher_data.")}
    return out


def test_no_import_cycles_among_the_api_teacher_modules():
    graph = {p.stem: api_imports(p) - {p.stem} for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert "generate" not in graph["batches"] and "batches" in graph["generate"]
    assert not any("cli" in deps for deps in graph.values())

    def reach(start: str, seen: set[str]) -> set[str]:
        for d in graph.get(start, ()):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    cycles = [m for m in graph if m in reach(m, set())]
    assert cycles == []


def test_prompt_concepts_live_in_one_file_each():
    lengths = {p.stem: len(p.read_text().splitlines()) for p in PKG.glob("*.py")}
    assert lengths["prompts"] < 300  # was 546 lines holding five concepts
    defined: dict[str, str] = {}
    for p in PKG.glob("*.py"):  # one copy of each public helper
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                assert node.name not in defined or node.name == "main", (node.name, defined.get(node.name), p.stem)
                defined[node.name] = p.stem
