#!/usr/bin/env bash
# The claim study (benchmarks/fewshot/claim/PLAN.md) as one resumable command on two cores. Two lanes side by
# side, one thread each, each taking its candidates one after the other: train (train_long.sh: resumes; a run
# the manifest lists as finished with this config is not started again), the curve points (curves.sh), then
# the chosen checkpoint's final scoring at 4 and 16 shots (choose.py step, FINAL). The lanes are balanced by
# the measured costs (benchmarks/results/claim_pool_cost.json: about 5.4 and 5.2 CPU-hours from the start).
# When both are done, choose.py writes benchmarks/results/claim_selection.json and the command stops: the
# selection is committed before any held-out task is scored (PLAN.md). Run again once it is committed: the
# comparison (compare.sh, two shards), merge.py (benchmarks/results/claim.json), the pool curve of the
# candidate designated at 16 shots (pool_curve.sh: its two runs side by side) and the projection (trend.py:
# benchmarks/results/claim_trend.json) follow.
#
#   setsid nohup bash benchmarks/fewshot/claim/study.sh > runs/claim-study.log 2>&1 &
#   kill -TERM -- -$(pgrep -f claim/study.sh | head -1)   # stop it all: runs checkpoint, evaluations journal
#   LANE_B= bash benchmarks/fewshot/claim/study.sh          # one lane (LANE_A's candidates), one core
#
# Commit benchmarks/runs/ and benchmarks/results/ (curve points, journals, long_runs.json) at a session's end;
# on a new machine the same command continues from them.
set -euo pipefail
# The body is one function, read whole before it runs: editing this file while a run is in progress
# cannot change what that run does (bash reads a plain script as it goes).
main() {
cd "$(dirname "$0")/../../.."
BIN=${BIN:-.venv/bin}
CLAIM=benchmarks/fewshot/claim
CONFIGS=${CONFIGS:-$CLAIM}  # the candidates' NAME.yaml (the test: tiny ones)
RUNS=${RUNS_DIR:-runs}
CURVES=${CURVES:-benchmarks/results/claim}
SELECTION=${SELECTION:-benchmarks/results/claim_selection.json}
# PLAN.md's order (a tie in a choice goes to the candidate listed first); fomaml: the pilot's choice
read -r -a ORDER <<< "${ORDER:-channel_metaicl metaicl_direct multitask fomaml fomaml_icl hyperlora lora_library}"
# The lanes' candidates; an empty lane does nothing (LANE_B= : one lane only, e.g. beside a CI run)
read -r -a LANE_A <<< "${LANE_A-fomaml multitask channel_metaicl lora_library}"
read -r -a LANE_B <<< "${LANE_B-hyperlora fomaml_icl metaicl_direct}"
export CURVES
# The steps curves.sh will score (STEPS, else the sizing's rung; one call computes them for both): each run
# keeps them in its committed state once reached (train_long.sh's KEEP_STEPS), so a run stopped past a point
# is scored on a new machine too.
SIZING=${SIZING:-benchmarks/results/claim_sizing.json}
KEEP=${STEPS:-$($BIN/python $CLAIM/sizing.py steps "$SIZING")}
mkdir -p "$RUNS"
if [ ! -f "$SELECTION" ]; then
  lane "${LANE_A[@]}" &
  A=$!
  lane "${LANE_B[@]}" &
  B=$!
  trap 'kill -TERM "$A" "$B" 2> /dev/null' TERM INT
  wait "$A" || { echo "study.sh: lane ${LANE_A[*]} failed ($RUNS/long-NAME.log, $RUNS/curves-NAME.log)" >&2; wait "$B"; exit 1; }
  wait "$B" || { echo "study.sh: lane ${LANE_B[*]} failed ($RUNS/long-NAME.log, $RUNS/curves-NAME.log)" >&2; exit 1; }
  trap - TERM INT
  $BIN/python $CLAIM/choose.py "${ORDER[@]/#/$RUNS/long-}" --curves "$CURVES" --json "$SELECTION"
fi
if ! git ls-files --error-unmatch "$SELECTION" > /dev/null 2>&1 || ! git diff --quiet HEAD -- "$SELECTION"; then
  echo "study.sh: commit $SELECTION before the held-out tasks are scored (PLAN.md), then run this again" >&2
  exit 3
fi
SHARDS=${SHARDS:-2} bash $CLAIM/compare.sh
$BIN/python $CLAIM/merge.py --json benchmarks/results/claim.json
DESIGNATED=$($BIN/python -c "
import json, sys
from pathlib import Path
print(Path(json.load(open(sys.argv[1]))['designated']['16']['candidate']).name.removeprefix('long-'))" "$SELECTION")
bash $CLAIM/pool_curve.sh "$DESIGNATED"
# The projection (trend.py): whether more steps or more meta-train tasks would close the gap
$BIN/python $CLAIM/trend.py "${ORDER[@]}" --pool "$DESIGNATED" --claim benchmarks/results/claim.json \
  --curves "$CURVES" --json benchmarks/results/claim_trend.json
}

lane() {  # CANDIDATE...: each trained, its curve points scored, its chosen checkpoint scored at 4 and 16 shots
  local name run step
  for name in "$@"; do
    run=$RUNS/long-$name
    if [ "$(finished "$run" "$CONFIGS/$name.yaml")" != yes ]; then
      say "$name: training ($RUNS/long-$name.log)"
      KEEP_STEPS=${KEEP//,/ } RUN=$run bash benchmarks/fewshot/train_long.sh "$CONFIGS/$name.yaml" > "$RUNS/long-$name.log" 2>&1 || return 1
    fi
    say "$name: curve points ($RUNS/curves-$name.log)"
    bash $CLAIM/curves.sh "$run" >> "$RUNS/curves-$name.log" 2>&1 || return 1
    step=$($BIN/python $CLAIM/choose.py step "$run" --curves "$CURVES") || return 1
    say "$name: step $step chosen, its final scoring"
    FINAL=$step bash $CLAIM/curves.sh "$run" >> "$RUNS/curves-$name.log" 2>&1 || return 1
    say "$name: done"
  done
}

say() { echo "$(date -u '+%F %H:%M') study.sh: $*"; }  # the log's timeline (MANIFEST's spans)

finished() {  # RUN CONFIG: "yes" when the long runs' manifest lists RUN as finished with CONFIG
  $BIN/python -c "
import json, sys
from pathlib import Path
path = Path(sys.argv[3])
run = json.loads(path.read_text()).get(sys.argv[1], {}) if path.is_file() else {}
print('yes' if run.get('status') == 'finished' and run.get('config') == sys.argv[2] else 'no')" "$@" \
    "${LONG_RUNS_JSON:-benchmarks/results/long_runs.json}"
}
main "$@"; exit
