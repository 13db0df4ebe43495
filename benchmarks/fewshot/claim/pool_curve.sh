#!/usr/bin/env bash
# The claim study's pool curve (benchmarks/fewshot/claim/PLAN.md, "The pool curve"): the candidate designated at
# 16 shots trained again on 25% and 50% of the meta-train tasks (TrainConfig.pool_fraction: nested subsets, one
# shuffle of the sorted list by pool_seed 0), the same schedule, each run's last checkpoint scored on the rung's
# meta-val tasks at 16 shots like a curve point (curves.sh); the 100% point is the candidate's own run.
# Writes benchmarks/fewshot/claim/NAME_pool25.yaml and NAME_pool50.yaml (the config plus pool_fraction), trains
# them with train_long.sh (runs/long-NAME_pool25 ...: resumable, recorded in the manifest, state committed in
# benchmarks/runs/) and scores them (benchmarks/results/claim/NAME_pool25.step-N.json ...). One thread each: the
# two fractions side by side on two cores (LANES=1: one after the other, one core); the same command resumes.
#
#   setsid nohup bash benchmarks/fewshot/claim/pool_curve.sh multitask > runs/claim-pool-curve.log 2>&1 &
#   kill -TERM -- -$(pgrep -f claim/pool_curve.sh | head -1)   # stop it: both runs checkpoint
set -euo pipefail
# The body is one function, read whole before it runs: editing this file while a run is in progress
# cannot change what that run does (bash reads a plain script as it goes).
main() {
cd "$(dirname "$0")/../../.."
NAME=${1:?usage: pool_curve.sh CANDIDATE (its config: benchmarks/fewshot/claim/CANDIDATE.yaml)}
BIN=${BIN:-.venv/bin}
CONFIGS=${CONFIGS:-benchmarks/fewshot/claim}  # the candidate's NAME.yaml; the fractions' configs are written beside it
RUNS=${RUNS_DIR:-runs}
CONFIG=$CONFIGS/$NAME.yaml
[ -f "$CONFIG" ] || { echo "pool_curve.sh: no $CONFIG" >&2; exit 2; }
# the scored step: the schedule's last (the config's max_steps: the sizing's rung, 300, for the study's candidates)
STEPS=$($BIN/python -c "
import sys
from metalm.run import load_train_config
print(load_train_config(sys.argv[1]).max_steps)" "$CONFIG")
LANES=${LANES:-2}
case $LANES in 1 | 2) ;; *) echo "pool_curve.sh: LANES must be 1 or 2, got '$LANES'" >&2; exit 2 ;; esac
mkdir -p "$RUNS"
if [ "$LANES" = 1 ]; then
  fraction 25
  fraction 50
else
  fraction 25 &
  A=$!
  fraction 50 &
  B=$!
  trap 'kill -TERM "$A" "$B" 2> /dev/null' TERM INT
  wait "$A" || { wait "$B"; exit 1; }
  wait "$B" || exit 1
  trap - TERM INT
fi
}

fraction() {  # PCT: its config written (once), trained, its last checkpoint scored
  local pct=$1 share pool
  share=$($BIN/python -c "print($pct / 100)")
  pool=$CONFIGS/${NAME}_pool$pct.yaml
  if [ ! -f "$pool" ]; then
    { echo "# The pool curve of $NAME.yaml (PLAN.md): the same config on $pct% of the meta-train tasks (pool_curve.sh)."
      cat "$CONFIG"
      echo "pool_fraction: $share"
      echo "pool_seed: 0"; } > "$pool.tmp"
    mv "$pool.tmp" "$pool"
  fi
  RUN=$RUNS/long-${NAME}_pool$pct bash benchmarks/fewshot/train_long.sh "$pool" > "$RUNS/long-${NAME}_pool$pct.log" 2>&1 ||
    { echo "pool_curve.sh: training $pool failed ($RUNS/long-${NAME}_pool$pct.log)" >&2; return 1; }
  STEPS=$STEPS bash benchmarks/fewshot/claim/curves.sh "$RUNS/long-${NAME}_pool$pct" \
    >> "$RUNS/curves-${NAME}_pool$pct.log" 2>&1 ||
    { echo "pool_curve.sh: scoring $RUNS/long-${NAME}_pool$pct failed ($RUNS/curves-${NAME}_pool$pct.log)" >&2; return 1; }
}
main "$@"; exit
