#!/usr/bin/env bash
# Learning-curve points of one claim candidate (benchmarks/fewshot/claim/PLAN.md, 2026-12-06): its checkpoints
# at the chosen rung's points (every S/P steps; STEPS names others) scored on the rung's meta-val tasks at
# 16 shots with its units (benchmarks/results/claim_sizing.json, written by sizing.py), its own rows with
# their calibrated twins, and fine-tuning (whose budget its @ft rows take); FINAL=STEP scores the chosen
# checkpoint at 4 and 16 shots instead (NAME.step-N.final.json). Protocol bench_pool (PROTOCOL names
# another). One niced process on THREADS threads (default 1), or SHARDS=2 one-thread shards then the report's
# run (benchmarks/fewshot/eval.sh); resumable: a point already written is skipped, a point in progress resumes
# from its journals (one episode at a time). The run's committed state is laid into its folder first.
#
#   bash benchmarks/fewshot/claim/curves.sh runs/long-multitask
#   FINAL=$(python benchmarks/fewshot/claim/choose.py step runs/long-multitask) \
#     bash benchmarks/fewshot/claim/curves.sh runs/long-multitask
#   SIZING=none STEPS=200 CURVES=/tmp/c bash benchmarks/fewshot/claim/curves.sh runs/long-hyperlora --tasks clinc150.banking
#   python benchmarks/fewshot/claim/choose.py runs/long-channel_metaicl runs/long-multitask ... --json ...
set -euo pipefail
# The body is one function, read whole before it runs: editing this file while a run is in progress
# cannot change what that run does (bash reads a plain script as it goes).
main() {
cd "$(dirname "$0")/../../.."
RUN=${1:?usage: curves.sh runs/long-NAME [metalm eval options]}
shift
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-1}
NAME=$(basename "$RUN")
NAME=${NAME#long-}
$BIN/python benchmarks/fewshot/long_runs.py restore "$RUN"  # a new machine: its committed state (kept steps too)
KIND=$($BIN/python benchmarks/fewshot/run_kind.py "$RUN")  # its rows: meta, mtl, hyper or library
PROTOCOL=${PROTOCOL:-bench_pool}
SIZING=${SIZING:-benchmarks/results/claim_sizing.json}
# the points: STEPS, else the rung's (500-2000 with SIZING=none); study.sh's runs keep the same ones committed
STEPS=${STEPS:-$($BIN/python benchmarks/fewshot/claim/sizing.py steps "$SIZING")}
RUNG=()
if [ "$SIZING" != none ]; then
  # the rung's eval options (units: 10 episodes per seed; its meta-val tasks)
  RUNG_LINE=$($BIN/python benchmarks/fewshot/claim/sizing.py rung "$SIZING")
  read -r TASKS SEEDS <<< "$RUNG_LINE"
  RUNG=(--tasks "$TASKS" --seeds "$SEEDS")
fi
# Fine-tuning's budget as the baseline job chose it on meta-val (a grid of one: the @ft rows adapt with it);
# FT set (even empty) replaces it.
FT=${FT-$($BIN/python benchmarks/fewshot/claim/ft_budget.py)}
CURVES=${CURVES:-benchmarks/results/claim}
mkdir -p "$CURVES"
if [ -n "${FINAL:-}" ]; then
  STEPS=$FINAL
  # the chosen checkpoint stays in the run's committed state (benchmarks/runs/NAME) through later commits,
  # so the comparison can score it on a new machine
  $BIN/python benchmarks/fewshot/long_runs.py keep "$RUN" "$FINAL" ||
    echo "curves.sh: step $FINAL is not kept in a committed state (above); commit it before the machine goes" >&2
fi
for STEP in $STEPS; do
  CKPT="$RUN/checkpoints/step-$(printf %07d "$STEP")"
  OUT="$CURVES/$NAME.step-$(printf %07d "$STEP")${FINAL:+.final}.json"
  if [ -f "$OUT" ]; then continue; fi
  if [ ! -d "$CKPT" ]; then echo "curves.sh: $CKPT not written yet" >&2; continue; fi
  # shellcheck disable=SC2086  # FT: key=value words
  BIN=$BIN bash benchmarks/fewshot/eval.sh --run-dir "$CKPT" \
    --protocol "$PROTOCOL" --evaluate-on meta_val --shots "${FINAL:+4,}16" --methods "finetune,$KIND" \
    "${RUNG[@]}" --json "$OUT" --resume --journal-every 1 --quiet cost_episodes=0 calibrate_trained=true $FT "$@"
done
}
main "$@"; exit
