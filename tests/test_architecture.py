"""The shape of the house: imports point one way, down the layer order that docs/architecture.md
lists, Lightning's private state is touched in one pinned module only, the contracts are types, and a
long file says why it stays whole."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lightning
import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "distill"
DOC = REPO / "docs" / "architecture.md"

# The layer order is written once, in docs/architecture.md under this heading: each top-level bullet
# is one layer (lowest first) and its members are the bold code names in it, a module file
# (**`types.py`**, **`evaluation/stdio.py`**) or a package (**`losses/`**). A module belongs to the
# most specific entry that names it, so a low sub-package (**`evaluation/benchmarks/`**) may sit
# below its parent package.
LAYER_HEADING = "## The layers, lowest first"
ENTRY = re.compile(r"\*\*`([A-Za-z_][\w/]*?(?:\.py|/))`\*\*")

# Imports allowed to point upward, each with its reason. Keep it empty or tiny: an upward import is
# usually a helper that belongs lower, or a layer placed wrong in the doc.
UPWARD_EXCEPTIONS: dict[tuple[str, str], str] = {}

# A file longer than this holds more than one concept, unless its docstring says why it stays whole.
MAX_LINES = 450


def _module(path: Path, pkg: Path = PKG) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_files(pkg: Path = PKG) -> dict[str, Path]:
    return {_module(p, pkg): p for p in pkg.rglob("*.py")}


def import_edges(pkg: Path = PKG) -> dict[tuple[str, str], int]:
    """``(module, module of the package it imports) -> line`` of the first such import, counting
    imports inside functions and under ``TYPE_CHECKING`` too."""
    files = module_files(pkg)
    edges: dict[tuple[str, str], int] = {}
    for me, path in files.items():
        here = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                # ``from pkg import submodule`` depends on the submodule, not on the package's __init__
                subs = [f"{base}.{a.name}" for a in node.names]
                names = [n for n in subs if n in files] or [base]
                if len(names) < len(subs):
                    names.append(base)
            for name in names:
                parts = name.split(".")
                for i in range(len(parts), 0, -1):  # the longest prefix that is one of our modules
                    cand = ".".join(parts[:i])
                    if cand in files and cand != me:
                        edges[(me, cand)] = min(edges.get((me, cand), node.lineno), node.lineno)
                        break
    return edges


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` (see :func:`import_edges`)."""
    graph: dict[str, set[str]] = {m: set() for m in module_files(pkg)}
    for me, dep in import_edges(pkg):
        graph[me].add(dep)
    return graph


def doc_layers(text: str, pkg_name: str = "distill") -> list[list[str]]:
    """The layers the doc lists, lowest first, as module names: ``pkg.mod`` for a file entry (that
    module alone), ``pkg.sub.*`` for a package entry (it and everything under it)."""
    if LAYER_HEADING not in text:
        raise AssertionError(f"docs/architecture.md has no {LAYER_HEADING!r} section")
    section = text.split(LAYER_HEADING, 1)[1].split("\n## ", 1)[0]
    layers = []
    for bullet in re.split(r"^- ", section, flags=re.M)[1:]:
        entries = []
        for name in ENTRY.findall(bullet):
            if name.endswith("/"):
                entries.append(f"{pkg_name}.{name.rstrip('/').replace('/', '.')}.*")
            else:
                mod = name[:-3].replace("/", ".")
                entries.append(pkg_name if mod == "__init__" else f"{pkg_name}.{mod}")
        if entries:
            layers.append(entries)
    return layers


