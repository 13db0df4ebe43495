#!/usr/bin/env bash
# The method study's inner-step curve (the MetaICL/study issue, deliverables 4 and 6): query accuracy
# on the 6 meta-val tasks after 1, 2, 5 and 10 inner steps, for fine-tuning from the pretrained
# weights (SGD lr 1, the held-out study's chosen optimizer and rate) and for the trained
# initializations of the gradient-based round, each with its own inner optimizer and rate (FOMAML
# with Adam 0.01, MAML with SGD 0.3, Reptile, and the main job's earlier FOMAML with SGD 0.1).
# Same 4-shot episodes as the round's meta-val scores (10 per task, seed 1234).
#
#   nohup nice -n 10 env OMP_NUM_THREADS=1 bash benchmarks/fewshot/study_inner_steps.sh > runs/study_inner_steps.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
RUNS=${RUNS:-"runs/study/fomaml_adam5 runs/study/maml_top4 runs/study/reptile runs/fomaml"}
run_args=(); for r in $RUNS; do run_args+=(--run-dir "$r"); done
$BIN/metalm eval "${run_args[@]}" --protocol study-val --methods finetune,meta \
  "finetune_optimizers=[sgd]" "finetune_lrs=[1.0]" "finetune_steps=[5]" val_episodes=1 "inner_steps=[1,2,5,10]" --json "${OUT:-benchmarks/results/study_inner_steps_metaval.json}" \
  --resume --quiet
