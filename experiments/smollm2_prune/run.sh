#!/usr/bin/env bash
# Reruns the study: experiment=smollm2_prune at SEEDS (default 0 1 2), one run per process, each into
# $OUT/seed<N> (a seed whose summary.json exists is skipped, so an interrupted study resumes), then
# collects the figures into results.json and the table into table.md.
#   bash experiments/smollm2_prune/run.sh                 # all seeds, one after the other
#   SEEDS="1" bash experiments/smollm2_prune/run.sh &  SEEDS="2" bash experiments/smollm2_prune/run.sh   # two processes
# The first run converts the GGUF, cuts the student and writes the teacher's top-64 cache; the others reuse all three.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/runs}"
SEEDS="${SEEDS:-0 1 2}"
for seed in $SEEDS; do
  dir="$OUT/seed$seed"
  if [ -f "$dir/summary.json" ]; then echo "seed $seed: done ($dir)"; continue; fi
  start=$(date +%s)
  distill-train experiment=smollm2_prune seed="$seed" hydra.run.dir="$dir" "$@"
  echo "$(( $(date +%s) - start ))" > "$dir/wall_seconds.txt"
done
python "$HERE/collect.py" "$OUT"