def layer_of(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """``(layer index, entry)`` of the most specific entry naming ``module``; None if none does."""
    best = None
    for i, entries in enumerate(layers):
        for entry in entries:
            base = entry[:-2] if entry.endswith(".*") else entry
            hit = module == base or (entry.endswith(".*") and module.startswith(base + "."))
            if hit and (best is None or len(base) > len(best[1].removesuffix(".*"))):
                best = (i, entry)
    return best


def upward_imports(edges: dict[tuple[str, str], int], layers: list[list[str]], files: dict[str, Path], root: Path,
                   allowed=UPWARD_EXCEPTIONS) -> list[str]:
    """Every import from a lower layer to a higher one, as ``file:line imports module (layers)``."""
    out = []
    for (me, dep), line in sorted(edges.items()):
        mine, theirs = layer_of(me, layers), layer_of(dep, layers)
        if mine is None or theirs is None or theirs[0] <= mine[0] or (me, dep) in allowed:
            continue
        out.append(f"{files[me].relative_to(root)}:{line} imports {dep}, which is in layer {theirs[0] + 1} "
                   f"({theirs[1]}), above its own layer {mine[0] + 1} ({mine[1]})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_among_distill_modules():
    found = cycles(import_graph())
    assert not found, "import cycles (imports must point one way): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_layer_checker_catches_an_upward_import(tmp_path):
    """A synthetic package: ``low`` imports ``high`` inside a function, against the doc's order."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name, text in {"__init__.py": "", "low.py": "def f():\n    from pkg.sub.high import x\n    return x\n",
                       "sub/__init__.py": "", "sub/high.py": "from pkg import low\nx = 1\n",
                       "sub/base.py": "", "top.py": "import pkg.sub.high\n"}.items():
        (pkg / name).write_text(text)
    doc = (f"# Doc\n\n{LAYER_HEADING}\n\n- **`__init__.py`**, **`low.py`**, **`sub/base.py`**: the bottom.\n"
           "- **`sub/`**: above it,\n  continued.\n- **`top.py`**\n\n## Next section\n- **`low.py`** is not a layer\n")
    layers = doc_layers(doc, "pkg")
    assert layers == [["pkg", "pkg.low", "pkg.sub.base"], ["pkg.sub.*"], ["pkg.top"]]
    assert layer_of("pkg.sub.base", layers) == (0, "pkg.sub.base")  # the most specific entry wins
    assert layer_of("pkg.sub", layers) == (1, "pkg.sub.*")
    found = upward_imports(import_edges(pkg), layers, module_files(pkg), tmp_path)
    assert found == ["pkg/low.py:2 imports pkg.sub.high, which is in layer 2 (pkg.sub.*), above its own layer 1 "
                     "(pkg.low)"]
    assert upward_imports(import_edges(pkg), layers, module_files(pkg), tmp_path,
                          allowed={("pkg.low", "pkg.sub.high"): "why"}) == []


def test_every_module_has_a_layer_in_the_doc_and_every_entry_a_module():
    layers = doc_layers(DOC.read_text())
    files = module_files()
    unplaced = sorted(m for m in files if layer_of(m, layers) is None)
    assert not unplaced, (f"modules with no layer in docs/architecture.md ({LAYER_HEADING!r}): {unplaced}; "
                          "add each to the lowest layer it fits (a bold **`name.py`** or **`package/`**)")
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    stale = [e for entries in layers for e in entries
             if (e.removesuffix(".*") not in packages if e.endswith(".*") else e not in files)]
    assert not stale, f"docs/architecture.md lists layers for modules that do not exist: {stale}"


def test_imports_follow_the_documented_layer_order():
    """Lower layers never import higher ones (imports inside functions count too)."""
    found = upward_imports(import_edges(), doc_layers(DOC.read_text()), module_files(), REPO)
    assert not found, ("imports against the layer order of docs/architecture.md (move the helper down, or "
                       "place the layer truthfully in the doc):\n" + "\n".join(found))
    unused = [k for k in UPWARD_EXCEPTIONS if k not in import_edges()]
    assert not unused, f"UPWARD_EXCEPTIONS lists imports that no longer exist: {unused}"


def test_the_lowest_contracts_import_nothing_of_distill():
    graph = import_graph()
    assert graph["distill.types"] == set()
    assert graph["distill.config"] <= {"distill"}


def test_a_long_file_says_why_it_stays_whole():
    """A file over MAX_LINES lines holds one concept only if its docstring says why it stays whole."""
    long = []
    for path in sorted(PKG.rglob("*.py")):
        n = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if n > MAX_LINES and "stays whole" not in " ".join(doc.split()):
            long.append(f"{path.relative_to(REPO)} ({n} lines)")
    assert not long, (f"files over {MAX_LINES} lines: split each along a seam a reader would name, or say in its "
                      "module docstring why it stays whole (the phrase 'stays whole'): " + ", ".join(long))


PRIVATE = re.compile(r"\b(?:trainer|fit_loop|epoch_loop|strategy|_trainer)\.(_\w+)|\._batches_that_stepped|"
                     r"\._logger_connector|\._checkpoint_connector|\._data_connector|\._results\b")


def test_private_lightning_state_is_touched_in_one_module_only():
    hits = []
    for path in PKG.rglob("*.py"):
        if path.name == "lightning_compat.py":
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line.split("#", 1)[0]):
                hits.append(f"{path.relative_to(PKG.parent)}:{lineno}: {line.strip()}")
    assert not hits, "private Lightning state outside distill/lightning_compat.py:\n" + "\n".join(hits)


def test_lightning_compat_is_pinned_to_the_installed_lightning(tmp_path):
    from distill import lightning_compat

    assert lightning.__version__.startswith(lightning_compat.TESTED_LIGHTNING), (
        f"Lightning {lightning.__version__} is installed but distill/lightning_compat.py was written for "
        f"{lightning_compat.TESTED_LIGHTNING}: check that its private attribute still exists, then update the pin")
    trainer = lightning.Trainer(max_steps=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    assert hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped")
    lightning_compat.set_logged_step(trainer, 7)
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == 7


def test_needs_and_teacher_kinds_are_types_and_a_typo_fails():
    from distill.losses.components import LossComponent
    from distill.types import Need, TeacherKind

    class Fine(LossComponent):
        needs = frozenset({"student_logits", Need.TEACHER_LOGITS})
        teacher_kinds = frozenset({"full"})

    assert Fine.needs == {Need.STUDENT_LOGITS, Need.TEACHER_LOGITS}
    assert Fine.teacher_kinds == {TeacherKind.FULL}
    with pytest.raises(TypeError, match=r"Typo.needs: unknown value 'student_logit'"):
        class Typo(LossComponent):
            needs = frozenset({"student_logit"})
    with pytest.raises(TypeError, match=r"teacher_kinds: unknown value 'ful'"):
        class KindTypo(LossComponent):
            teacher_kinds = frozenset({"ful"})
    with pytest.raises(AttributeError):
        Need.STUDENT_LOGIT  # noqa: B018


def test_the_module_constructor_builds_no_model(tiny_cfg):
    """Hydra calls the constructor; the weights load in configure_model (start of fit)."""
    from distill.build import build_components

    parts = build_components(tiny_cfg())
    assert parts.module.student is None and getattr(parts.teacher, "model", None) is None
    parts.load()
    assert parts.module.student is not None and parts.teacher.model is not None
    student = parts.module.student
    parts.module.configure_model()  # a second call (fit after load) keeps the same models
    assert parts.module.student is student


def test_loss_configure_runs_once(tiny_cfg, monkeypatch):
    from distill.build import build_components
    from distill.losses.combine import DistillationLoss

    calls = []
    configure = DistillationLoss.configure
    monkeypatch.setattr(DistillationLoss, "configure", lambda self, *a, **k: calls.append(1) or configure(self, *a, **k))
    build_components(tiny_cfg("loss=hidden")).load()
    assert len(calls) == 1
