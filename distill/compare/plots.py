"""The comparison plots: validation curves and the objective against each swept parameter.

Each line or point is a :class:`~distill.compare.load.Group`. With ``aggregate`` (seed groups) a
curve is the mean over the steps every seed logged with a ±1 std band, and an objective point has
std error bars; otherwise each group is one run, drawn as it was logged.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

from distill.compare.load import Group, natural_key

log = logging.getLogger(__name__)

CURVE_METRICS = ("val/loss", "val/agreement", "val/kl")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _as_number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _label(g: Group, params: Sequence[str]) -> str:
    return ", ".join(f"{p}={g.params.get(p, '')}" for p in params) or g.name


def _curve(g: Group, metric: str) -> tuple[list[float], list[float], list[float], int] | None:
    """``(steps, means, stds, n)`` of a group's ``metric``: a single run's points as logged, else
    the mean and sample std over the steps that every run with the metric logged."""
    per_run = [[(row["step"], row[metric]) for row in r.history if metric in row and "step" in row]
               for r in g.runs]
    per_run = [points for points in per_run if points]
    if not per_run:
        return None
    if len(per_run) == 1:
        steps, values = (list(v) for v in zip(*per_run[0]))
        return steps, values, [0.0] * len(steps), 1
    curves = [dict(points) for points in per_run]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        return None
    n = len(curves)
    means = [sum(c[s] for c in curves) / n for s in steps]
    stds = [math.sqrt(sum((c[s] - m) ** 2 for c in curves) / (n - 1)) for s, m in zip(steps, means)]
    return steps, means, stds, n


def plot_curves(groups: Sequence[Group], params: Sequence[str], path: Path, aggregate: bool,
                metrics: Sequence[str] = CURVE_METRICS) -> Path | None:
    """One validation curve per group and metric (mean ± std over seeds with ``aggregate``)."""
    plt = _pyplot()
    metrics = [m for m in metrics if any(m in row for g in groups for r in g.runs for row in r.history)]
    if not metrics:
        log.warning("no validation curves to plot (no run logged %s)", ", ".join(CURVE_METRICS))
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for g in groups:
            curve = _curve(g, metric)
            if curve is None:
                continue
            steps, means, stds, n = curve
            if not aggregate:
                ax.plot(steps, means, marker="o", markersize=3, label=_label(g, params))
                continue
            line, = ax.plot(steps, means, marker="o", markersize=3, label=f"{_label(g, params)} (n={n})")
            ax.fill_between(steps, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(f"{metric} (mean ± std over seeds)" if aggregate else metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
    if len(groups) <= (16 if aggregate else 12):
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_objective(groups: Sequence[Group], params: Sequence[str], objective: str, path: Path,
                   aggregate: bool) -> Path | None:
    """The objective against each swept parameter; one line per setting of the others (with
    ``aggregate``: the mean with std error bars, categories dodged so the series stay apart)."""
    plt = _pyplot()
    scored = [g for g in groups if g.stats(objective)[0] is not None]
    if not params or not scored:
        log.warning("objective_vs_params.png skipped: %s",
                    "no swept parameter" if not params else "no run logged the objective")
        return None
    size = (max(4.5, 0.55 * len(scored) + 2), 4.2) if aggregate else (4.5, 3.8)
    fig, axes = plt.subplots(1, len(params), figsize=(size[0] * len(params), size[1]), squeeze=False)
    for ax, p in zip(axes[0], params):
        values = [g.params.get(p, "") for g in scored]
        numeric = all(_as_number(v) is not None for v in values)
        categories = sorted(set(values), key=lambda v: natural_key(str(v)))
        others = [q for q in params if q != p]
        series: dict[tuple, list[Group]] = {}
        for g in scored:
            series.setdefault(tuple(g.params.get(q, "") for q in others), []).append(g)
        if len(series) > 8:  # e.g. an Optuna search: every point differs in every parameter
            series = {(): scored}
        width = 0.8 / max(1, len(series))
        for k, (setting, members) in enumerate(series.items()):
            pts = []
            for g in members:
                x = _as_number(g.params.get(p, "")) if numeric else categories.index(g.params.get(p, ""))
                if aggregate and not numeric:
                    x += (k - (len(series) - 1) / 2) * width
                mean, std, _ = g.stats(objective)
                pts.append((x, mean, std or 0.0))
            pts.sort()
            label = ", ".join(f"{q}={v}" for q, v in zip(others, setting)) if setting else None
            xs, ys, es = zip(*pts)
            if aggregate:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, linestyle="-" if numeric else "none",
                            label=label)
            else:
                ax.plot(xs, ys, marker="o", linestyle="-" if len(series) > 1 or len(pts) < 6 else "none",
                        label=label)
        if not numeric:
            if aggregate:
                ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right", fontsize=7)
            else:
                ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(p)
        ax.set_ylabel(f"{objective} (mean ± std)" if aggregate else objective)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
        if any(k for k in series) and len(series) <= 8:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
