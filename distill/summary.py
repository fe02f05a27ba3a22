"""The end-of-run summary: teacher vs distilled student vs CE-only student on held-out data.

:func:`summarize` is pure: final metrics in, table and verdict out. The verdict follows from what
was measured: the distilled-vs-CE-only difference is always reported; the share of the
CE-student-to-teacher gap that distillation closed only where that gap exists (the teacher beats
the CE-only student), with a warning when distillation made the student worse.
:func:`write_summary` writes ``summary.json``, ``summary.txt`` and ``summary.png``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from distill.metrics import gap_closed

log = logging.getLogger(__name__)

__all__ = ["Summary", "summarize", "write_summary", "format_table", "plot_summary", "gap_closed"]


@dataclass
class Summary:
    """What a run's summary says: the printed text and the figures behind it."""

    text: str
    teacher: dict | None
    baseline: dict | None
    student: dict
    values: dict[str, float] = field(default_factory=dict)  # summary/* metrics

    def to_json(self) -> dict:
        return {"teacher": self.teacher, "baseline": self.baseline, "student": self.student, **self.values}


def _val(metrics: dict[str, float]) -> dict[str, float]:
    return {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}


def _ppl(x: float) -> str:
    """Perplexity in at most 8 characters: a pruned student at initialisation reaches millions
    (e^14.8 = 2.6e6), which ``.1f`` ran into the next column."""
    return f"{x:.1f}" if x < 1e5 else f"{x:.2e}"


def format_table(rows: list[tuple[str, dict]]) -> str:
    lines = [f"{'model':<28}{'held-out CE':>12}{'ppl':>10}{'top-1 agree':>13}{'KL(T||S)':>10}",
             "-" * 73]
    for name, m in rows:
        agree = f"{m['agreement']:.3f}" if "agreement" in m else "-"
        kl = f"{m['kl']:.3f}" if "kl" in m else "-"
        lines.append(f"{name:<28}{m['loss']:>12.3f}{_ppl(m['ppl']):>10}{agree:>13}{kl:>10}")
    return "\n".join(lines)


def verdict(student: dict, baseline: dict, teacher: dict | None) -> tuple[list[str], dict[str, float]]:
    """The lines that interpret the table, and the figures they rest on."""
    diff = baseline["loss"] - student["loss"]  # > 0: distillation beat training on labels alone
    values = {"summary/baseline_loss": baseline["loss"], "summary/vs_baseline": diff}
    lines = [f"distilled vs CE-only: {-diff:+.3f} nats/token held-out CE "
             f"({'better' if diff > 0 else 'worse' if diff < 0 else 'no change'} than the CE-only student)"]
    if teacher is None:
        return lines, values
    closed = gap_closed(student["loss"], baseline["loss"], teacher["loss"])
    gap = baseline["loss"] - teacher["loss"]
    if closed is None:
        lines.append(f"gap closed: undefined, the teacher ({teacher['loss']:.3f}) is not better than the CE-only "
                     f"student ({baseline['loss']:.3f}) on held-out data.")
        if diff > 0:
            lines.append("Distillation still helped: the teacher's soft labels carry signal even where its own "
                         "held-out CE is worse (it may be overfit: see its distill_pretrain.json).")
        else:
            lines.append("WARNING: the teacher has nothing to teach here. Train the teacher longer or on more data "
                         "(teacher.pretrain.steps), or use a larger one.")
        return lines, values
    values["summary/gap_closed"] = closed
    lines.append(f"distillation closed {100 * closed:.1f}% of the CE-student-to-teacher gap "
                 f"({baseline['loss']:.3f} -> {student['loss']:.3f}; teacher {teacher['loss']:.3f})")
    if closed < 0:
        lines.append(f"WARNING: distillation made the student worse than training on labels alone "
                     f"({-diff:.3f} nats). Check the loss weights and temperature, or train longer.")
    if gap < 0.2:
        lines.append("WARNING: the teacher is barely stronger than the student trained alone "
                     f"({gap:.3f} nats); distillation cannot help much.")
    return lines, values


