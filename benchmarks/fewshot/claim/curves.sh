#!/usr/bin/env bash
# Learning-curve points of one claim candidate (benchmarks/fewshot/claim/PLAN.md): each of its checkpoints
# of steps 500, 1000, 1500 and 2000 written so far (STEPS), scored on the pool split's meta-val tasks at 4
# and 16 shots (10 episodes x 3 seeds: protocol bench_pool's; PROTOCOL names another), its own rows and
# fine-tuning (whose budget its @ft rows take). One niced process on THREADS threads (default 1); resumable: a point already written is
# skipped, a point in progress resumes from its journal (one episode at a time).
#
#   bash benchmarks/fewshot/claim/curves.sh runs/long-multitask
#   STEPS=200 CURVES=/tmp/c bash benchmarks/fewshot/claim/curves.sh runs/long-hyperlora --tasks clinc150.banking episodes=1
#   python benchmarks/fewshot/claim/choose.py runs/long-channel_metaicl runs/long-multitask ... --json ...
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUN=${1:?usage: curves.sh runs/long-NAME [metalm eval options]}
shift
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-1}
STEPS=${STEPS:-500 1000 1500 2000}
NAME=$(basename "$RUN")
NAME=${NAME#long-}
KIND=$($BIN/python benchmarks/fewshot/run_kind.py "$RUN")  # its rows: meta, mtl, hyper or library
PROTOCOL=${PROTOCOL:-bench_pool}
# Fine-tuning's budget as the baseline job chose it on meta-val (a grid of one: the @ft rows adapt with it);
# FT set (even empty) replaces it.
FT=${FT-$($BIN/python benchmarks/fewshot/claim/ft_budget.py)}
CURVES=${CURVES:-benchmarks/results/claim}
mkdir -p "$CURVES"
for STEP in $STEPS; do
  CKPT="$RUN/checkpoints/step-$(printf %07d "$STEP")"
  OUT="$CURVES/$NAME.step-$(printf %07d "$STEP").json"
  if [ -f "$OUT" ]; then continue; fi
  if [ ! -d "$CKPT" ]; then echo "curves.sh: $CKPT not written yet" >&2; continue; fi
  OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS nice -n 10 $BIN/metalm eval --run-dir "$CKPT" \
    --protocol "$PROTOCOL" --evaluate-on meta_val --shots 4,16 --methods "finetune,$KIND" \
    --json "$OUT" --resume --journal-every 1 --quiet cost_episodes=0 $FT "$@"  # FT: key=value words
done
