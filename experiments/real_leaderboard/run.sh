#!/usr/bin/env bash
# Reruns the study: every row of the real-model leaderboard on experiment=smollm2_prune (the same
# pruned initialisation, data order per seed, steps and optimizer), one run per process, each into
# $OUT/seed<N>/<row> (a run whose summary.json exists is skipped, so an interrupted study resumes),
# then distill-compare draws the table and plots and collect.py writes results.json, table.md, chart.png.
#   bash experiments/real_leaderboard/run.sh
#   SEEDS="0" bash experiments/real_leaderboard/run.sh & SEEDS="1 2" bash experiments/real_leaderboard/run.sh   # two processes
#   ROWS="kd rkl" STEPS=50 bash experiments/real_leaderboard/run.sh
# Rows that read the teacher's top-64 cache (the experiment's own, written once by its first run):
# ce, kd (T = 1), kd_t2, rkl, jsd, skl, srkl, tvd, kd_confidence. AKL, ToDi and hidden-state matching
# need the teacher's full distribution or hidden states, which no top-k cache holds: they run the
# same teacher online (experiment=smollm2_prune_online), on the same cut, data and steps.
set -euo pipefail
set -f   # no globbing: the layer map is a bracketed list
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/runs}"
SEEDS="${SEEDS:-0 1 2}"
ROWS="${ROWS:-ce kd kd_t2 rkl jsd skl srkl akl tvd todi kd_confidence kd_hidden}"
STEPS="${STEPS:-20}"
THREADS="${THREADS:-null}"
# hidden states of the student's block i (1..12) against the teacher block it was copied from: the cut
# keeps layers 0, 1, 8, 10, 11, 20-24, 28, 29 (deterministic, recorded in each run's config_resolved.yaml)
KEPT_MAP='[[1,1],[2,2],[3,9],[4,11],[5,12],[6,21],[7,22],[8,23],[9,24],[10,25],[11,29],[12,30]]'
row_overrides() {
  case "$1" in
    ce) echo "experiment=smollm2_prune loss=ce" ;;
    kd) echo "experiment=smollm2_prune loss=kd" ;;
    kd_t2) echo "experiment=smollm2_prune loss=kd loss.temperature=2" ;;
    rkl|jsd|skl|srkl|tvd|kd_confidence) echo "experiment=smollm2_prune loss=$1" ;;
    akl|todi) echo "experiment=smollm2_prune_online loss=$1" ;;
    kd_hidden) echo "experiment=smollm2_prune_online loss=hidden loss.components.hidden.layer_map=$KEPT_MAP" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}
for seed in $SEEDS; do
  for row in $ROWS; do
    dir="$OUT/seed$seed/$row"
    if [ -f "$dir/summary.json" ]; then echo "seed $seed $row: done ($dir)"; continue; fi
    start=$(date +%s)
    # shellcheck disable=SC2046
    distill-train $(row_overrides "$row") seed="$seed" trainer.max_steps="$STEPS" \
      trainer.val_check_interval="$STEPS" summary.baseline=false threads="$THREADS" \
      validate_at_start=false '~callbacks.model_checkpoint' +trainer.enable_checkpointing=false \
      +callbacks.step_timer._target_=distill.callbacks.StepTimer hydra.run.dir="$dir" "$@"
    echo "$(( $(date +%s) - start ))" > "$dir/wall_seconds.txt"
  done
done
# the table (mean ± std over seeds) and plots, then the study's own columns (gap closed against the
# same seed's CE-only row; KL(T||S) over the full vocabulary for every row) and chart
distill-compare "$OUT" --out "$HERE/results" --metrics val/loss val/agreement val/kl_sparse val/kl time/step_s
python "$HERE/collect.py" "$OUT" --out "$HERE"
