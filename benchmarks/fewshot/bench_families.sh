#!/usr/bin/env bash
# The amortized and modular families on the bench split (#25): a trained HyperLoRA or LoRA-library run
# evaluated by the bench protocol (1/4/16 shots, 10 episodes x 3 seeds, the baseline table's episodes,
# each row's cost per new task), with zero-shot and fine-tuning at the baseline job's chosen budget
# (benchmarks/fewshot/claim/ft_budget.py; on the run's adapter shape, so it is a row of its own:
# finetune:bench_NAME), then paired with the baseline table by benchmarks/fewshot/merge_rows.py, which
# checks that zero-shot agrees episode by episode (the same episodes).
# One niced process on THREADS threads (default 1); resumable (the same command), one episode at a time.
#
#   bash benchmarks/fewshot/bench_families.sh runs/long-hyperlora      # -> benchmarks/results/bench_hyperlora.json
#   bash benchmarks/fewshot/bench_families.sh runs/long-lora_library
#   metalm report benchmarks/results/bench_hyperlora_merged.json     # every row, the accuracy/cost plot
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:?usage: bench_families.sh runs/long-NAME [metalm eval options]}
shift
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-1}
NAME=$(basename "$RUN")
NAME=${NAME#long-}
OUT=${OUT:-benchmarks/results/bench_$NAME.json}
KIND=$($BIN/python benchmarks/fewshot/run_kind.py "$RUN")  # its rows: meta, mtl, hyper or library
FT=$($BIN/python benchmarks/fewshot/claim/ft_budget.py)
OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS nice -n 10 $BIN/metalm eval --run-dir "$RUN" --protocol bench \
  --methods "zeroshot,finetune,$KIND" --json "$OUT" --resume --journal-every 1 --quiet $FT "$@"
if [ -f benchmarks/results/bench_baselines.json ]; then
  $BIN/python benchmarks/fewshot/merge_rows.py benchmarks/results/bench_baselines.json "$OUT" --shared zeroshot \
    --json "${OUT%.json}_merged.json"
else
  echo "bench_families.sh: the baseline table (benchmarks/results/bench_baselines.json) is not done yet;" \
       "run this again once it is, to pair the rows" >&2
fi
