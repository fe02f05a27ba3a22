"""``distill-compare``: one table and a few plots for a sweep.

    distill-compare multirun/train/2026-11-22_10-00-00            # local run dirs of a -m sweep
    distill-compare --wandb my-team/distill --group 2026-11-22_10-00-00   # a W&B group (online)

Writes into ``<sweep dir>/compare/`` (or ``--out``):

- ``comparison.md`` and ``comparison.csv``: one row per run, best first by the objective; columns
  are the swept parameters (the overrides whose values differ between runs) and the final metrics;
- ``val_curves.png``: the validation metrics of every run against the step;
- ``objective_vs_params.png``: the objective against each swept parameter (one line per setting of
  the other swept parameters).

Seeds: runs that differ only in ``seed`` are one setting measured several times. When the sweep
varies ``seed``, they become **one row** with ``mean ± std`` (sample standard deviation) of every
metric and ``n``, the number of runs with a value; curves show the mean with a ±1 std band and
the objective plot error bars (``--per-run`` keeps one row per run). ``--relative-to KEY=VALUE``
adds, for each ``--relative`` metric (default ``time/step_s``), the ratio of a row's mean to the
mean of the one row with that setting (e.g. step time relative to ``loss=kd``; several pairs
``K=V,K2=V2`` single one out).

Runs are read by :mod:`distill.compare.load`, tabled by :mod:`distill.compare.table` and drawn by
:mod:`distill.compare.plots`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distill.compare.load import Run, group_runs, load_local, load_wandb, varies_seed
from distill.compare.plots import plot_curves, plot_objective
from distill.compare.table import DEFAULT_METRICS, build_table, header, infer_direction, to_markdown, write_csv


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    columns: list[str]
    params: list[str]
    objective: str
    direction: str
    files: dict[str, Path]


def compare(runs: Sequence[Run], out_dir: str | Path, objective: str | None = None, direction: str = "auto",
            metrics: Sequence[str] = DEFAULT_METRICS, title: str = "", per_run: bool = False,
            relative: dict[str, str] | None = None,
            relative_metrics: Sequence[str] = ("time/step_s",)) -> Comparison:
    """Write the table (Markdown, CSV) and the plots for ``runs`` into ``out_dir``.

    When the runs vary ``seed`` (and not ``per_run``), runs that differ only in it are aggregated
    into one row each (see the module docstring); ``relative`` then adds ``<metric>_rel`` columns.
    """
    if not runs:
        raise ValueError("distill-compare: no runs to compare")
    if objective is None:
        named = {r.config.get("objective") for r in runs if r.config.get("objective")}
        objective = named.pop() if len(named) == 1 else "val/loss"
    if direction == "auto":
        direction = infer_direction(objective, runs)
    if direction not in ("min", "max"):
        raise ValueError(f"distill-compare: --direction must be auto, min or max, got {direction!r}")
    aggregate = not per_run and (varies_seed(runs) or bool(relative))
    relative = relative if aggregate else None
    groups = group_runs(runs, by_seed=aggregate)
    rows, columns, params = build_table(groups, objective, direction, aggregate, metrics, relative, relative_metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "comparison.md", "csv": out / "comparison.csv"}
    text = header(title, groups, objective, direction, params, aggregate, relative)
    files["markdown"].write_text(text + to_markdown(rows, columns) + "\n")
    write_csv(rows, columns, files["csv"])
    curves = plot_curves(groups, params, out / "val_curves.png", aggregate)
    if curves:
        files["curves"] = curves
    vs = plot_objective(groups, params, objective, out / "objective_vs_params.png", aggregate)
    if vs:
        files["objective"] = vs
    return Comparison(rows, columns, params, objective, direction, files)


def _relative_arg(text: str | None) -> dict[str, str] | None:
    """``"loss=kd,experiment=x"`` -> ``{"loss": "kd", "experiment": "x"}``."""
    if text is None:
        return None
    pairs = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"distill-compare: --relative-to takes KEY=VALUE[,KEY=VALUE...] (e.g. loss=kd), got {text!r}")
        pairs[key] = value
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill-compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", nargs="?", help="a multirun sweep directory (or one run directory)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="compare W&B runs instead (needs the network)")
    parser.add_argument("--group", help="with --wandb: the W&B group (a sweep's name)")
    parser.add_argument("--out", help="output directory (default: <sweep_dir>/compare or ./compare-<group>)")
    parser.add_argument("--objective", help="metric to rank by (default: the runs' `objective`, else val/loss)")
    parser.add_argument("--direction", default="auto", choices=["auto", "min", "max"])
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="metric columns to show")
    parser.add_argument("--per-run", action="store_true", help="one row per run even when the sweep varies seed")
    parser.add_argument("--relative-to", metavar="KEY=VALUE",
                        help="add <metric>_rel columns: each row's mean over the mean of this setting (e.g. loss=kd)")
    parser.add_argument("--relative", nargs="+", default=["time/step_s"], help="metrics for --relative-to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if bool(args.sweep_dir) == bool(args.wandb):
        parser.error("give a sweep directory or --wandb ENTITY/PROJECT (not both)")
    try:
        if args.wandb:
            runs = load_wandb(args.wandb, args.group)
            out = args.out or f"compare-{(args.group or args.wandb).replace('/', '_')}"
            title = f"W&B {args.wandb}" + (f", group {args.group}" if args.group else "")
        else:
            runs = load_local(args.sweep_dir)
            out = args.out or str(Path(args.sweep_dir) / "compare")
            title = f"Sweep {Path(args.sweep_dir).resolve().name}"
        result = compare(runs, out, args.objective, args.direction, args.metrics, title, args.per_run,
                         _relative_arg(args.relative_to), args.relative)
    except (FileNotFoundError, KeyError, LookupError, RuntimeError, ValueError) as e:
        print(str(e).strip("'\""), file=sys.stderr)
        return 2
    print(to_markdown(result.rows, result.columns))
    for kind, path in result.files.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
