#!/usr/bin/env bash
# The learnability job (benchmarks/results/learnability.json): two niced one-thread shards, resumable.
# Rerun the same command to resume; benchmarks/MANIFEST.md lists it with its status.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SHARDS=${SHARDS:-2}
[ -f benchmarks/results/learnability_order.txt ] || OMP_NUM_THREADS=1 nice $PY benchmarks/fewshot/learnability.py --limit 0
for i in $(seq 0 $((SHARDS - 1))); do
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup nice -n 10 $PY benchmarks/fewshot/learnability.py --shard $i/$SHARDS \
    >> runs/learnability.$i.log 2>&1 &
done
wait
