#!/usr/bin/env bash
# The evaluation study of benchmarks/RESULTS.md ("Held-out few-shot accuracy, 4 shots, 10 episodes x 3 seeds"):
# every baseline on the default split's held-out tasks, 4-shot 3-way episodes with 2 queries per class,
# 10 episodes per task and seed, 3 seeds of example choice, fine-tuning's optimizer (SGD, Adam), rate and
# steps (5 or 10: 20 would not fit a working session on 2 CPU cores) chosen on meta-val tasks, and the
# FOMAML run of benchmarks/fewshot/fomaml.yaml (the main job before the method study; trained here
# into runs/fomaml when missing) at its own and at fine-tuning's budget (@ft). Resumable: run it
# again after a kill and it continues (--resume); a stopped run's finished seeds can be reported
# with --seeds N.
#
#   nohup bash benchmarks/fewshot/study_eval.sh > runs/study_eval.log 2>&1 &
#   SHOTS=1 nohup bash benchmarks/fewshot/study_eval.sh > runs/study_eval_1shot.log 2>&1 &   # the 1-shot study
#
# The same episodes at a context that holds every demonstration (MAX_LENGTH=4096: no 4-shot in-context
# row of these episodes is longer; at the study's 160 all were cut, benchmarks/fewshot/truncation.py),
# with the study's selected run (multi-task) and its calibrated row (EXTRA; on bbc_news an episode's
# in-context rows hold ~2,000 tokens of demonstrations and 6 queries of ~300 each, so each in-context
# row costs minutes per episode on one CPU thread: in_context_trained=true would add two more):
#
#   nohup nice -n 10 env OMP_NUM_THREADS=1 RUN=runs/study/multitask MAX_LENGTH=4096 \
#     METHODS=zeroshot,zeroshot-cal,icl,icl-cal,finetune,mtl EXTRA=calibrate_trained=true \
#     OUT=benchmarks/results/eval_context_4shot.json bash benchmarks/fewshot/study_eval.sh > runs/study_context.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
SHOTS=${SHOTS:-4}
OUT=${OUT:-benchmarks/results/eval_default_${SHOTS}shot.json}
RUN=${RUN:-runs/fomaml}
[ -d "$RUN/checkpoints" ] || $BIN/metalm train benchmarks/fewshot/fomaml.yaml --run-dir "$RUN" --quiet
# The protocol (tasks/protocols/study.yaml) holds the settings; the flags here override it.
$BIN/metalm eval --run-dir "$RUN" --protocol study --shots $SHOTS --seeds ${SEEDS:-3} \
  ${METHODS:+--methods $METHODS} max_length=${MAX_LENGTH:-160} ${EXTRA:-} --json "$OUT" --resume --quiet
