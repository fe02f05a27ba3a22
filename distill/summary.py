"""The end-of-run summary: teacher vs distilled student vs CE-only student on held-out data.

The CE-only baseline is the same student trained for the same steps on the same data with hard
labels only (``loss=ce``). It is trained once and cached under ``paths.cache_dir/baselines``
keyed by everything that affects it, so later runs (and sweeps) reuse it.

``gap closed = (CE_baseline - CE_distilled) / (CE_baseline - CE_teacher)``: the share of the
distance between the CE-only student and the teacher that distillation recovered.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

CE_LOSS = {"_target_": "distill.losses.combine.DistillationLoss",
           "components": {"ce": {"_target_": "distill.losses.components.CrossEntropy"}}, "weights": {"ce": 1.0}}


def _is_ce_only(cfg: DictConfig) -> bool:
    comps = cfg.loss.get("components") or {}
    return all(str(c.get("_target_", "")).endswith("CrossEntropy") for c in comps.values())


def baseline_key(cfg: DictConfig) -> str:
    """Hash of what determines the CE-only student (not the loss or logging)."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("student", "data", "module", "teacher")}
    parts["seed"], parts["steps"] = cfg.seed, cfg.trainer.max_steps
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def baseline_dir(cfg: DictConfig) -> Path:
    """Where the CE-only student of ``cfg`` is trained and cached (``metrics.json``, ``csv/``)."""
    return Path(cfg.paths.cache_dir) / "baselines" / baseline_key(cfg)


def run_baseline(cfg: DictConfig) -> dict[str, float]:
    """Train (or reuse) the CE-only student of ``cfg``; return its final metrics."""
    from distill.train import train

    out_dir = baseline_dir(cfg)
    result = out_dir / "metrics.json"
    if result.exists():
        log.info("CE-only baseline: reusing %s", result)
        return json.loads(result.read_text())
    log.info("CE-only baseline: training the same student with loss=ce for %d steps -> %s",
             cfg.trainer.max_steps, out_dir)
    base = copy.deepcopy(cfg)
    with open_dict(base):
        base.loss = OmegaConf.create(CE_LOSS)
        base.paths.output_dir = str(out_dir)
        base.summary.enabled = False
        base.export.enabled = False
        base.ckpt_path = None
        # CSV only (never the run's W&B project): its curve is drawn in the run's summary.png.
        base.logger = {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(out_dir),
                               "name": "csv"}}
        base.callbacks = {}
        base.trainer.enable_checkpointing = False
    metrics = train(base)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(metrics, indent=2))
    return metrics


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
    for term in terms:
        points = [(r["step"], r[f"train/{term}"]) for r in rows if f"train/{term}" in r]
        schedule = term.startswith("w_") or term == "temperature"
        (ax_sched if schedule else ax_train).plot(*zip(*points), label=term,
                                                  linestyle="--" if term == "temperature" else "-")
    ax_train.set(xlabel="optimizer step", ylabel="per-token value (before weighting)", title="training loss terms")
    if all(y > 0 for line in ax_train.lines for y in line.get_ydata()):
        ax_train.set_yscale("log")  # terms differ by orders of magnitude
    ax_sched.set(xlabel="optimizer step", title="schedules: weights and temperature")
    for ax in (ax_train, ax_sched):
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gap_closed(student: float, baseline: float, teacher: float) -> float | None:
    gap = baseline - teacher
    return None if gap <= 0 else (baseline - student) / gap


def format_table(rows: list[tuple[str, dict]]) -> str:
    lines = [f"{'model':<28}{'held-out CE':>12}{'ppl':>9}{'top-1 agree':>13}{'KL(T||S)':>10}",
             "-" * 72]
    for name, m in rows:
        agree = f"{m['agreement']:.3f}" if "agreement" in m else "-"
        kl = f"{m['kl']:.3f}" if "kl" in m else "-"
        lines.append(f"{name:<28}{m['loss']:>12.3f}{m['ppl']:>9.1f}{agree:>13}{kl:>10}")
    return "\n".join(lines)


def summarize(cfg: DictConfig, metrics: dict[str, float]) -> dict[str, float]:
    """Print the summary, write ``summary.json``; return extra metrics (``summary/*``)."""
    if "val/loss" not in metrics:
        log.warning("summary: no val/loss logged (validation never ran); nothing to summarise")
        return {}
    student = {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}
    rows = []
    teacher = None
    if "teacher_loss" in student:
        teacher = {"loss": student["teacher_loss"], "ppl": student["teacher_ppl"]}
        rows.append(("teacher", teacher))
    out = {}
    baseline = None
    if cfg.summary.baseline and teacher is not None and not _is_ce_only(cfg):
        b = run_baseline(cfg)
        baseline = {k[4:]: v for k, v in b.items() if k.startswith("val/")}
        rows.append(("student, CE only (baseline)", baseline))
    rows.append(("student, distilled" if not _is_ce_only(cfg) else "student, CE only", student))
    lines = [f"\n=== distill summary ({cfg.trainer.max_steps} steps) ===", format_table(rows)]
    if baseline is not None:
        closed = gap_closed(student["loss"], baseline["loss"], teacher["loss"])
        out["summary/baseline_loss"] = baseline["loss"]
        if closed is None:
            lines.append("WARNING: the teacher is not better than the CE-only student on held-out data, so it has "
                         "nothing to teach. Train the teacher longer (teacher.pretrain.steps) or use a larger one.")
        else:
            out["summary/gap_closed"] = closed
            lines.append(f"distillation closed {100 * closed:.1f}% of the CE-student-to-teacher gap "
                         f"({baseline['loss']:.3f} -> {student['loss']:.3f}; teacher {teacher['loss']:.3f})")
            if baseline["loss"] - teacher["loss"] < 0.2:
                lines.append("WARNING: the teacher is barely stronger than the student trained alone "
                             f"({baseline['loss'] - teacher['loss']:.3f} nats); distillation cannot help much.")
    text = "\n".join(lines)
    print(text, flush=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(
        {"teacher": teacher, "baseline": baseline, "student": student, **out}, indent=2))
    (out_dir / "summary.txt").write_text(text + "\n")
    try:
        plot = plot_summary(out_dir, baseline_dir(cfg) if baseline is not None else None,
                            teacher["loss"] if teacher else None, out_dir / "summary.png")
        if plot is not None:
            log.info("curves: %s", plot)
    except Exception as e:  # a plot must never cost the run its results
        log.warning("summary.png not written: %s", e)
    return out
