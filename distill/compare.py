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

import lightning as L
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
class Group:
    """Runs that differ only in the seed: one setting, ``n`` measurements."""

    params: dict[str, str]
    runs: list[Run]

    @property
    def name(self) -> str:
        return ",".join(r.name for r in self.runs)

    def stats(self, metric: str) -> tuple[float | None, float | None, int]:
        """``(mean, sample std, n)`` of the runs' final values (std None when n < 2)."""
        values = [r.final[metric] for r in self.runs if metric in r.final and math.isfinite(r.final[metric])]
        n = len(values)
        if n == 0:
            return None, None, 0
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return mean, std, n


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


class StepTimer(L.Callback):
    """Lightning callback: log ``time/step_s``, the median wall-clock seconds of an optimizer step.

    Measured from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, optimizer;
    validation excluded), skipping the first ``skip`` steps (allocation, warm-up). The median rather
    than the mean, because on a shared machine a few steps stall on other jobs. Add it to a run with
    ``+callbacks.step_timer={_target_: distill.compare.StepTimer}``; distill-compare shows it and,
    with ``--relative-to loss=kd``, each row's step time relative to that setting.
    """

    def __init__(self, skip: int = 10):
        self.skip, self._t0, self._times = int(skip), None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import time

        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time
        import statistics

        if self._t0 is None:
            return
        elapsed, self._t0 = time.perf_counter() - self._t0, None
        if trainer.global_step > self.skip:
            self._times.append(elapsed)
        if self._times:
            pl_module.log("time/step_s", statistics.median(self._times), on_step=True, on_epoch=False,
                          batch_size=1)


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


SEED_KEY = "seed"


def group_by_seed(runs: Sequence[Run], seed_key: str = SEED_KEY) -> list[Group]:
    """Runs with equal overrides apart from ``seed_key``, in first-seen order."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        params = {k: v for k, v in r.params.items() if k != seed_key}
        key = tuple(sorted(params.items()))
        groups.setdefault(key, Group(params, [])).runs.append(r)
    return list(groups.values())


def varies_seed(runs: Sequence[Run], seed_key: str = SEED_KEY) -> bool:
    return len({r.params.get(seed_key) for r in runs}) > 1


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


def build_group_table(groups: Sequence[Group], objective: str, direction: str,
                      metrics: Sequence[str] = DEFAULT_METRICS,
                      relative: dict[str, str] | None = None,
                      relative_metrics: Sequence[str] = ("time/step_s",)) -> tuple[list[dict], list[str], list[str]]:
    """One row per seed group, best mean first: ``<metric>`` holds the mean, ``<metric>_std`` the
    sample std, ``n`` the number of seeds; with ``relative = {key: value, ...}``, ``<metric>_rel`` is
    the row's mean over the mean of the one group with those settings."""
    runs = [r for g in groups for r in g.runs]
    params = [p for p in swept_params(runs) if p != SEED_KEY]
    present = {k for r in runs for k in r.final}
    if objective not in present:
        raise KeyError(f"distill-compare: objective {objective!r} was logged by no run; logged: {sorted(present)}")
    shown = [objective] + [m for m in metrics if m in present and m != objective]
    rel_shown = [m for m in relative_metrics if m in present] if relative else []
    reference: dict[str, float | None] = {}
    if relative:
        ref = [g for g in groups if all(g.params.get(k) == v for k, v in relative.items())]
        wanted = ",".join(f"{k}={v}" for k, v in relative.items())
        if len(ref) != 1:
            seen = {k: sorted({str(g.params.get(k)) for g in groups}) for k in relative}
            raise KeyError(f"distill-compare: --relative-to {wanted}: "
                           f"{'no run has' if not ref else f'{len(ref)} settings have'} that setting (name one "
                           f"with more KEY=VALUE pairs); values: {seen}")
        for m in rel_shown:
            reference[m] = ref[0].stats(m)[0]

    def rank_key(g: Group):
        mean = g.stats(objective)[0]
        return (1, 0.0) if mean is None else (0, mean if direction == "min" else -mean)

    rows = []
    for rank, g in enumerate(sorted(groups, key=rank_key), 1):
        row: dict[str, Any] = {"rank": rank, "runs": g.name}
        row.update({p: g.params.get(p, "") for p in params})
        row["n"] = g.stats(objective)[2]
        for m in shown + [m for m in rel_shown if m not in shown]:
            mean, std, _ = g.stats(m)
            row[m], row[f"{m}_std"] = mean, std
        for m in rel_shown:
            mean, ref = row[m], reference.get(m)
            row[f"{m}_rel"] = mean / ref if mean is not None and ref else None
        rows.append(row)
    extra = [m for m in rel_shown if m not in shown]
    columns = ["rank", "runs", *params, "n"]
    for m in shown + extra:
        columns += [m, f"{m}_std"]
    columns += [f"{m}_rel" for m in rel_shown]
    return rows, columns, params


