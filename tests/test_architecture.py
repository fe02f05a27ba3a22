"""The shape of the house: imports point one way, Lightning's private state is touched in one
pinned module only, and the contracts are types."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lightning
import pytest

PKG = Path(__file__).resolve().parents[1] / "distill"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of distill it imports``, counting imports inside functions too."""
    files = {_module(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for me, path in files.items():
        pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
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
                        deps.add(cand)
                        break
        graph[me] = deps
    return graph


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


def test_low_modules_import_nothing_above_them():
    graph = import_graph()
    assert graph["distill.types"] == set()
    assert graph["distill.config"] <= {"distill"}
    for low in ("distill.losses.functional", "distill.losses.components", "distill.losses.combine"):
        above = {d for d in graph[low] if not d.startswith(("distill.losses", "distill.types"))} - {"distill"}
        assert not above, f"{low} imports {above}"
    nothing_imports = {"distill.pipeline"}
    for mod, deps in graph.items():
        assert not deps & nothing_imports, f"{mod} imports the top of the house {deps & nothing_imports}"


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
