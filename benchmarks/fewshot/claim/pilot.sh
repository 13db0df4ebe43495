#!/usr/bin/env bash
# The claim study's pilot (benchmarks/fewshot/claim/PLAN.md): FOMAML and Reptile trained to 15% of the
# chosen rung's schedule (benchmarks/results/claim_sizing.json: step 45 of 300), one after the other in a
# one-thread niced process (PARALLEL=1: side by side; train_long.sh: resumable, recorded in the manifest,
# state in benchmarks/runs/),
# then both checkpoints scored in one evaluation on the rung's meta-val tasks at 4 shots, 30 units (3 seeds
# x 10 episodes), their rows adapted with the baseline table's fine-tuning budget and scored calibrated too,
# and the pilot's rule applied (choose.py pilot): benchmarks/results/claim/pilot.json (the evaluation) and
# benchmarks/results/claim/pilot_choice.json (the choice). Resumable: each stage skips what is written.
#
#   setsid nohup bash benchmarks/fewshot/claim/pilot.sh > runs/claim-pilot.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=${BIN:-.venv/bin}
SIZING=${SIZING:-benchmarks/results/claim_sizing.json}
OUT=${OUT:-benchmarks/results/claim}
PROTOCOL=${PROTOCOL:-bench_pool}
read -r STEP TASKS < <($BIN/python -c "
import json, sys
d = json.load(open(sys.argv[1])); print(d['chosen']['steps'] * 15 // 100, ','.join(d['meta_val_tasks']))" "$SIZING")
mkdir -p "$OUT" runs
if [ -f "$OUT/pilot_choice.json" ]; then  # decided: the arms have trained on since (step 45 may be gone)
  echo "pilot.sh: decided already ($OUT/pilot_choice.json)" >&2
  cat "$OUT/pilot_choice.json"
  exit 0
fi
CKPT=checkpoints/step-$(printf %07d "$STEP")
for ARM in fomaml reptile; do
  if [ ! -d "runs/long-$ARM/$CKPT" ]; then
    bash benchmarks/fewshot/train_long.sh "benchmarks/fewshot/claim/$ARM.yaml" --until "$STEP" \
      > "runs/long-$ARM.log" 2>&1 &
    [ "${PARALLEL:-0}" = 1 ] || wait $! || true  # a failed arm is caught below
  fi
done
wait  # both arms (a failed arm leaves its checkpoint missing: the check below stops the script)
for ARM in fomaml reptile; do
  [ -d "runs/long-$ARM/$CKPT" ] || { echo "pilot.sh: runs/long-$ARM/$CKPT was not written (runs/long-$ARM.log)" >&2; exit 1; }
done
# shellcheck disable=SC2046  # ft_budget.py prints key=value words
OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1} nice -n 10 $BIN/metalm eval \
  --run-dir "runs/long-fomaml/$CKPT" --run-dir "runs/long-reptile/$CKPT" --protocol "$PROTOCOL" \
  --evaluate-on meta_val --tasks "$TASKS" --seeds 3 --shots 4 --methods finetune,meta --json "$OUT/pilot.json" \
  --resume --journal-every 1 --quiet cost_episodes=0 calibrate_trained=true \
  $($BIN/python benchmarks/fewshot/claim/ft_budget.py)
$BIN/python benchmarks/fewshot/claim/choose.py pilot "$OUT/pilot.json" --fomaml meta:fomaml@ft \
  --reptile meta:reptile@ft > "$OUT/pilot_choice.json.tmp"
mv "$OUT/pilot_choice.json.tmp" "$OUT/pilot_choice.json"
cat "$OUT/pilot_choice.json"
