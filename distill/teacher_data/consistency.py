"""Self-consistency: with ``n > 1`` samples per prompt, keep the one most likely to be right.

Ranking key, best first: (1) all code blocks parse, (2) the tests that come with the prompt (the
base task's asserts) or with the answer itself (``test_*`` functions, bare asserts) pass, (3) length
(shorter by default: among equally correct answers, the concise one is the better training target
and the cheaper one to train on).

Tests are executed, and executing model-written code is only acceptable in a sandbox we control:
the project's one sandbox (:mod:`distill.sandbox`, the one ``distill-eval`` runs
benchmarks in): a child process per program with a wall-clock timeout, its own process group,
CPU/memory/file-size limits, an empty temporary working directory, no stdin, and an environment
built from an allowlist, so no ``ANTHROPIC_API_KEY`` or other secret is visible to the code under
test. Its docstring says what it does not protect.
"""

from __future__ import annotations

import ast
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

from distill.sandbox import SandboxConfig, run_programs, scrubbed_env
from distill.teacher_data.syntax import check_blocks, extract_code_blocks

# Runs inside the child: the answer's code as module ``solution``, then the tests in the same
# namespace, then every zero-argument ``test_*`` function. Prints one JSON line.
_RUNNER = r'''
import json, sys, types, inspect, traceback
res = {"passed": 0, "failed": 0, "skipped": 0, "error": None}
try:
    mod = types.ModuleType("solution"); sys.modules["solution"] = mod
    ns = mod.__dict__
    cfg = _CONFIG
    for name in ("setup.py", "solution.py", "tests.py"):
        src = _SOURCES[name]
        if src.strip():
            exec(compile(src, name, "exec"), ns)
            if name == "tests.py" or (name == "solution.py" and cfg["module_asserts"]):
                res["passed"] += 1  # its module-level asserts ran through
    for name, fn in list(ns.items()):
        if name.startswith("test") and inspect.isfunction(fn) and fn.__module__ in ("solution", None):
            params = [p for p in inspect.signature(fn).parameters.values() if p.default is p.empty]
            if params:
                res["skipped"] += 1  # needs fixtures/parametrize: cannot call it bare
                continue
            try:
                fn(); res["passed"] += 1
            except Exception as e:
                res["failed"] += 1; res["error"] = res["error"] or f"{name}: {type(e).__name__}: {e}"[:300]
except BaseException as e:
    res["failed"] += 1; res["error"] = f"{type(e).__name__}: {e}"[:300]
sys.stdout.write("\n@@RESULT@@" + json.dumps(res) + "\n")
'''

def sandbox_env() -> dict[str, str]:
    """Only what a Python child needs to start; in particular no API keys or tokens."""
    return scrubbed_env()


@dataclass
class TestOutcome:
    status: str      # "passed", "failed", "timeout", "none" (nothing to run)
    passed: int = 0
    failed: int = 0
    error: str | None = None

    @property
    def score(self) -> int:
        return {"passed": 2, "none": 1}.get(self.status, 0)


def run_python_tests(code: str, tests: str = "", setup: str = "", timeout_s: float = 10.0,
                     mem_mb: int = 1024) -> TestOutcome:
    """Run ``setup`` + ``code`` + ``tests`` as one program in the sandbox."""
    sources = {"setup.py": setup or "", "solution.py": code, "tests.py": tests or ""}
    config_ = {"module_asserts": _module_asserts(code)}
    program = f"_SOURCES = {sources!r}\n_CONFIG = {config_!r}\n" + _RUNNER  # Python literals
    config = SandboxConfig(timeout=float(timeout_s), memory_mb=int(mem_mb), workers=1)
    result = run_programs([program], config)[0]
    if result.outcome == "timeout":
        return TestOutcome("timeout", error=f"timed out after {timeout_s}s")
    out = result.stdout or ""
    marker = out.rfind("@@RESULT@@")
    if marker < 0:
        tail = (result.stderr or out or result.message or "").strip().splitlines()[-1:] or [result.outcome]
        return TestOutcome("failed", failed=1, error=f"child died: {tail[0][:300]}")
    res = json.loads(out[marker + len("@@RESULT@@"):].strip().splitlines()[0])
    if res["failed"]:
        return TestOutcome("failed", res["passed"], res["failed"], res["error"])
    if res["passed"] == 0:
        return TestOutcome("none")
    return TestOutcome("passed", res["passed"], 0)


def _module_asserts(code: str) -> bool:
    try:
        return any(isinstance(n, ast.Assert) for n in ast.parse(code).body)
    except SyntaxError:
        return False


def _has_tests(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            return True
    return False


def python_code(answer: str) -> str:
    """The answer's Python blocks that parse, joined: what a user would paste into a file."""
    out = []
    for b in extract_code_blocks(answer):
        if b.language == "python":
            try:
                ast.parse(b.code)
            except SyntaxError:
                continue
            out.append(b.code)
    return "\n\n".join(out)


def evaluate_answer(answer: str, meta: dict[str, Any], timeout_s: float = 10.0) -> TestOutcome:
    """Run the tests a prompt or answer carries; ``none`` when there is nothing to run."""
    code = python_code(answer)
    tests = meta.get("tests") or ""
    setup = meta.get("setup_code") or ""
    if not code or (not tests and not _has_tests(code)):
        return TestOutcome("none")
    return run_python_tests(code, tests, setup, timeout_s=timeout_s)


@dataclass
class Ranked:
    record: dict[str, Any]
    syntax_ok: bool
    tests: TestOutcome
    length: int

    def key(self, prefer: str = "shorter") -> tuple:
        length_key = -self.length if prefer == "shorter" else self.length
        return (self.syntax_ok, self.tests.score, length_key)


def rank_samples(samples: Iterable[dict[str, Any]], *, run_tests: bool = True, timeout_s: float = 10.0,
                 prefer: str = "shorter", workers: int = 2, completion_field: str = "completion") -> list[Ranked]:
    """Rank one prompt's samples best-first (ties keep sample order, so the result is deterministic)."""
    samples = list(samples)

    def one(rec):
        text = rec.get(completion_field) or ""
        meta = rec.get("meta") or {}
        syn = check_blocks(extract_code_blocks(text), meta.get("language"))
        tests = evaluate_answer(text, meta, timeout_s) if run_tests and meta.get("language", "python") == "python" \
            else TestOutcome("none")
        return Ranked(rec, syn["failed"] == 0, tests, len(text))

    if workers > 1 and len(samples) > 1:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            ranked = list(ex.map(one, samples))
    else:
        ranked = [one(s) for s in samples]
    order = sorted(range(len(ranked)), key=lambda i: (ranked[i].key(prefer), -i), reverse=True)
    return [ranked[i] for i in order]
