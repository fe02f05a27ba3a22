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

Tokenizers: a per-token loss compares runs of one tokenizer only. When the runs record different
student tokenizers (:func:`~distill.compare.load.tokenizer_of`), the default objective (``val/loss``
or ``val/ppl``) becomes ``val/bpb``, bits per byte of the held-out text, the table gets a
``tokenizer`` column and its header says why; with one tokenizer nothing changes. An objective
given with ``--objective`` is kept, with a warning in the header when it is per token.

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

from distill.compare.load import Run, group_runs, load_local, load_wandb, tokenizer_label, tokenizers, varies_seed
from distill.compare.plots import CURVE_METRICS, plot_curves, plot_objective
from distill.compare.table import DEFAULT_METRICS, build_table, header, infer_direction, to_markdown, write_csv

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    columns: list[str]
    params: list[str]
    objective: str
    direction: str
    files: dict[str, Path]
    note: str = ""  # why the objective is what it is (several tokenizers), as the header says it


# Means per token: meaningless between runs whose tokenizers cut the text differently.
PER_TOKEN_OBJECTIVES = ("val/loss", "val/ppl")
BPB = "val/bpb"


def tokenizer_objective(runs: Sequence[Run], objective: str, explicit: bool) -> tuple[str, str]:
    """``(objective, note)``: ``val/bpb`` instead of a default per-token objective when the runs'
    student tokenizers differ, and the sentence the header shows (empty with one tokenizer)."""
    distinct = tokenizers(runs)
    if len(distinct) < 2 or objective not in PER_TOKEN_OBJECTIVES:
        return objective, ""
    names = ", ".join(sorted({tokenizer_label(r) for r in runs}))
    which = f"The runs use {len(distinct)} different student tokenizers ({names}): `{objective}` is per token of each"
    if explicit:
        note = f"Warning: {which}, so its ranking compares unlike units (`{BPB}`, bits per byte, does not)."
    elif any(BPB in r.final for r in runs):
        return BPB, f"{which}, so rows are ranked by `{BPB}`, bits per byte of the held-out text, instead."
    else:
        note = (f"Warning: {which}, but no run logged `{BPB}` (runs older than it): ranked by `{objective}`, "
                "which does not compare them.")
    log.warning(note)
    return objective, note


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
    explicit = objective is not None
    if objective is None:
        named = {r.config.get("objective") for r in runs if r.config.get("objective")}
        objective = named.pop() if len(named) == 1 else "val/loss"
    objective, note = tokenizer_objective(runs, objective, explicit)
    by_tokenizer = len(tokenizers(runs)) > 1
    if direction == "auto":
        direction = infer_direction(objective, runs)
    if direction not in ("min", "max"):
        raise ValueError(f"distill-compare: --direction must be auto, min or max, got {direction!r}")
    aggregate = not per_run and (varies_seed(runs) or bool(relative))
    relative = relative if aggregate else None
    groups = group_runs(runs, by_seed=aggregate)
    rows, columns, params = build_table(groups, objective, direction, aggregate, metrics, relative, relative_metrics,
                                        by_tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "comparison.md", "csv": out / "comparison.csv"}
    text = header(title, groups, objective, direction, params, aggregate, relative, note)
    files["markdown"].write_text(text + to_markdown(rows, columns) + "\n")
    write_csv(rows, columns, files["csv"])
    # per-token curves of different tokenizers do not compare either: draw bits per byte instead
    curve_metrics = [BPB if m == "val/loss" and objective == BPB else m for m in CURVE_METRICS]
    curves = plot_curves(groups, params, out / "val_curves.png", aggregate, curve_metrics)
    if curves:
        files["curves"] = curves
    vs = plot_objective(groups, params, objective, out / "objective_vs_params.png", aggregate)
    if vs:
        files["objective"] = vs
    return Comparison(rows, columns, params, objective, direction, files, note)


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
    parser.add_argument("--objective", help="metric to rank by (default: the runs' `objective`, else val/loss; "
                                            "val/bpb when the runs' tokenizers differ)")
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
