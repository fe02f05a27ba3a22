"""The dataset report of a generated set: ``dataset_report.md`` plus ``dataset_report.png``.

Read before training on a set, it answers the questions a number in a log does not: where the
answers went (the filter funnel, one row per filter in the order they run), what the set is made
of (languages and task types, before and after filtering), how long the answers are (accepted vs
rejected), what each teacher cost per accepted answer, and what accepted and rejected answers
actually look like, side by side.

A pure function of the files the earlier stages wrote (``filter_report.json``, ``filtered.jsonl``,
``rejected.jsonl``), so ``stage=report`` can be rerun at any time without touching the API.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from distill.jsonl import read_jsonl
from distill.teacher_data.filters import REASONS, REJECTED

MARKDOWN = "dataset_report.md"
PNG = "dataset_report.png"
SAMPLE_CHARS = 500


def funnel(report: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """``(filter, removed, remaining after it)`` for every filter, in the order the filters run."""
    left = int(report["input_records"])
    rows = []
    for reason in REASONS:
        n = int(report["removed"].get(reason, 0))
        left -= n
        rows.append((reason, n, left))
    return rows


def _length(rec: Mapping[str, Any]) -> int:
    return len(rec.get("answer") or rec.get("completion") or "")


def _mix(kept: list[dict], rejected: list[dict], key: str) -> list[tuple[str, int, int]]:
    all_ = Counter(str((r.get("meta") or {}).get(key)) for r in kept + rejected)
    k = Counter(str((r.get("meta") or {}).get(key)) for r in kept)
    return [(name, n, k.get(name, 0)) for name, n in sorted(all_.items(), key=lambda kv: (-kv[1], kv[0]))]


def _cell(text: str | None) -> str:
    t = (text or "").strip()
    if len(t) > SAMPLE_CHARS:
        t = t[:SAMPLE_CHARS] + " ..."
    # HTML-escaped (code holds <vector>, <T>) so a renderer shows it; newlines become <br>.
    t = t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return t.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def _stats(xs: list[int]) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
    return f"{statistics.median(xs):.0f} / {p90} / {xs[-1]}"


def render_markdown(title: str, report: Mapping[str, Any], kept: list[dict], rejected: list[dict],
                    n_samples: int = 3) -> str:
    lines = [f"# Dataset report: {title}", "",
             f"{report['input_records']} answers to {report['input_prompts']} prompts; {report['kept']} kept "
             f"({report['kept'] / max(1, report['input_records']):.0%}). Figure: [{PNG}]({PNG}).", "",
             "## Filter funnel", "", "| filter | removed | remaining |", "|---|---:|---:|",
             f"| (input) | | {report['input_records']} |"]
    lines += [f"| {name} | {n} | {left} |" for name, n, left in funnel(report) if n]
    lines += ["", f"Every removed answer is counted under the first filter that rejects it; the rows add up "
                  f"to {report['removed_total']} removed.", ""]
    for key, heading in (("language", "Language mix"), ("task_type", "Task-type mix")):
        lines += [f"## {heading}", "", f"| {key} | answers | kept | kept % |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {n} | {k} | {k / max(1, n):.0%} |" for name, n, k in _mix(kept, rejected, key)]
        lines.append("")
    acc, rej = [_length(r) for r in kept], [_length(r) for r in rejected]
    lines += ["## Answer lengths (characters of the answer part)", "",
              "| | answers | median / p90 / max |", "|---|---:|---:|",
              f"| accepted | {len(acc)} | {_stats(acc)} |", f"| rejected | {len(rej)} | {_stats(rej)} |", ""]
    models = report.get("by_model") or {}
    lines += ["## Cost by model", "",
              "| model | answers | accepted | acceptance | cost (USD) | per accepted answer (USD) |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        per = "-" if m["cost_per_accepted_usd"] is None else f"{m['cost_per_accepted_usd']:.6f}"
        rate = "-" if m["acceptance_rate"] is None else f"{m['acceptance_rate']:.0%}"
        lines.append(f"| {name} | {m['records']} | {m['kept']} | {rate} | {m['cost_usd']:.6f} | {per} |")
    lines += ["", "## Samples: accepted vs rejected", "",
              "| accepted | rejected (reason) |", "|---|---|"]
    # One rejected sample per reason first, so the table shows the variety of what the filters catch.
    by_reason: dict[str, dict] = {}
    for r in rejected:
        by_reason.setdefault((r.get("qc") or {}).get("removed", "?"), r)
    rej_samples = list(by_reason.values()) + [r for r in rejected if r not in by_reason.values()]
    for i in range(min(n_samples, max(len(kept), len(rej_samples)))):
        a = kept[i] if i < len(kept) else None
        b = rej_samples[i] if i < len(rej_samples) else None
        left = right = ""
        if a:
            meta = a.get("meta") or {}
            left = (f"**{a.get('teacher') or a.get('model')}**, {meta.get('language')} {meta.get('task_type')}<br>"
                    f"{_cell(a.get('answer') or a.get('completion'))}")
        if b:
            right = (f"**{(b.get('qc') or {}).get('removed')}** ({b.get('teacher') or b.get('model')})<br>"
                     f"{_cell(b.get('completion'))}")
        lines.append(f"| {left} | {right} |")
    return "\n".join(lines) + "\n"


def render_png(path: Path, report: Mapping[str, Any], kept: list[dict], rejected: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(17, 8))
    rows = [("input", 0, report["input_records"])] + [r for r in funnel(report) if r[1]]
    ax[0, 0].barh([r[0] for r in rows][::-1], [r[2] for r in rows][::-1], color="tab:blue")
    ax[0, 0].set_title("filter funnel: answers remaining after each filter")
    for col, key in ((1, "language"), (2, "task_type")):
        mix = _mix(kept, rejected, key)
        x = range(len(mix))
        ax[0, col].bar([i - 0.2 for i in x], [m[1] for m in mix], width=0.4, label="answers")
        ax[0, col].bar([i + 0.2 for i in x], [m[2] for m in mix], width=0.4, label="kept")
        ax[0, col].set_xticks(list(x), [m[0] for m in mix], rotation=30)
        ax[0, col].set_title(f"{key.replace('_', '-')} mix")
        ax[0, col].legend()
    acc, rej = [_length(r) for r in kept], [_length(r) for r in rejected]
    if acc or rej:
        ax[1, 0].hist([acc, rej], bins=20, label=["accepted", "rejected"], stacked=False)
        ax[1, 0].legend()
    ax[1, 0].set_title("answer length (characters)")
    models = report.get("by_model") or {}
    names = list(models)
    ax[1, 1].bar(names, [models[n]["cost_usd"] for n in names], color="tab:orange")
    ax[1, 1].set_ylabel("USD, all answers")
    twin = ax[1, 1].twinx()
    twin.plot(names, [models[n]["cost_per_accepted_usd"] or 0.0 for n in names], "ko-")
    twin.set_ylabel("USD per accepted answer (dots)")
    ax[1, 1].set_title("cost by model")
    ax[1, 2].bar(names, [models[n]["acceptance_rate"] or 0.0 for n in names], color="tab:green")
    ax[1, 2].set_ylim(0, 1)
    ax[1, 2].set_title("acceptance rate by model")
    for a_ in (ax[1, 1], ax[1, 2]):
        a_.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(out_dir: str | Path, title: str = "teacher data") -> dict[str, Any]:
    """Write ``dataset_report.md`` and ``.png`` into ``out_dir`` from the filter stage's outputs."""
    out_dir = Path(out_dir)
    rpath = out_dir / "filter_report.json"
    if not rpath.is_file():
        raise FileNotFoundError(f"report: {rpath} does not exist; run stage=filter (or stage=all) first")
    report = json.loads(rpath.read_text(encoding="utf-8"))
    kept = read_jsonl(out_dir / "filtered.jsonl", tolerate_torn_tail=True) if (out_dir / "filtered.jsonl").exists() else []
    rejected = read_jsonl(out_dir / REJECTED, tolerate_torn_tail=True) if (out_dir / REJECTED).exists() else []
    md = out_dir / MARKDOWN
    md.write_text(render_markdown(title, report, kept, rejected), encoding="utf-8")
    png = out_dir / PNG
    render_png(png, report, kept, rejected)
    return {"markdown": str(md), "png": str(png), "kept": len(kept), "rejected": len(rejected)}
