"""Collect the smollm2_prune runs (<out>/seed<N>/summary.json) into results.json and table.md:
each row's held-out CE and top-1 agreement per seed, their mean ± std (n = seeds), and the gap
closed against the CE-only student of the same seed.

    python experiments/smollm2_prune/collect.py experiments/smollm2_prune/runs
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def main(out: Path) -> None:
    runs = {}
    for d in sorted(out.glob("seed*")):
        if not (d / "summary.json").exists():
            continue
        s = json.loads((d / "summary.json").read_text())
        wall = (d / "wall_seconds.txt").read_text().strip() if (d / "wall_seconds.txt").exists() else None
        runs[d.name] = {"teacher": s["teacher"], "init": {"loss": s.get("summary/init_loss")},
                        "baseline": s["baseline"], "student": s["student"],
                        "gap_closed": s.get("summary/gap_closed"), "vs_baseline": s.get("summary/vs_baseline"),
                        "wall_seconds": int(wall) if wall else None}
    if not runs:
        raise SystemExit(f"no finished runs under {out}")
    rows = [("teacher (SmolLM2-135M-Instruct)", [r["teacher"]["loss"] for r in runs.values()], None),
            ("pruned student at initialisation", [r["init"]["loss"] for r in runs.values()], None),
            ("pruned student, CE only", [r["baseline"]["loss"] for r in runs.values()], None),
            ("pruned student, forward KL", [r["student"]["loss"] for r in runs.values()],
             [r["student"].get("agreement") for r in runs.values()])]
    lines = [f"n = {len(runs)} seeds ({', '.join(runs)})", "",
             "| model | held-out CE (nats/token) | top-1 agreement |", "|---|---|---|"]
    for name, ce, agree in rows:
        lines.append(f"| {name} | {mean_std(ce)} | {mean_std(agree) if agree and None not in agree else '-'} |")
    gaps = [100 * r["gap_closed"] for r in runs.values() if r["gap_closed"] is not None]
    diffs = [r["vs_baseline"] for r in runs.values() if r["vs_baseline"] is not None]
    if gaps:
        lines.append(f"\ngap closed (CE-only → teacher): {mean_std(gaps)} %; "
                     f"forward KL better than CE only by {mean_std(diffs)} nats/token")
    (HERE / "results.json").write_text(json.dumps(runs, indent=2) + "\n")
    (HERE / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs")
