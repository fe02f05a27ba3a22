"""Planting one plausible bug in Python code, for "fix the bug" prompts that carry real code."""

from __future__ import annotations

import ast
import random

_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq}
_BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.FloorDiv: ast.Mult}


def plant_bug(source: str, rng: random.Random) -> tuple[str, str] | None:
    """Return ``(buggy_source, description)`` with one plausible bug, or None if there is no site.

    The mutations are the classic ones reviewers miss: a boundary comparison (``<`` vs ``<=``), a
    flipped arithmetic operator and an off-by-one integer constant.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _CMP_SWAP:
                    sites.append(("cmp", node, i))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            sites.append(("bin", node, None))
        elif isinstance(node, ast.Constant) and type(node.value) is int and node.value in (0, 1, 2):
            sites.append(("const", node, None))
    if not sites:
        return None
    kind, node, i = sites[rng.randrange(len(sites))]
    if kind == "cmp":
        node.ops[i] = _CMP_SWAP[type(node.ops[i])]()
        what = "comparison"
    elif kind == "bin":
        node.op = _BIN_SWAP[type(node.op)]()
        what = "arithmetic operator"
    else:
        node.value = node.value + 1
        what = "constant"
    buggy = ast.unparse(tree)
    return (buggy, what) if buggy != ast.unparse(ast.parse(source)) else None

