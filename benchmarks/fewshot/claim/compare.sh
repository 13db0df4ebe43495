#!/usr/bin/env bash
# The claim study's comparison (benchmarks/fewshot/claim/PLAN.md, 2026-12-06): each candidate's chosen checkpoint
# on the pool split's held-out tasks at 1, 4 and 16 shots with the baseline table's protocol (bench_pool: the
# same episodes, 30 units per task and shot count), one row per candidate and shot count (its "compared" row in
# benchmarks/results/claim_selection.json, written by choose.py before any held-out scoring), with zeroshot
# beside it: its per-episode accuracies must equal the baseline table's (merge.py checks it: the proof that the
# episodes are the same). What a new task costs the row alone is measured too (cost_episodes=1: RESULTS' Pareto
# plot). One niced process on THREADS threads (default 1), or SHARDS=2 one-thread shards side by side then the
# report's run (benchmarks/fewshot/eval.sh); resumable: a written file is skipped, one in progress resumes from
# its journals. A candidate's committed state is laid into its run folder first (a new machine has no runs/).
# Then merge.py joins them with the baseline table into benchmarks/results/claim.json.
#
#   setsid nohup bash benchmarks/fewshot/claim/compare.sh > runs/claim-compare.log 2>&1 &
#   python benchmarks/fewshot/claim/merge.py --json benchmarks/results/claim.json
set -euo pipefail
# The body is one function, read whole before it runs: editing this file while a run is in progress
# cannot change what that run does (bash reads a plain script as it goes).
main() {
cd "$(dirname "$0")/../../.."
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-1}
SELECTION=${SELECTION:-benchmarks/results/claim_selection.json}
OUT=${OUT:-benchmarks/results/claim/compare}
PROTOCOL=${PROTOCOL:-bench_pool}
[ -f "$SELECTION" ] || { echo "compare.sh: $SELECTION is not written: run choose.py --json first (PLAN.md)" >&2; exit 2; }
FT=${FT-$($BIN/python benchmarks/fewshot/claim/ft_budget.py)}
mkdir -p "$OUT"
# one line per candidate and shot count: run folder, checkpoint, shots, row
$BIN/python -c "
import json, sys
for run, c in json.load(open(sys.argv[1]))['candidates'].items():
    for k in ('1', '4', '16'):
        print(run, c['checkpoint'], k, c['compared'][k])" "$SELECTION" |
while read -r RUN CKPT SHOTS ROW; do
  NAME=$(basename "$RUN")
  NAME=${NAME#long-}
  JSON="$OUT/$NAME.$SHOTS.json"
  if [ -f "$JSON" ]; then continue; fi
  $BIN/python benchmarks/fewshot/long_runs.py restore "$RUN"  # its chosen checkpoint is kept there
  KIND=$($BIN/python benchmarks/fewshot/run_kind.py "$RUN")
  # shellcheck disable=SC2086  # FT: key=value words
  BIN=$BIN bash benchmarks/fewshot/eval.sh --run-dir "$CKPT" \
    --protocol "$PROTOCOL" --shots "$SHOTS" --methods "zeroshot,finetune,$KIND" --json "$JSON" --resume \
    --journal-every 1 --quiet calibrate_trained=true cost_episodes=1 "rows=[zeroshot,$ROW]" $FT
done
}
main "$@"; exit
