#!/usr/bin/env bash
# The method study of the MetaICL/study issue, one round: train each candidate config of
# benchmarks/fewshot/study/ (and the earlier runs/study_metaicl), score every candidate and the two
# in-context baselines on the default split's 6 meta-val tasks, pick the winner there
# (benchmarks/fewshot/select_run.py: highest meta-val macro accuracy), and only then score the
# winner on the held-out episodes of the evaluation study (benchmarks/fewshot/study_eval.sh: same
# shots, ways, queries, episodes, seeds), paired with every row of that study by merge_rows.py.
# Held-out tasks play no part in any choice. Every stage resumes: a killed training continues from
# its last checkpoint, a killed evaluation from its journal.
#
#   nohup nice -n 10 env OMP_NUM_THREADS=1 bash benchmarks/fewshot/study_methods.sh > runs/study_methods.log 2>&1 &
#
# The gradient-based round (FOMAML with an inner loop that adapts, second-order MAML, Reptile,
# multi-task), in parallel on the other core:
#
#   nohup nice -n 10 env OMP_NUM_THREADS=1 NO_BASE_RUN=1 CONFIGS="fomaml_adam5 maml_top4 reptile multitask" \
#     VAL_OUT=benchmarks/results/study_metaval_gradient_4shot.json \
#     OUT=benchmarks/results/eval_study_gradient_winner_4shot.json \
#     bash benchmarks/fewshot/study_methods.sh > runs/study_gradient.log 2>&1 &
# The calibrated round: the in-context runs' weights scored with contextual calibration as well
# (rows <row>-cal), meta-val only; the study's winner is then chosen across rounds by select_run.py:
#
#   nohup nice -n 10 env OMP_NUM_THREADS=1 NO_BASE_RUN= CALIBRATE=1 VAL_ONLY=1 \
#     CONFIGS="metaicl_lr3e-3 metaicl_top12 fomaml_icl metaicl_lr1e-2" \
#     VAL_OUT=benchmarks/results/study_metaval_calibrated_4shot.json \
#     bash benchmarks/fewshot/study_methods.sh > runs/study_calibrated.log 2>&1 &
#
# The combined round: the multi-task weights adapted on the support set, then scored with the
# support set as demonstrations too (rows mtl+icl, mtl+icl-cal), meta-val only:
#
#   nohup nice -n 10 env OMP_NUM_THREADS=1 NO_BASE_RUN=1 CALIBRATE=1 IN_CONTEXT=1 VAL_ONLY=1 CONFIGS=multitask \
#     VAL_OUT=benchmarks/results/study_metaval_combined_4shot.json \
#     bash benchmarks/fewshot/study_methods.sh > runs/study_combined.log 2>&1 &
#
# The long-context round: the same candidates scored at a context that holds every demonstration
# (MAX_LENGTH=4096; at 160 every 4-shot in-context row was cut, benchmarks/fewshot/truncation.py):
#
#   nohup nice -n 10 env OMP_NUM_THREADS=1 NO_BASE_RUN=1 CALIBRATE=1 IN_CONTEXT=1 VAL_ONLY=1 MAX_LENGTH=4096 \
#     CONFIGS=multitask VAL_OUT=benchmarks/results/study_metaval_context_mtl_4shot.json \
#     bash benchmarks/fewshot/study_methods.sh > runs/study_context_mtl.log 2>&1 &
#   (the same with CONFIGS=metaicl_top12, VAL_OUT=..._context_metaicl_4shot.json: a multi-task run adapts
#   with the first meta-learning run's inner loop, so it is scored alone, with its own)
#
# VAL_ONLY=1 stops after the meta-val scores and the round's selection; CALIBRATE=1 adds
# calibrate_trained=true to both evaluations, IN_CONTEXT=1 in_context_trained=true; MAX_LENGTH sets
# max_length (default 160, the study's).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
CONFIGS=${CONFIGS:-"metaicl_lr3e-3 metaicl_top12 fomaml_icl"}
VAL_OUT=${VAL_OUT:-benchmarks/results/study_metaval_4shot.json}
OUT=${OUT:-benchmarks/results/eval_study_winner_4shot.json}
EVAL=(max_length=${MAX_LENGTH:-160} --resume --quiet)  # the rest: tasks/protocols/study-val.yaml, study.yaml
[ -n "${CALIBRATE:-}" ] && EVAL+=(calibrate_trained=true)  # each trained row also calibrated (<row>-cal)
[ -n "${IN_CONTEXT:-}" ] && EVAL+=(in_context_trained=true)  # each plain trained row also in context (<row>+icl)

runs=()
if [ -z "${NO_BASE_RUN:-}" ]; then  # the first MetaICL run (benchmarks/fewshot/study_metaicl.sh) joins the round
  runs=(runs/study_metaicl)
  [ -d runs/study_metaicl/checkpoints ] || \
    $BIN/metalm train benchmarks/fewshot/study_metaicl.yaml --run-dir runs/study_metaicl --quiet
fi
for name in $CONFIGS; do
  config=benchmarks/fewshot/study/$name.yaml
  run=runs/study/$name
  last=$(printf 'step-%07d' "$(sed -n 's/^max_steps: *//p' "$config")")
  if [ ! -d "$run/checkpoints/$last" ]; then
    resume=(); [ -d "$run/checkpoints" ] && resume=(--resume)
    echo "train $run"; $BIN/metalm train "$config" --run-dir "$run" "${resume[@]}" --quiet
  fi
  runs+=("$run")
done

run_args=(); for r in "${runs[@]}"; do run_args+=(--run-dir "$r"); done
kinds() {  # the rows the given runs provide: meta and/or mtl (metalm eval refuses a method no run provides)
  $BIN/python -c "import sys; from metalm.run import load_train_config as c, run_kind as k
print(','.join(sorted({k(c(r + '/config.yaml')) for r in sys.argv[1:]})))" "$@"
}
$BIN/metalm eval "${run_args[@]}" --protocol study-val --methods "icl,icl-cal,$(kinds "${runs[@]}")" \
  "${EVAL[@]}" --json "$VAL_OUT"
winner=$($BIN/python benchmarks/fewshot/select_run.py "$VAL_OUT" "${runs[@]}")
echo "winner on meta-val: $winner"
[ -n "${VAL_ONLY:-}" ] && exit 0  # only the meta-val scores (a round whose winner is chosen across rounds)

$BIN/metalm eval --run-dir "$winner" --protocol study --methods "zeroshot,$(kinds "$winner")" --seeds ${SEEDS:-3} \
  "${EVAL[@]}" --json "$OUT"
$BIN/python benchmarks/fewshot/merge_rows.py benchmarks/results/eval_default_4shot.json "$OUT"
