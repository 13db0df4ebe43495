#!/usr/bin/env bash
# The baseline table of the benchmark (tasks/protocols/bench.yaml: the bench split's 20 held-out tasks at
# 1, 4 and 16 shots, 10 episodes x 3 seeds, in-context rows at 8,192 positions; zero-shot, ICL plain,
# calibrated and channel, fine-tuning with its budget chosen on the 10 meta-val tasks). The table the
# meta-training study must beat. Resumable across sessions: each measured block is journaled in
# benchmarks/results/bench_baselines.json.partial.jsonl (commit it at a session's end; the same command
# continues from it in a fresh clone), and the report's measuring_seconds sums every session's time.
# Blocks are journaled an episode at a time (--journal-every 1): a 16-shot multiemo block takes about an
# hour on one thread (ja and zh: more), longer than a session's background window.
#
#   nohup bash benchmarks/fewshot/bench_baselines.sh > runs/bench_baselines.log 2>&1 &
#   PROTOCOL=bench_pool OUT=benchmarks/results/bench_pool_baselines.json \
#     nohup bash benchmarks/fewshot/bench_baselines.sh > runs/bench_pool_baselines.log 2>&1 &   # the pinned pool
#
# On two cores, two one-thread shards side by side use both cores (each journals its
# blocks in OUT.partial.shard-I.jsonl and reads the other's; commit them too); the same command without
# --shard then measures what is left and each row's cost alone on a quiet machine, and writes the report:
#   SHARDS=2 PROTOCOL=bench_pool OUT=benchmarks/results/bench_pool_baselines.json \
#     setsid nohup bash benchmarks/fewshot/bench_baselines.sh > runs/bench_pool_baselines.log 2>&1 &
# (benchmarks/fewshot/eval.sh; or by hand: --shard 0/2 and --shard 1/2 side by side, then once without)
set -euo pipefail
# The body is one function, read whole before it runs: editing this file while a run is in progress
# cannot change what that run does (bash reads a plain script as it goes).
main() {
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-1}
PROTOCOL=${PROTOCOL:-bench}
OUT=${OUT:-benchmarks/results/bench_baselines.json}
BIN=$BIN THREADS=$THREADS bash benchmarks/fewshot/eval.sh --model smollm2-135m --protocol "$PROTOCOL" \
  --json "$OUT" --resume --journal-every 1 "$@"
}
main "$@"; exit
