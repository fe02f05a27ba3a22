"""The comparison report: teacher vs base student vs distilled student on the same tasks.

``report.md`` holds a table (pass@k, held-out top-1 agreement with the teacher, KL, perplexity,
generation tokens/s), the outcome breakdown, how much of the teacher-base gap the distilled
student closed, and side-by-side samples on the same prompts, chosen where the models disagree.
``report.png`` is a bar chart of pass@k per model (and held-out perplexity / agreement when
measured). matplotlib runs on the Agg backend: no display needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence
from distill.jsonl import read_jsonl
from distill.metrics import gap_closed

ROLE_ORDER = {"teacher": 0, "base": 1, "distilled": 2, "model": 3}
ROLE_COLOR = {"teacher": "#4c72b0", "base": "#dd8452", "distilled": "#55a868", "model": "#8172b3"}
OUTCOMES = ("passed", "failed", "error", "timeout", "syntax_error", "crashed")


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _load_results(summary: Mapping[str, Any]) -> dict[str, dict]:
    path = Path(summary.get("files", {}).get("results", ""))
    out: dict[str, dict] = {}
    if path.is_file():
        for row in read_jsonl(path, tolerate_torn_tail=True):
            out[row["task_id"]] = row
    return out


def pick_samples(entries: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, dict]],
                 count: int) -> list[str]:
    """Task ids to show: first where the models' outcomes differ (most informative), with the
    distilled model passing and the base failing first, then the rest in benchmark order."""
    common = [tid for tid in results[0] if all(tid in r for r in results[1:])] if results else []

    def passes(r: dict) -> bool:
        return r.get("c", 0) > 0

    roles = [e.get("role") for e in entries]

    def score(tid: str) -> tuple:
        p = [passes(r[tid]) for r in results]
        differ = len(set(p)) > 1
        win = ("distilled" in roles and "base" in roles
               and p[roles.index("distilled")] and not p[roles.index("base")])
        return (not win, not differ)

    return sorted(common, key=score)[:count]


def _clip(text: str, max_lines: int) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"# ... ({len(lines) - max_lines} more lines)"]
    return "\n".join(lines).replace("```", "``\u200b`")


def write_chart(entries: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """Grouped bars: pass@k per model; a second panel with held-out agreement and perplexity
    when any model has them."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ks = sorted({k for e in entries for k in (e.get("pass_at_k") or {})},
                key=lambda s: int(s.split("@")[1]))
    heldout = [e.get("heldout") or {} for e in entries]
    has_heldout = any(h.get("ppl") is not None for h in heldout)
    fig, axes = plt.subplots(1, 2 if has_heldout else 1, figsize=(11 if has_heldout else 7, 4.2),
                             squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(entries))
    for i, e in enumerate(entries):
        vals = [float((e.get("pass_at_k") or {}).get(k, 0.0)) for k in ks]
        xs = [x + (i - (len(entries) - 1) / 2) * width for x in range(len(ks))]
        bars = ax.bar(xs, vals, width, label=f"{e['model']} ({e.get('role', 'model')})",
                      color=ROLE_COLOR.get(e.get("role"), None))
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(range(len(ks)))
    ax.set_xticklabels(ks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass@k")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    if has_heldout:
        ax2 = axes[0][1]
        names = [e["model"] for e in entries]
        ppl = [h.get("ppl") if h.get("ppl") is not None else h.get("teacher_ppl") for h in heldout]
        agree = [h.get("agreement") for h in heldout]
        xs = range(len(entries))
        ax2.bar([x - 0.2 for x in xs], [p or 0 for p in ppl], 0.4, label="perplexity",
                color="#937860")
        ax2.set_ylabel("held-out perplexity")
        ax2.set_xticks(list(xs))
        ax2.set_xticklabels(names, rotation=15, fontsize=8)
        if any(a is not None for a in agree):
            ax3 = ax2.twinx()
            ax3.bar([x + 0.2 for x in xs], [a or 0 for a in agree], 0.4,
                    label="top-1 agreement", color="#da8bc3")
            ax3.set_ylim(0, 1.05)
            ax3.set_ylabel("top-1 agreement with teacher")
            ax3.legend(fontsize=8, loc="upper right")
        ax2.legend(fontsize=8, loc="upper left")
        ax2.set_title("held-out text")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(entries: Sequence[Mapping[str, Any]], out_dir: str | Path,
                 title: str | None = None, samples: int = 3, sample_lines: int = 30,
                 ) -> dict[str, Path]:
    """Write ``report.md``, ``report.png`` and ``comparison.json`` into ``out_dir``.

    Args:
        entries: one summary per model (:func:`distill.evaluation.runner.evaluate_model`'s
            return value, optionally with a ``heldout`` dict); all on the same benchmark.
        samples: how many tasks to show side by side.
    """
    if not entries:
        raise ValueError("write_report: no models to report")
    benches = {e.get("benchmark") for e in entries}
    if len(benches) > 1:
        raise ValueError(f"write_report: models were evaluated on different benchmarks {benches}")
    entries = sorted(entries, key=lambda e: ROLE_ORDER.get(e.get("role"), 9))
    bench = entries[0].get("benchmark")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"Evaluation on {bench}"
    chart = write_chart(entries, out / "report.png", f"{bench}: pass@k")
    ks = sorted({k for e in entries for k in (e.get("pass_at_k") or {})},
                key=lambda s: int(s.split("@")[1]))

    lines = [f"# {title}", ""]
    e0 = entries[0]
    lines += [f"Benchmark **{bench}**, {e0.get('num_tasks')} tasks, n={e0.get('n')} samples per "
              f"task; pass@k by the unbiased estimator (Chen et al., 2021). Held-out metrics are "
              f"per token on the same text for every model; agreement and KL are against the "
              f"teacher.", ""]
    header = ["Model", "Role", *ks, "Top-1 agreement", "KL(T‖S)", "Perplexity", "Tokens/s",
              "Tasks solved"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        h = e.get("heldout") or {}
        ppl = h.get("ppl") if h.get("ppl") is not None else None
        gen = e.get("generation") or {}
        row = [f"`{e['model']}`", e.get("role", "model"),
               *[_fmt((e.get("pass_at_k") or {}).get(k)) for k in ks],
               _fmt(h.get("agreement")), _fmt(h.get("kl")), _fmt(ppl, 2),
               _fmt(gen.get("tokens_per_s"), 1),
               f"{e.get('passed_tasks', 0)}/{e.get('num_tasks', 0)}"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    by_role = {e.get("role"): e for e in entries}
    if {"teacher", "base", "distilled"} <= set(by_role):
        lines += ["## Distillation effect", ""]
        for k in ks:
            t, b, d = (by_role[r].get("pass_at_k", {}).get(k) for r in ("teacher", "base",
                                                                          "distilled"))
            if None in (t, b, d):
                continue
            g = gap_closed(student=d, baseline=b, teacher=t, higher_is_better=True)
            lines.append(f"- {k}: distilled {d:.3f} vs base {b:.3f} ({(d - b) * 100:+.1f} "
                         f"points); teacher {t:.3f}; gap closed: "
                         f"{'—' if g is None else f'{g * 100:.0f}%'}")
        hb, hd = by_role["base"].get("heldout") or {}, by_role["distilled"].get("heldout") or {}
        if hb.get("agreement") is not None and hd.get("agreement") is not None:
            lines.append(f"- held-out top-1 agreement with the teacher: distilled "
                         f"{hd['agreement']:.3f} vs base {hb['agreement']:.3f}; KL "
                         f"{hd['kl']:.3f} vs {hb['kl']:.3f}")
        lines.append("")

    lines += ["## Outcomes (all samples)", "",
              "| Model | " + " | ".join(OUTCOMES) + " | most common errors |",
              "|" + "---|" * (len(OUTCOMES) + 2)]
    for e in entries:
        oc = e.get("outcomes") or {}
        errs = ", ".join(f"{k} ×{v}" for k, v in list((e.get("error_types") or {}).items())[:3])
        lines.append(f"| `{e['model']}` | " + " | ".join(str(oc.get(o, 0)) for o in OUTCOMES)
                     + f" | {errs or '—'} |")
    lines += ["", f"![pass@k per model]({chart.name})", ""]

    results = [_load_results(e) for e in entries]
    chosen = pick_samples(entries, results, samples) if all(results) else []
    if chosen:
        lines += ["## Side-by-side samples", "",
                  "The same prompt for every model (sample 0 of each); tasks where the outcomes "
                  "differ come first.", ""]
        for tid in chosen:
            lines += [f"### {tid}", "", "Prompt:", "", "```python",
                      _clip(results[0][tid].get("prompt", ""), sample_lines), "```", ""]
            for e, r in zip(entries, results):
                s = (r[tid].get("samples") or [{}])[0]
                detail = s.get("error_type") or ""
                msg = (s.get("message") or "").strip().splitlines()
                if msg:
                    detail += f": {msg[0][:120]}"
                lines += [f"**{e['model']}** ({e.get('role', 'model')}): `{s.get('outcome')}`"
                          + (f" — {detail}" if detail and s.get("outcome") != "passed" else ""),
                          "", "```python", _clip(s.get("completion", ""), sample_lines), "```",
                          ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    comparison = out / "comparison.json"
    comparison.write_text(json.dumps(list(entries), indent=2, default=str), encoding="utf-8")
    return {"report": report, "chart": chart, "comparison": comparison}
