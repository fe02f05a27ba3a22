#!/usr/bin/env bash
# The method leaderboard (issue 12): every divergence, token weighting on forward KL, multi-teacher
# and ULD on the embedded default, same steps, three seeds each, then distill-compare's table.
#
#   experiments/method_leaderboard/run.sh
#
# Knobs (environment):
#   SEEDS    seeds to run, comma-separated (default 0,1,2)
#   PARTS    which multiruns (default "1 2 3"; see below)
#   LOSSES   part 1's losses (default: all fourteen)
#   STEPS    optimizer steps (600, the default run)    THREADS  torch threads per run (1)
#   SWEEP    sweep root (multirun/method_leaderboard)  COMPARE  0 skips the table at the end
#   LEADERBOARD_TEACHER  part 3's teacher folder (default: the one part 1's runs loaded)
# Each part and seed is one `distill-train -m` into $SWEEP/part<P>/seed<S>, so two invocations with
# different SEEDS/PARTS/LOSSES can share the two cores (README: "Reproduce"). The first run pretrains
# the default teacher if the cache has none (its folder is keyed by data, tokenizer and recipe, not
# by seed or loss, so every row learns from the same teacher); each run's summary trains (once per
# seed and teacher, cached) the CE-only student it is compared with.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-0,1,2}
PARTS=${PARTS:-1 2 3}
LOSSES=${LOSSES:-kd,rkl,jsd,skl,srkl,tvd,akl,todi,uld,hidden,attention,kd_confidence,kd_sekd,kd_focal}
STEPS=${STEPS:-600}
THREADS=${THREADS:-1}
SWEEP=${SWEEP:-multirun/method_leaderboard}
COMPARE=${COMPARE:-1}

teacher_folder() {  # the default teacher folder a finished part-1 run loaded (config_resolved.yaml)
  python - "$SWEEP" <<'PY'
import sys
from pathlib import Path
from omegaconf import OmegaConf
for f in sorted(Path(sys.argv[1], "part1").rglob("config_resolved.yaml")):
    path = OmegaConf.select(OmegaConf.load(f), "teacher.loaded.name_or_path")
    if path and Path(path).is_dir():
        print(path)
        break
PY
}

for part in $PARTS; do
  for seed in ${SEEDS//,/ }; do
    common=(seed="$seed" trainer.max_steps="$STEPS" threads="$THREADS" hydra.sweep.dir="$SWEEP/part$part/seed$seed")
    case $part in
      1)  # every divergence, and the token-weighting strategies on forward KL, with the default teacher
          distill-train -m "${common[@]}" experiment=method_leaderboard loss="$LOSSES" ;;
      2)  # multi-teacher: the default teacher + a 2 x 128 teacher (pretrained once, on first use)
          distill-train -m "${common[@]}" experiment=method_leaderboard_ensemble loss=kd teacher.combine=mean,token ;;
      3)  # ULD across tokenizers: a student with its own 1,024-token BPE, and its CE-only twin
          teacher=${LEADERBOARD_TEACHER:-$(teacher_folder)}
          [[ -n $teacher ]] || { echo "part 3 needs the default teacher: run part 1 first or set LEADERBOARD_TEACHER" >&2; exit 2; }
          LEADERBOARD_TEACHER=$teacher distill-train -m "${common[@]}" experiment=method_leaderboard_cross_tokenizer loss=uld,ce ;;
      *)  echo "unknown part $part (use 1, 2, 3)" >&2; exit 2 ;;
    esac
  done
done
if [[ $COMPARE != 0 ]]; then
  distill-compare "$SWEEP" --out experiments/method_leaderboard/results \
    --relative-to experiment=method_leaderboard,loss=kd \
    --metrics val/loss summary/gap_closed summary/vs_baseline val/teacher_loss val/agreement val/kl time/step_s
fi
