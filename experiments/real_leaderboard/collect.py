"""The real leaderboard's results.json, table.md and chart.png from its runs.

    python experiments/real_leaderboard/collect.py experiments/real_leaderboard/runs

Per run (``runs/seed<N>/<row>``): held-out CE, top-1 agreement and the cached rows' top-64 KL from
the run's own validation (``summary.json``: 64 held-out blocks); the median seconds per step
(``time/step_s``, the StepTimer's); and, the same for every row, KL(teacher || student) over the
full vocabulary and top-1 agreement with the full teacher on the first ``--kl-blocks`` held-out
blocks, computed here from the run's exported student and the teacher it was cut from (written to
``<run>/kl_full.json`` once, so a rerun only reads). The gap closed is against the CE-only row of the
same seed: ``(CE_ce - CE_row) / (CE_ce - CE_teacher)``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROWS = ["ce", "kd", "kd_t2", "rkl", "jsd", "skl", "srkl", "akl", "tvd", "todi", "kd_confidence", "kd_hidden"]
LABELS = {"ce": "CE only", "kd": "forward KL, T = 1", "kd_t2": "forward KL, T = 2", "rkl": "reverse KL",
          "jsd": "JSD (beta 0.5)", "skl": "skew KL (a 0.1)", "srkl": "skew reverse KL (a 0.1)", "akl": "AKL (mu 0.5)",
          "tvd": "TVD", "todi": "ToDi", "kd_confidence": "confidence-weighted KL",
          "kd_hidden": "forward KL + hidden states (kept layers)"}
ONLINE = {"akl", "todi", "kd_hidden"}


def teacher_folder(run: Path) -> str:
    """The folder the run's pruned student was cut from: its teacher (a cached run's teacher is the cache)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.load(run / "config_resolved.yaml").student.loaded.pruning.teacher)


