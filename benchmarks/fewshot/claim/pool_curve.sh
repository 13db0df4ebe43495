#!/usr/bin/env bash
# The claim study's pool curve (benchmarks/fewshot/claim/PLAN.md, "The pool curve"): the candidate designated at
# 16 shots trained again on 25% and 50% of the meta-train tasks (TrainConfig.pool_fraction: nested subsets, one
# shuffle of the sorted list by pool_seed 0), the same schedule, each run's last checkpoint scored on the rung's
# meta-val tasks at 16 shots like a curve point (curves.sh); the 100% point is the candidate's own run.
# Writes benchmarks/fewshot/claim/NAME_pool25.yaml and NAME_pool50.yaml (the config plus pool_fraction), trains
# them with train_long.sh (runs/long-NAME_pool25 ...: resumable, recorded in the manifest, state committed in
# benchmarks/runs/) and scores them (benchmarks/results/claim/NAME_pool25.step-N.json ...). One thread each, one
# after the other; the same command resumes.
#
#   setsid nohup bash benchmarks/fewshot/claim/pool_curve.sh multitask > runs/claim-pool-curve.log 2>&1 &
set -euo pipefail
# The body is one function, read whole before it runs: editing this file while a run is in progress
# cannot change what that run does (bash reads a plain script as it goes).
main() {
cd "$(dirname "$0")/../../.."
NAME=${1:?usage: pool_curve.sh CANDIDATE (its config: benchmarks/fewshot/claim/CANDIDATE.yaml)}
BIN=${BIN:-.venv/bin}
SIZING=${SIZING:-benchmarks/results/claim_sizing.json}
CONFIG=benchmarks/fewshot/claim/$NAME.yaml
[ -f "$CONFIG" ] || { echo "pool_curve.sh: no $CONFIG" >&2; exit 2; }
STEPS=$($BIN/python -c "import json, sys; print(json.load(open(sys.argv[1]))['chosen']['steps'])" "$SIZING")
for PCT in 25 50; do
  SHARE=$($BIN/python -c "print($PCT / 100)")
  POOL=benchmarks/fewshot/claim/${NAME}_pool$PCT.yaml
  if [ ! -f "$POOL" ]; then
    { echo "# The pool curve of $NAME.yaml (PLAN.md): the same config on $PCT% of the meta-train tasks (pool_curve.sh)."
      cat "$CONFIG"
      echo "pool_fraction: $SHARE"
      echo "pool_seed: 0"; } > "$POOL.tmp"
    mv "$POOL.tmp" "$POOL"
  fi
  bash benchmarks/fewshot/train_long.sh "$POOL" > "runs/long-${NAME}_pool$PCT.log" 2>&1 ||
    { echo "pool_curve.sh: training $POOL failed (runs/long-${NAME}_pool$PCT.log)" >&2; exit 1; }
  STEPS=$STEPS bash benchmarks/fewshot/claim/curves.sh "runs/long-${NAME}_pool$PCT"
done
}
main "$@"; exit
