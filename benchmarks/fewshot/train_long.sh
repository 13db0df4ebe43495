#!/usr/bin/env bash
# A long meta-training run in the background, resumable across sessions: one niced process on THREADS
# threads (default 1), its run folder runs/long-NAME. The same command continues from the folder's last
# checkpoint (written every checkpoint_every steps, and on SIGTERM: a pre-empted run loses at most the
# step in progress). The run folder is local (runs/ is not committed): its status goes in
# benchmarks/MANIFEST.md.
#
#   nohup bash benchmarks/fewshot/train_long.sh benchmarks/fewshot/bench/hyperlora.yaml > runs/long-hyperlora.log 2>&1 &
#   bash benchmarks/fewshot/train_long.sh CONFIG --until 500     # stop (checkpointed) at step 500
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:?usage: train_long.sh CONFIG.yaml [metalm train options]}
shift
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-1}
RUN=${RUN:-runs/long-$(basename "$CONFIG" .yaml)}
OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS exec nice -n 10 $BIN/metalm train "$CONFIG" --run-dir "$RUN" \
  --quiet --resume "$@"  # --resume starts afresh in a folder without a checkpoint
