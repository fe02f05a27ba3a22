"""``distill-compare``: one table and a few plots for a sweep.

    distill-compare multirun/train/2026-11-22_10-00-00            # local run dirs of a -m sweep
    distill-compare --wandb my-team/distill --group 2026-11-22_10-00-00   # a W&B group (online)

Writes into ``<sweep dir>/compare/`` (or ``--out``):

- ``comparison.md`` and ``comparison.csv``: one row per run, best first by the objective; columns
  are the swept parameters (the overrides whose values differ between runs) and the final metrics;
- ``val_curves.png``: the validation metrics of every run against the step;
- ``objective_vs_params.png``: the objective against each swept parameter (one line per setting of
  the other swept parameters).

A run is a directory holding ``.hydra/overrides.yaml`` (what Hydra writes for every job) and, from
the :class:`SaveResolvedConfig` Hydra callback in ``conf/train.yaml``, ``config_resolved.yaml``; its
metrics come from ``csv/version_*/metrics.csv`` (:func:`distill.runs.read_metrics`) and, when the
end-of-run summary ran, ``summary.json`` (``summary/gap_closed``: the share of the CE-only-student-to-
teacher gap that distillation closed).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from hydra.experimental.callback import Callback as HydraCallback

log = logging.getLogger(__name__)

# Shown after the objective when a run logged them; teacher metrics are the same for every run.
DEFAULT_METRICS = ("val/loss", "val/ppl", "val/agreement", "val/kl", "summary/gap_closed")
CURVE_METRICS = ("val/loss", "val/agreement", "val/kl")
# Objectives where larger is better (the rest are minimised) when the sweep does not say.
MAXIMIZE_HINTS = ("agreement", "acc", "gap_closed", "pass@", "bleu", "rouge")


@dataclass
class Run:
    """One run, from either source: overrides, logged rows (oldest first) and final values."""

    name: str
    params: dict[str, str]
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    path: str = ""


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    columns: list[str]
    params: list[str]
    objective: str
    direction: str
    files: dict[str, Path]


# ------------------------------------------------------------------------------ writing (Hydra callback)
RESOLVED = "config_resolved.yaml"


class SaveResolvedConfig(HydraCallback):
    """Hydra callback: write ``<run dir>/config_resolved.yaml``, the job's config with every ``${...}``
    filled in (Hydra's ``.hydra/config.yaml`` keeps the interpolations). Written when the job starts,
    so a run that fails still says exactly what it was.
    """

    def on_job_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        out = Path(config.hydra.runtime.output_dir)
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            text = OmegaConf.to_yaml(task, resolve=True)
        except Exception as e:  # the job itself will raise with the full context; keep going
            log.warning("could not resolve the config for %s: %s", out / RESOLVED, e)
            return
        out.mkdir(parents=True, exist_ok=True)
        (out / RESOLVED).write_text(text)


# ------------------------------------------------------------------------------ loading
def parse_override(text: str) -> tuple[str, str]:
    """``'+loss.weights.ce=0.5'`` -> ``('loss.weights.ce', '0.5')``; a deletion ``~key`` -> ``(key, '~')``."""
    text = text.strip()
    if text.startswith("~"):
        return text.lstrip("~").split("=", 1)[0], "~"
    key, _, value = text.lstrip("+").partition("=")
    return key, value


def final_values(history: Iterable[dict[str, float]]) -> dict[str, float]:
    """The last logged value of every metric."""
    final: dict[str, float] = {}
    for row in history:
        final.update(row)
    return final


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def find_run_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (or ``root`` itself) holding ``.hydra/overrides.yaml``."""
    dirs = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    if (root / ".hydra" / "overrides.yaml").exists():
        dirs.add(root)
    return sorted(dirs, key=lambda d: _natural(str(d.relative_to(root))))


def load_local(sweep_dir: str | Path) -> list[Run]:
    """Every run under a sweep directory (a single run directory works too)."""
    import yaml

    from distill.runs import read_metrics

    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"distill-compare: sweep directory {root} does not exist")
    dirs = find_run_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"distill-compare: no run directories (with .hydra/overrides.yaml) under {root}")
    runs = []
    for d in dirs:
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or []
        config_file = d / RESOLVED if (d / RESOLVED).exists() else d / ".hydra" / "config.yaml"
        config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
        history = read_metrics(d)
        final = final_values(history)
        summary = d / "summary.json"
        if summary.exists():
            final.update({k: float(v) for k, v in json.loads(summary.read_text()).items()
                          if k.startswith("summary/") and isinstance(v, (int, float))})
        if not history:
            log.warning("%s: no metrics logged (failed or still running?)", d)
        name = "." if d == root else str(d.relative_to(root))
        # Hydra names sweep subdirs <job number>_<overrides>; the overrides are columns already
        name = re.sub(r"^(\d+)_.*$", r"\1", name)
        runs.append(Run(name=name, params=dict(parse_override(o) for o in overrides), history=history,
                        final=final, config=config or {}, path=str(d)))
    return runs


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            if not str(k).startswith("_"):
                out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, (list, dict)) else str(node)}


