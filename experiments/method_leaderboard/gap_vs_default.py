"""Gap closed against the *default* teacher, for every row of the leaderboard sweep.

``summary/gap_closed`` divides by the gap between a run's CE-only student and *its own* teacher.
For the multi-teacher rows that teacher is the mixture (or the per-token oracle pick), whose
held-out CE is lower than the default teacher's, so their ``gap_closed`` is on another scale than
the single-teacher rows'. This script puts every row on the default teacher's scale:

    gap_vs_default = (CE_base - CE_student) / (CE_base - CE_default_teacher)

with ``CE_base`` the run's own CE-only student (``summary.json``: ``summary/baseline_loss``; the
same student, data, steps and seed for every row) and ``CE_default_teacher`` the held-out CE of the
teacher of the ``experiment=method_leaderboard`` runs. Rows group runs that differ only in seed
(mean ± sample std, n), as ``distill-compare`` does. The last column pairs each run with forward
KL's run of the same seed (same CE-only student, same data order): the mean ± std of the
per-seed difference, which the seed-to-seed spread of both rows does not blur.

    python experiments/method_leaderboard/gap_vs_default.py multirun/method_leaderboard [--plot gap.png]

``--plot`` draws the same rows as horizontal bars (mean ± std), with forward KL's mean and the
issue's 55% goal as lines.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from distill.compare.load import load_local

REFERENCE = "experiment=method_leaderboard loss=kd"
SETTING_KEYS = ("experiment", "loss", "teacher.combine")


def setting_of(params: dict[str, str]) -> str:
    return " ".join(f"{k}={params[k]}" for k in SETTING_KEYS if k in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--plot", type=Path, help="also draw the rows as a bar chart (PNG)")
    args = parser.parse_args()
    # distill-compare's reader: final metrics plus summary/* from each run's summary.json
    found = [r for r in load_local(args.sweep) if "summary/baseline_loss" in r.final]
    single = [r.final["val/teacher_loss"] for r in found if r.params.get("experiment") == "method_leaderboard"]
    if not single:
        raise SystemExit(f"{args.sweep}: no finished experiment=method_leaderboard run to take the default teacher from")
    teacher = statistics.mean(single)
    rows: dict[str, dict[int, float]] = defaultdict(dict)
    for r in found:
        base, student = r.final["summary/baseline_loss"], r.final["val/loss"]
        rows[setting_of(r.params)][int(r.params.get("seed", 0))] = (base - student) / (base - teacher)
    kd = rows.get(REFERENCE, {})
    print(f"default teacher held-out CE {teacher:.4f}\n")
    print("| setting | n | gap closed vs the default teacher | minus forward KL, same seed |\n|---|---|---|---|")
    for setting, by_seed in sorted(rows.items(), key=lambda kv: -statistics.mean(kv[1].values())):
        paired = [v - kd[seed] for seed, v in by_seed.items() if seed in kd]
        cells = [_mean_std(list(by_seed.values())), _mean_std(paired) if setting != REFERENCE else "0"]
        print(f"| {setting} | {len(by_seed)} | " + " | ".join(cells) + " |")
    if args.plot:
        plot(rows, args.plot)
        print(f"\nplot: {args.plot}")


def plot(rows: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(rows, key=lambda k: statistics.mean(rows[k].values()))
    means = [100 * statistics.mean(rows[k].values()) for k in order]
    stds = [100 * statistics.stdev(rows[k].values()) if len(rows[k]) > 1 else 0.0 for k in order]
    labels = [k.replace("experiment=method_leaderboard_ensemble loss=kd teacher.combine=", "ensemble ")
               .replace("experiment=method_leaderboard loss=", "") for k in order]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(order) + 1.2))
    ax.barh(labels, means, xerr=stds, color=["tab:orange" if "ensemble" in lab else "tab:blue" for lab in labels],
            capsize=3)
    if REFERENCE in rows:
        ax.axvline(100 * statistics.mean(rows[REFERENCE].values()), color="k", lw=1, ls="--", label="forward KL")
    ax.axvline(55, color="tab:red", lw=1, ls=":", label="goal 55%")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("gap closed vs the default teacher, % (mean ± std over seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _mean_std(vals: list[float]) -> str:
    if not vals:
        return "-"
    std = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
    return f"{statistics.mean(vals):+.4f}{std}" 


if __name__ == "__main__":
    main()
