#!/usr/bin/env bash
# One `metalm eval` (its arguments as given: --json OUT --resume ... are the caller's) as the benchmark jobs run
# it: niced, on THREADS threads (default 1). With SHARDS=N (N >= 2), first N one-thread shards side by side
# (`--shard I/N`, each journaling its blocks apart and reading the others': one thread on each of N cores),
# then the same evaluation without a shard, which measures what is left and each
# row's cost alone (a quiet machine: the costs are timings) and writes the report. A failed shard stops it.
#
#   SHARDS=2 bash benchmarks/fewshot/eval.sh --model smollm2-135m --protocol bench_pool --json OUT.json --resume
set -euo pipefail
# The body is one function, read whole before it runs: editing this file while a run is in progress
# cannot change what that run does (bash reads a plain script as it goes).
main() {
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-1}
SHARDS=${SHARDS:-1}
if [ "$SHARDS" -gt 1 ]; then
  pids=()
  for ((i = 0; i < SHARDS; i++)); do
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 "$BIN/metalm" eval "$@" --shard "$i/$SHARDS" < /dev/null &
    pids+=($!)
  done
  trap 'kill "${pids[@]}" 2> /dev/null' TERM INT
  for pid in "${pids[@]}"; do wait "$pid"; done
  trap - TERM INT
fi
OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS nice -n 10 "$BIN/metalm" eval "$@" < /dev/null
}
main "$@"; exit