def summarize(metrics: dict[str, float], baseline_metrics: dict[str, float] | None, steps: int,
              ce_only: bool = False) -> Summary | None:
    """The run's summary from its final metrics and the CE-only baseline's (None when validation
    never ran). Pure: prints and writes nothing."""
    if "val/loss" not in metrics:
        return None
    student = _val(metrics)
    teacher = ({"loss": student["teacher_loss"], "ppl": student["teacher_ppl"]}
               if "teacher_loss" in student else None)
    baseline = _val(baseline_metrics) if baseline_metrics else None
    rows = [("teacher", teacher)] if teacher else []
    initial = {k[5:]: v for k, v in metrics.items() if k.startswith("init/")}  # validate_at_start: before any update
    if "loss" in initial:
        rows.append(("student at initialisation", initial))
    if baseline is not None:
        rows.append(("student, CE only (baseline)", baseline))
    rows.append(("student, CE only" if ce_only else "student, distilled", student))
    lines = [f"\n=== distill summary ({steps} steps) ===", format_table(rows)]
    values: dict[str, float] = {}
    if baseline is not None:
        more, values = verdict(student, baseline, teacher)
        lines += more
    if "loss" in initial:
        values["summary/init_loss"] = initial["loss"]
        lines.append(f"training moved the student {initial['loss']:.3f} -> {student['loss']:.3f} nats/token held-out CE "
                     "from its initialisation")
    return Summary("\n".join(lines), teacher, baseline, student, values)


def write_summary(summary: Summary, out_dir: str | Path, baseline_dir: Path | None = None) -> None:
    """``summary.json``, ``summary.txt`` and ``summary.png`` (curves) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    (out_dir / "summary.txt").write_text(summary.text + "\n")
    try:
        plot = plot_summary(out_dir, baseline_dir if summary.baseline is not None else None,
                            summary.teacher["loss"] if summary.teacher else None, out_dir / "summary.png")
        if plot is not None:
            log.info("curves: %s", plot)
    except Exception as e:  # a plot must never cost the run its results
        log.warning("summary.png not written: %s", e)


def plot_summary(run_dir: Path, baseline_dir: Path | None, teacher_loss: float | None, path: Path) -> Path | None:
    """``summary.png``: held-out CE against steps (distilled, CE-only baseline, teacher level), the
    training loss terms, and their weights and the temperature.

    A baseline trained before its curve was kept appears as its final value only.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, no display
    import matplotlib.pyplot as plt

    from distill.runs import read_metrics

    rows = read_metrics(run_dir)
    val = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
    if not val:
        return None
    fig, (ax_val, ax_train, ax_sched) = plt.subplots(1, 3, figsize=(15, 4))
    ax_val.plot(*zip(*val), marker="o", label="student, distilled")
    if baseline_dir is not None:
        base = [(r["step"], r["val/loss"]) for r in read_metrics(baseline_dir) if "val/loss" in r]
        if base:
            ax_val.plot(*zip(*base), marker="s", label="student, CE only")
        elif (baseline_dir / "metrics.json").exists():
            final = json.loads((baseline_dir / "metrics.json").read_text()).get("val/loss")
            if final is not None:
                ax_val.plot([val[-1][0]], [final], marker="s", linestyle="none", label="student, CE only (final)")
    if teacher_loss is not None:
        ax_val.axhline(teacher_loss, color="black", linestyle="--", label="teacher")
    ax_val.set(xlabel="optimizer step", ylabel="held-out CE (nats/token)", title="held-out loss")
    ax_val.legend()
    terms = sorted({k[6:] for r in rows for k in r if k.startswith("train/")} - {"loss", "lr"})
    ax_temp = None
    for term in terms:
        points = [(r["step"], r[f"train/{term}"]) for r in rows if f"train/{term}" in r]
        if term == "temperature":
            # its own axis: a temperature of 1 would otherwise hide under a weight of 1
            ax_temp = ax_sched.twinx()
            ax_temp.plot(*zip(*points), label=term, color="black", linestyle=":", marker=".", markevery=0.1)
            ax_temp.set_ylabel("temperature")
            continue
        (ax_sched if term.startswith("w_") else ax_train).plot(*zip(*points), label=term)
    ax_train.set(xlabel="optimizer step", ylabel="per-token value (before weighting)", title="training loss terms")
    if all(y > 0 for line in ax_train.lines for y in line.get_ydata()):
        ax_train.set_yscale("log")  # terms differ by orders of magnitude
    ax_sched.set(xlabel="optimizer step", ylabel="weight", title="schedules: weights and temperature")
    if ax_train.lines:
        ax_train.legend(fontsize="small")
    handles = ax_sched.lines + (ax_temp.lines if ax_temp is not None else [])
    if handles:
        ax_sched.legend(handles, [h.get_label() for h in handles], fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


