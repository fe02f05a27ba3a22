#!/usr/bin/env bash
# Reruns the study: experiment=real_cross_tokenizer with loss=uld and its CE-only twin (loss=ce) at
# SEEDS (default 0 1 2), one run per process, each into $OUT/seed<N>/<loss> (a run whose summary.json
# exists is skipped, so an interrupted study resumes), then distill-compare ranks the rows by val/bpb.
#   bash experiments/real_cross_tokenizer/run.sh
#   SEEDS="0 1" bash experiments/real_cross_tokenizer/run.sh & SEEDS="2" bash experiments/real_cross_tokenizer/run.sh  # two processes
# THREADS (default: torch's) sets threads=; LOSSES (default "uld ce") the rows.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/runs}"
SEEDS="${SEEDS:-0 1 2}"
LOSSES="${LOSSES:-uld ce}"
THREADS="${THREADS:-null}"
for seed in $SEEDS; do
  for loss in $LOSSES; do
    dir="$OUT/seed$seed/$loss"
    if [ -f "$dir/summary.json" ]; then echo "seed $seed $loss: done ($dir)"; continue; fi
    start=$(date +%s)
    distill-train experiment=real_cross_tokenizer loss="$loss" seed="$seed" threads="$THREADS" hydra.run.dir="$dir" "$@"
    echo "$(( $(date +%s) - start ))" > "$dir/wall_seconds.txt"
  done
done
distill-compare "$OUT" --out "$HERE/results" --objective val/bpb --relative-to loss=ce --relative time/step_s \
  --metrics val/bpb val/loss time/step_s