def load_wandb(project: str, group: str | None, api: Any = None) -> list[Run]:
    """Runs of a W&B project (``entity/project``), optionally one group. Needs the network."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        raise RuntimeError(f"distill-compare --wandb needs the W&B API, but WANDB_MODE={os.environ['WANDB_MODE']}; "
                           "compare the local sweep directory instead")
    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"group": group} if group else {}
    runs = []
    for r in api.runs(project, filters=filters):
        config = dict(r.config)
        overrides = config.get("overrides")
        history = []
        for row in r.scan_history():
            step = row.get("trainer/global_step", row.get("_step"))
            values = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not k.startswith("_")
                      and v is not None}
            if step is not None:
                values["step"] = float(step)
            history.append(values)
        final = {k: float(v) for k, v in dict(r.summary).items()
                 if isinstance(v, (int, float)) and not k.startswith("_")}
        params = dict(parse_override(o) for o in overrides) if isinstance(overrides, list) else {}
        runs.append(Run(name=r.name, params=params, history=history, final=final, config=config,
                        path=getattr(r, "url", "") or ""))
    if not runs:
        raise LookupError(f"distill-compare: no W&B runs in {project}" + (f" with group {group!r}" if group else ""))
    if not any(r.params for r in runs):
        # runs not started by distill's logger: compare their flattened configs instead
        for r in runs:
            r.params = _flatten(r.config)
    return list(reversed(runs))  # the API lists newest first


# ------------------------------------------------------------------------------ the table
def swept_params(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value differs between runs (all of them for a single run)."""
    keys = sorted({k for r in runs for k in r.params})
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def infer_direction(objective: str, runs: Sequence[Run]) -> str:
    """``min`` or ``max``: the Optuna sweeper's direction if the sweep had one, else by the name."""
    for r in runs:
        hydra_file = Path(r.path) / ".hydra" / "hydra.yaml" if r.path else None
        if hydra_file and hydra_file.exists():
            import yaml

            sweeper = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("sweeper", {}) or {}
            direction = sweeper.get("direction")
            if isinstance(direction, str):
                return "max" if direction.lower().startswith("max") else "min"
        break
    return "max" if any(h in objective.lower() for h in MAXIMIZE_HINTS) else "min"


def _as_number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def build_table(runs: Sequence[Run], objective: str, direction: str,
                metrics: Sequence[str] = DEFAULT_METRICS) -> tuple[list[dict], list[str], list[str]]:
    """Rows best first, their columns and the swept parameters."""
    params = swept_params(runs)
    present = {k for r in runs for k in r.final}
    if objective not in present:
        raise KeyError(f"distill-compare: objective {objective!r} was logged by no run; logged: {sorted(present)}")
    shown = [objective] + [m for m in metrics if m in present and m != objective]

    def key(run: Run):
        value = run.final.get(objective)
        if value is None or not math.isfinite(value):
            return (1, 0.0)  # failed runs last
        return (0, value if direction == "min" else -value)

    rows = []
    for rank, run in enumerate(sorted(runs, key=key), 1):
        row: dict[str, Any] = {"rank": rank, "run": run.name}
        row.update({p: run.params.get(p, "") for p in params})
        row.update({m: run.final.get(m) for m in shown})
        rows.append(row)
    return rows, ["rank", "run", *params, *shown], params


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})


