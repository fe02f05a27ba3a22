"""The comparison table: rows best first, as Markdown and CSV.

A row is a :class:`~distill.compare.load.Group`. With ``aggregate`` (the sweep varies the seed, or
a ``relative`` reference is asked for) a row is a seed group: ``<metric>`` holds the mean,
``<metric>_std`` the sample std and ``n`` the number of seeds with a value. Without it each run is
a group of one and a row shows the run's own final values.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from distill.compare.load import SEED_KEY, Group, Run, natural_key, tokenizer_label

# Shown after the objective when a run logged them; teacher metrics are the same for every run.
# val/bpb: bits per byte of the held-out text, the column that compares runs across tokenizers.
DEFAULT_METRICS = ("val/loss", "val/ppl", "val/bpb", "val/agreement", "val/kl", "summary/gap_closed")
# Objectives where larger is better (the rest are minimised) when the sweep does not say.
MAXIMIZE_HINTS = ("agreement", "acc", "gap_closed", "pass@", "bleu", "rouge")


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


def _reference(groups: Sequence[Group], relative: dict[str, str], metrics: Sequence[str]) -> dict[str, float | None]:
    """The mean of each metric in the one group with the ``relative`` settings."""
    ref = [g for g in groups if all(g.params.get(k) == v for k, v in relative.items())]
    if len(ref) != 1:
        wanted = ",".join(f"{k}={v}" for k, v in relative.items())
        seen = {k: sorted({str(g.params.get(k)) for g in groups}) for k in relative}
        raise KeyError(f"distill-compare: --relative-to {wanted}: "
                       f"{'no run has' if not ref else f'{len(ref)} settings have'} that setting (name one "
                       f"with more KEY=VALUE pairs); values: {seen}")
    return {m: ref[0].stats(m)[0] for m in metrics}


def build_table(groups: Sequence[Group], objective: str, direction: str, aggregate: bool,
                metrics: Sequence[str] = DEFAULT_METRICS, relative: dict[str, str] | None = None,
                relative_metrics: Sequence[str] = ("time/step_s",), by_tokenizer: bool = False,
                ) -> tuple[list[dict], list[str], list[str]]:
    """Rows best (mean) first, their columns and the swept parameters. With ``aggregate`` and
    ``relative = {key: value, ...}``, ``<metric>_rel`` is the row's mean over the mean of the one
    group with those settings. ``by_tokenizer``: a ``tokenizer`` column after the parameters (the
    runs' tokenizers differ)."""
    runs = [r for g in groups for r in g.runs]
    params = [p for p in swept_params(runs) if not (aggregate and p == SEED_KEY)]
    labels = ["tokenizer"] if by_tokenizer else []
    present = {k for r in runs for k in r.final}
    if objective not in present:
        raise KeyError(f"distill-compare: objective {objective!r} was logged by no run; logged: {sorted(present)}")
    shown = [objective] + [m for m in metrics if m in present and m != objective]
    rel_shown = [m for m in relative_metrics if m in present] if aggregate and relative else []
    extra = [m for m in rel_shown if m not in shown]
    reference = _reference(groups, relative, rel_shown) if aggregate and relative else {}

    def rank_key(g: Group):
        mean = g.stats(objective)[0]  # None also for a non-finite value: failed runs last
        return (1, 0.0) if mean is None else (0, mean if direction == "min" else -mean)

    rows = []
    for rank, g in enumerate(sorted(groups, key=rank_key), 1):
        row: dict[str, Any] = {"rank": rank, "runs" if aggregate else "run": g.name}
        row.update({p: g.params.get(p, "") for p in params})
        if by_tokenizer:
            row["tokenizer"] = ",".join(sorted({tokenizer_label(r) for r in g.runs}))
        if not aggregate:  # one run: its values as logged, a non-finite one included
            row.update({m: g.runs[0].final.get(m) for m in shown})
            rows.append(row)
            continue
        row["n"] = g.stats(objective)[2]
        for m in shown + extra:
            row[m], row[f"{m}_std"] = g.stats(m)[:2]
        for m in rel_shown:
            mean, ref = row[m], reference.get(m)
            row[f"{m}_rel"] = mean / ref if mean is not None and ref else None
        rows.append(row)
    if not aggregate:
        return rows, ["rank", "run", *params, *labels, *shown], params
    columns = ["rank", "runs", *params, *labels, "n"]
    for m in shown + extra:
        columns += [m, f"{m}_std"]
    columns += [f"{m}_rel" for m in rel_shown]
    return rows, columns, params


def header(title: str, groups: Sequence[Group], objective: str, direction: str, params: Sequence[str],
           aggregate: bool, relative: dict[str, str] | None, note: str = "") -> str:
    """The Markdown title and the sentence that says how to read the table (and ``note``: why the
    objective is what it is)."""
    runs = [r for g in groups for r in g.runs]
    better = "lower" if direction == "min" else "higher"
    swept = ", ".join(f"`{p}`" for p in params) or "nothing"
    if not aggregate:
        text = f"{len(runs)} runs; objective `{objective}` ({better} is better), best first. Swept: {swept}."
    else:
        seeds = sorted({r.params.get(SEED_KEY, "") for r in runs}, key=natural_key)
        rel = (" `_rel` columns: the row's mean over that of `" + ",".join(f"{k}={v}" for k, v in relative.items())
               + "`.") if relative else ""
        text = (f"{len(runs)} runs in {len(groups)} settings (seeds {', '.join(seeds)}); objective `{objective}` "
                f"({better} is better), best mean first; cells are mean ± sample std over the n seeds with a "
                f"value. Swept: {swept}.{rel}")
    if note:
        text += f" {note}"
    return "\n".join([f"# {title or 'Sweep comparison'}", "", text, "", ""])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Markdown; a metric with a ``_std`` column shows ``mean ± std`` in one cell."""
    shown = [c for c in columns if not (c.endswith("_std") and c[:-len("_std")] in columns)]
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


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})
