#!/usr/bin/env bash
# The method leaderboard (issue 12): every divergence, token weighting on forward KL, multi-teacher
# and ULD on the embedded default, same steps, three seeds each, then distill-compare's table.
#
#   LEADERBOARD_TEACHER=<trained default teacher folder> experiments/method_leaderboard/run.sh
#
# Knobs (environment): SEEDS (default 0,1,2), STEPS (600, the default run), THREADS (1),
# SWEEP (multirun/method_leaderboard), PARTS (1 2 3: which of the three multiruns below to run).
# Seeds are the outer loop of each multirun, so a partial run has every method at seed 0 first.
# Every run's summary trains (once, cached per seed) the CE-only student it is compared with.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-0,1,2}
STEPS=${STEPS:-600}
THREADS=${THREADS:-1}
SWEEP=${SWEEP:-multirun/method_leaderboard}
PARTS=${PARTS:-1 2 3}
: "${LEADERBOARD_TEACHER:?set LEADERBOARD_TEACHER to the trained default teacher folder (4 x 256, holds its tokenizer)}"
export LEADERBOARD_TEACHER
common=(seed="$SEEDS" trainer.max_steps="$STEPS" threads="$THREADS" hydra.sweep.dir="$SWEEP")

for part in $PARTS; do
  case $part in
    1)  # every divergence, and the token-weighting strategies on forward KL, with the default teacher
        distill-train -m "${common[@]}" experiment=method_leaderboard \
          loss=kd,rkl,jsd,skl,srkl,tvd,akl,todi,uld,kd_confidence,kd_sekd,kd_focal ;;
    2)  # multi-teacher: the default teacher + a 2 x 128 teacher (pretrained once, on first use)
        distill-train -m "${common[@]}" experiment=method_leaderboard_ensemble loss=kd teacher.combine=mean,token ;;
    3)  # ULD across tokenizers: a student with its own 1,024-token BPE, and its CE-only twin
        distill-train -m "${common[@]}" experiment=stdlib_uld_cross_tokenizer \
          teacher.teacher.model.name_or_path="$LEADERBOARD_TEACHER" loss=uld,ce \
          '+callbacks.step_timer={_target_: distill.compare.StepTimer}' export.enabled=false ;;
    *)  echo "unknown part $part (use 1, 2, 3)" >&2; exit 2 ;;
  esac
done
distill-compare "$SWEEP" --relative-to experiment=method_leaderboard,loss=kd \
  --metrics val/loss summary/gap_closed summary/vs_baseline val/teacher_loss val/agreement val/kl time/step_s