# ------------------------------------------------------------------------------ plots
def _label(run: Run, params: Sequence[str]) -> str:
    return ", ".join(f"{p}={run.params.get(p, '')}" for p in params) or run.name


def plot_curves(runs: Sequence[Run], params: Sequence[str], path: Path,
                metrics: Sequence[str] = CURVE_METRICS) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(m in row for r in runs for row in r.history)]
    if not metrics:
        log.warning("no validation curves to plot (no run logged %s)", ", ".join(CURVE_METRICS))
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for run in runs:
            points = [(row["step"], row[metric]) for row in run.history if metric in row and "step" in row]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=_label(run, params))
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
    if len(runs) <= 12:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_objective(runs: Sequence[Run], params: Sequence[str], objective: str, path: Path) -> Path | None:
    """The objective against each swept parameter; one line per setting of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in runs if r.final.get(objective) is not None and math.isfinite(r.final[objective])]
    if not params or not scored:
        log.warning("objective_vs_params.png skipped: %s",
                    "no swept parameter" if not params else "no run logged the objective")
        return None
    fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params), 3.8), squeeze=False)
    for ax, p in zip(axes[0], params):
        values = [r.params.get(p, "") for r in scored]
        numeric = all(_as_number(v) is not None for v in values)
        categories = sorted(set(values), key=lambda v: _natural(str(v)))

        def x_of(v: str) -> float:
            return _as_number(v) if numeric else categories.index(v)  # type: ignore[return-value]

        others = [q for q in params if q != p]
        groups: dict[tuple, list[Run]] = {}
        for r in scored:
            groups.setdefault(tuple(r.params.get(q, "") for q in others), []).append(r)
        if len(groups) > 8:  # e.g. an Optuna search: every point differs in every parameter
            groups = {(): scored}
        for setting, members in groups.items():
            pts = sorted((x_of(r.params.get(p, "")), r.final[objective]) for r in members)
            label = ", ".join(f"{q}={v}" for q, v in zip(others, setting)) if setting else None
            ax.plot(*zip(*pts), marker="o", linestyle="-" if len(groups) > 1 or len(pts) < 6 else "none",
                    label=label)
        if not numeric:
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(p)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
        if any(k for k in groups) and len(groups) <= 8:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ entry points
def compare(runs: Sequence[Run], out_dir: str | Path, objective: str | None = None, direction: str = "auto",
            metrics: Sequence[str] = DEFAULT_METRICS, title: str = "") -> Comparison:
    """Write the table (Markdown, CSV) and the plots for ``runs`` into ``out_dir``."""
    if not runs:
        raise ValueError("distill-compare: no runs to compare")
    if objective is None:
        named = {r.config.get("objective") for r in runs if r.config.get("objective")}
        objective = named.pop() if len(named) == 1 else "val/loss"
    if direction == "auto":
        direction = infer_direction(objective, runs)
    if direction not in ("min", "max"):
        raise ValueError(f"distill-compare: --direction must be auto, min or max, got {direction!r}")
    rows, columns, params = build_table(runs, objective, direction, metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "comparison.md", "csv": out / "comparison.csv"}
    header = [f"# {title or 'Sweep comparison'}", "",
              f"{len(runs)} runs; objective `{objective}` ({'lower' if direction == 'min' else 'higher'} is better), "
              f"best first. Swept: {', '.join(f'`{p}`' for p in params) or 'nothing'}.", "", ""]
    files["markdown"].write_text("\n".join(header) + to_markdown(rows, columns) + "\n")
    write_csv(rows, columns, files["csv"])
    curves = plot_curves(runs, params, out / "val_curves.png")
    if curves:
        files["curves"] = curves
    vs = plot_objective(runs, params, objective, out / "objective_vs_params.png")
    if vs:
        files["objective"] = vs
    return Comparison(rows, columns, params, objective, direction, files)


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
        result = compare(runs, out, args.objective, args.direction, args.metrics, title)
    except (FileNotFoundError, KeyError, LookupError, RuntimeError, ValueError) as e:
        print(str(e).strip("'\""), file=sys.stderr)
        return 2
    print(to_markdown(result.rows, result.columns))
    for kind, path in result.files.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
