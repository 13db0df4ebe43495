#!/usr/bin/env bash
# MetaICL on the evaluation study's episodes: train runs/study_metaicl (benchmarks/fewshot/study_metaicl.yaml),
# then score its row (in context, unadapted) and zero-shot on exactly the episodes of
# benchmarks/fewshot/study_eval.sh (same shots, ways, queries, episodes, seeds, max_length), and compare
# it with every row of that study on the same episodes (benchmarks/fewshot/merge_rows.py checks that
# the zero-shot accuracies of both files agree episode by episode before pairing). Resumable.
#
#   nohup nice -n 10 bash benchmarks/fewshot/study_metaicl.sh > runs/study_metaicl.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
RUN=${RUN:-runs/study_metaicl}
OUT=${OUT:-benchmarks/results/eval_metaicl_4shot.json}
if [ ! -d "$RUN/checkpoints" ]; then
  $BIN/metalm train benchmarks/fewshot/study_metaicl.yaml --run-dir "$RUN" --quiet
fi
$BIN/metalm eval --run-dir "$RUN" --protocol study --seeds ${SEEDS:-3} --methods zeroshot,meta --json "$OUT" \
  --resume --quiet
$BIN/python benchmarks/fewshot/merge_rows.py benchmarks/results/eval_default_4shot.json "$OUT"