def heldout_blocks(run: Path, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of the run's first ``blocks`` held-out blocks (data and tokenizer only)."""
    from omegaconf import OmegaConf

    from distill.build import build_checked

    dm = build_checked(OmegaConf.load(run / ".hydra" / "config.yaml")).datamodule
    dm.setup("fit")
    ids, labels = [], []
    for b in dm.val_dataloader():
        ids.append(b["input_ids"])
        labels.append(b["labels"])
        if sum(len(x) for x in ids) >= blocks:
            break
    return torch.cat(ids)[:blocks], torch.cat(labels)[:blocks]


@torch.no_grad()
def full_kl(run: Path, blocks: int, cache: dict) -> dict[str, float]:
    """KL(T||S) and top-1 agreement on the full vocabulary, first ``blocks`` held-out blocks."""
    target = run / "kl_full.json"
    if target.exists():
        return json.loads(target.read_text())
    from transformers import AutoModelForCausalLM

    from distill.losses.functional import forward_kl, next_token_targets

    teacher_path = teacher_folder(run)
    if cache.get("key") != (teacher_path, blocks):
        ids, labels = heldout_blocks(run, blocks)
        teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
        cache.update(key=(teacher_path, blocks), ids=ids, targets=next_token_targets(labels),
                     t_logits=[teacher(input_ids=ids[i:i + 4]).logits for i in range(0, blocks, 4)])
        del teacher
    student = AutoModelForCausalLM.from_pretrained(run / "student", dtype=torch.float32).eval()
    kl = agree = n = 0.0
    for j, i in enumerate(range(0, blocks, 4)):
        s = student(input_ids=cache["ids"][i:i + 4]).logits
        t = cache["t_logits"][j]
        keep = cache["targets"][i:i + 4] != -100
        kl += float(forward_kl(s, t)[keep].sum())
        agree += float((s.argmax(-1) == t.argmax(-1))[keep].sum())
        n += float(keep.sum())
    out = {"kl_full": kl / n, "agreement_full": agree / n, "blocks": blocks, "tokens": n}
    target.write_text(json.dumps(out, indent=2) + "\n")
    return out


def step_seconds(run: Path) -> float | None:
    from distill.runs import read_metrics

    xs = [r["time/step_s"] for r in read_metrics(run) if "time/step_s" in r]
    return xs[-1] if xs else None


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def collect(root: Path, blocks: int) -> dict:
    cache: dict = {}
    per_seed: dict[str, dict[str, dict]] = {}
    for seed_dir in sorted(root.glob("seed*")):
        for row in ROWS:
            run = seed_dir / row
            if not (run / "summary.json").exists():
                continue
            st = json.loads((run / "summary.json").read_text())["student"]
            rec = {"ce": st["loss"], "teacher_ce": st.get("teacher_loss"), "agreement": st.get("agreement"),
                   "kl_top64": st.get("kl_sparse"), "step_s": step_seconds(run)}
            rec.update(full_kl(run, blocks, cache))
            per_seed.setdefault(seed_dir.name, {})[row] = rec
    for rows in per_seed.values():  # the gap closed against the same seed's CE-only student
        ce = rows.get("ce")
        for rec in rows.values():
            if ce and rec["teacher_ce"] is not None:
                rec["gap_closed"] = (ce["ce"] - rec["ce"]) / (ce["ce"] - rec["teacher_ce"])
    table = {}
    for row in ROWS:
        recs = [rows[row] for rows in per_seed.values() if row in rows]
        if not recs:
            continue
        table[row] = {"label": LABELS[row], "teacher": "online" if row in ONLINE else ("none" if row == "ce" else "top-64 cache"), "n": len(recs),
                      **{k: mean_std([r.get(k) for r in recs]) for k in
                         ("ce", "gap_closed", "agreement", "kl_full", "agreement_full", "kl_top64", "step_s")}}
    teacher_ce = next((r["teacher_ce"] for rows in per_seed.values() for r in rows.values() if r["teacher_ce"]), None)
    return {"teacher_ce": teacher_ce, "kl_blocks": blocks, "rows": table, "per_seed": per_seed}


def fmt(ms: tuple[float, float], digits: int = 3, pct: bool = False) -> str:
    m, s = ms
    if m != m:
        return "-"
    return f"{100 * m:.1f}% ± {100 * s:.1f}%" if pct else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown(res: dict) -> str:
    lines = ["| rank | row | teacher | n | held-out CE | gap closed vs CE only | top-1 agreement | "
             f"KL(T\\|\\|S), full vocab ({res['kl_blocks']} blocks) | KL(T\\|\\|S), top-64 + tail | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(res["rows"].items(), key=lambda kv: kv[1]["ce"][0])
    for rank, (row, r) in enumerate(order, 1):
        lines.append(f"| {rank} | {r['label']} (`{row}`) | {r['teacher']} | {r['n']} | {fmt(r['ce'])} | "
                     f"{fmt(r['gap_closed'], pct=True)} | {fmt(r['agreement'])} | {fmt(r['kl_full'])} | "
                     f"{fmt(r['kl_top64'])} | {fmt(r['step_s'], 2)} |")
    lines.append(f"\nTeacher held-out CE: {res['teacher_ce']:.3f} nats/token.")
    return "\n".join(lines)


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(res["rows"].items(), key=lambda kv: kv[1]["ce"][0])
    names = [f"{r['label']}" for _, r in order]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, key, title in ((axes[0], "gap_closed", "gap closed vs the CE-only student (%)"),
                           (axes[1], "kl_full", f"KL(teacher || student), full vocabulary, {res['kl_blocks']} held-out blocks")):
        scale = 100 if key == "gap_closed" else 1
        ax.barh(names, [scale * r[key][0] for _, r in order], xerr=[scale * r[key][1] for _, r in order],
                color=["#c0392b" if row in ONLINE else "#3a6ea5" for row, _ in order])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    axes[0].axvline(0, color="black", lw=0.8)
    fig.suptitle("Healing a pruned SmolLM2 (12 of 30 layers), 20 steps: mean ± std over 3 seeds "
                 "(blue: top-64 cache, red: online teacher)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="?", default=HERE / "runs")
    ap.add_argument("--kl-blocks", type=int, default=16)
    ap.add_argument("--out", type=Path, default=HERE)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = collect(a.runs, a.kl_blocks)
    (a.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (a.out / "table.md").write_text(md + "\n")
    print(md)
    chart(res, a.out / "chart.png")


if __name__ == "__main__":
    main()