def to_group_markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Markdown with ``mean ± std`` cells (the ``_std`` columns folded into their metric)."""
    shown = [c for c in columns if not c.endswith("_std")]
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    for r in rows:
        cells = []
        for c in shown:
            value, std = r.get(c), r.get(f"{c}_std")
            if isinstance(value, float) and f"{c}_std" in columns:
                cells.append(f"{value:.4f} ± {std:.4f}" if std is not None else f"{value:.4f}")
            else:
                cells.append(_cell(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def _group_label(g: Group, params: Sequence[str]) -> str:
    return ", ".join(f"{p}={g.params.get(p, '')}" for p in params) or g.name


def plot_group_curves(groups: Sequence[Group], params: Sequence[str], path: Path,
                      metrics: Sequence[str] = CURVE_METRICS) -> Path | None:
    """Mean validation curve of each seed group with a ±1 std band (steps logged by every seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(m in row for g in groups for r in g.runs for row in r.history)]
    if not metrics:
        log.warning("no validation curves to plot (no run logged %s)", ", ".join(CURVE_METRICS))
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for g in groups:
            per_run = [{row["step"]: row[metric] for row in r.history if metric in row and "step" in row}
                       for r in g.runs]
            per_run = [c for c in per_run if c]
            if not per_run:
                continue
            steps = sorted(set.intersection(*(set(c) for c in per_run)))
            if not steps:
                continue
            means = [sum(c[s] for c in per_run) / len(per_run) for s in steps]
            stds = [math.sqrt(sum((c[s] - m) ** 2 for c in per_run) / (len(per_run) - 1)) if len(per_run) > 1 else 0.0
                    for s, m in zip(steps, means)]
            line, = ax.plot(steps, means, marker="o", markersize=3,
                            label=f"{_group_label(g, params)} (n={len(per_run)})")
            ax.fill_between(steps, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(f"{metric} (mean ± std over seeds)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
    if len(groups) <= 16:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_group_objective(groups: Sequence[Group], params: Sequence[str], objective: str,
                         path: Path) -> Path | None:
    """The objective's mean ± std (error bars) against each swept parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [g for g in groups if g.stats(objective)[0] is not None]
    if not params or not scored:
        log.warning("objective_vs_params.png skipped: %s",
                    "no swept parameter" if not params else "no run logged the objective")
        return None
    fig, axes = plt.subplots(1, len(params), figsize=(max(4.5, 0.55 * len(scored) + 2) * len(params), 4.2),
                             squeeze=False)
    for ax, p in zip(axes[0], params):
        values = [g.params.get(p, "") for g in scored]
        numeric = all(_as_number(v) is not None for v in values)
        categories = sorted(set(values), key=lambda v: _natural(str(v)))
        others = [q for q in params if q != p]
        series: dict[tuple, list[Group]] = {}
        for g in scored:
            series.setdefault(tuple(g.params.get(q, "") for q in others), []).append(g)
        if len(series) > 8:
            series = {(): scored}
        width = 0.8 / max(1, len(series))
        for k, (setting, members) in enumerate(series.items()):
            pts = []
            for g in members:
                x = _as_number(g.params.get(p, "")) if numeric else categories.index(g.params.get(p, ""))
                mean, std, _ = g.stats(objective)
                pts.append((x if numeric else x + (k - (len(series) - 1) / 2) * width, mean, std or 0.0))
            pts.sort()
            label = ", ".join(f"{q}={v}" for q, v in zip(others, setting)) if setting else None
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, linestyle="-" if numeric else "none", label=label)
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel(p)
        ax.set_ylabel(f"{objective} (mean ± std)")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
        if any(k for k in series) and len(series) <= 8:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ entry points
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
    out = Path(out_dir)
    if not per_run and (varies_seed(runs) or relative):
        return _compare_groups(runs, out, objective, direction, metrics, title, relative, relative_metrics)
    rows, columns, params = build_table(runs, objective, direction, metrics)
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


def _compare_groups(runs: Sequence[Run], out: Path, objective: str, direction: str, metrics: Sequence[str],
                    title: str, relative: dict[str, str] | None, relative_metrics: Sequence[str]) -> Comparison:
    groups = group_by_seed(runs)
    rows, columns, params = build_group_table(groups, objective, direction, metrics, relative, relative_metrics)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "comparison.md", "csv": out / "comparison.csv"}
    seeds = sorted({r.params.get(SEED_KEY, "") for r in runs}, key=_natural)
    rel = (" `_rel` columns: the row's mean over that of `" + ",".join(f"{k}={v}" for k, v in relative.items())
           + "`.") if relative else ""
    header = [f"# {title or 'Sweep comparison'}", "",
              f"{len(runs)} runs in {len(groups)} settings (seeds {', '.join(seeds)}); objective `{objective}` "
              f"({'lower' if direction == 'min' else 'higher'} is better), best mean first; cells are mean ± sample "
              f"std over the n seeds with a value. Swept: {', '.join(f'`{p}`' for p in params) or 'nothing'}.{rel}",
              "", ""]
    files["markdown"].write_text("\n".join(header) + to_group_markdown(rows, columns) + "\n")
    write_csv(rows, columns, files["csv"])
    curves = plot_group_curves(groups, params, out / "val_curves.png")
    if curves:
        files["curves"] = curves
    vs = plot_group_objective(groups, params, objective, out / "objective_vs_params.png")
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
    grouped = "n" in result.columns
    print(to_group_markdown(result.rows, result.columns) if grouped else to_markdown(result.rows, result.columns))
    for kind, path in result.files.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
