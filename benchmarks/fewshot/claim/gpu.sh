#!/usr/bin/env bash
# The claim study's training on a lent GPU in one call (issue 44, deliverable 6): every candidate of
# PLAN.md trained to its schedule one after another on the one device (bf16 autocast, as the configs
# say), each through train_long.sh, so each run's state lands in benchmarks/runs/long-NAME and the
# manifest (benchmarks/results/long_runs.json, benchmarks/MANIFEST.md) as on a CPU; then each run's
# learning-curve points at the sizing's rung (curves.sh) and its chosen checkpoint at 4 and 16 shots
# (choose.py step, curves.sh FINAL=STEP). Everything it wrote is packed into ONE archive, $OUT/claim_gpu.tar
# (paths relative to the repository root; the device tool brings back at most 8 files of 16 MiB, so an
# archive over 15 MiB is split into claim_gpu.tar.00, .01 ...), with the log (seconds per candidate, the
# device's name) in $OUT/claim_gpu.log. Back here: `cat claim_gpu.tar* | tar -x` in the repository root,
# commit, and every run resumes or is evaluated from there on any machine.
# Resumable like its parts: a finished run is not trained again, a written curve point is skipped.
#
#   OUT=/tmp/claim-gpu bash benchmarks/fewshot/claim/gpu.sh                      # the study's candidates
#   CONFIGS="a.yaml b.yaml" CURVE_STEPS="2" TRAIN_ARGS="device=cpu" CURVE_ARGS="--shots 2" FT="" SIZING=none \
#     FINALS=0 OUT=/tmp/g bash benchmarks/fewshot/claim/gpu.sh                   # its CPU test, at a tiny size
#
# Needs the model in METALM_HOME and metalm importable by $BIN/python (on the device: PLAN.md, "A GPU").
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:?set OUT to the folder that receives claim_gpu.tar and claim_gpu.log}
CLAIM=benchmarks/fewshot/claim
CONFIGS=${CONFIGS:-$CLAIM/channel_metaicl.yaml $CLAIM/metaicl_direct.yaml $CLAIM/multitask.yaml $CLAIM/fomaml.yaml \
$CLAIM/reptile.yaml $CLAIM/fomaml_icl.yaml $CLAIM/hyperlora.yaml $CLAIM/lora_library.yaml}
TRAIN_ARGS=${TRAIN_ARGS:-device=cuda}
export BIN=${BIN:-.venv/bin} THREADS=${THREADS:-4}
mkdir -p "$OUT"
LOG="$OUT/claim_gpu.log"
: > "$LOG"
$BIN/python -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" \
  | tee -a "$LOG"
say() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
RUNS=()
for CONFIG in $CONFIGS; do
  NAME=$(basename "$CONFIG" .yaml)
  export RUN=${RUNS_DIR:-runs}/long-$NAME
  RUNS+=("$RUN")
  START=$SECONDS
  # shellcheck disable=SC2086  # TRAIN_ARGS: key=value words
  bash benchmarks/fewshot/train_long.sh "$CONFIG" $TRAIN_ARGS >> "$LOG" 2>&1 || { say "$NAME: training failed"; continue; }
  say "$NAME: trained in $((SECONDS - START)) s"
done
unset RUN
for R in "${RUNS[@]}"; do
  [ -f "$R/config.yaml" ] || continue
  START=$SECONDS
  # shellcheck disable=SC2086  # CURVE_ARGS: more metalm eval options
  STEPS=${CURVE_STEPS:-} bash $CLAIM/curves.sh "$R" ${CURVE_ARGS:-} >> "$LOG" 2>&1 || say "$R: curve points failed"
  if [ "${FINALS:-1}" = 1 ]; then  # the chosen checkpoint at 4 and 16 shots (PLAN.md: choose.py's rule)
    CHOSEN=$($BIN/python $CLAIM/choose.py step "$R" --curves "${CURVES:-benchmarks/results/claim}" 2>> "$LOG") \
      && FINAL=$CHOSEN bash $CLAIM/curves.sh "$R" ${CURVE_ARGS:-} >> "$LOG" 2>&1 || say "$R: the final scoring failed"
  fi
  say "$R: curve points in $((SECONDS - START)) s"
done
# What it wrote (the defaults: repository paths; the test points LONG_RUNS_* and CURVES elsewhere).
STATE=${LONG_RUNS_STATE:-benchmarks/runs}
PACK=()
for R in "${RUNS[@]}"; do [ -d "$STATE/$(basename "$R")" ] && PACK+=("$STATE/$(basename "$R")"); done
for F in "${LONG_RUNS_JSON:-benchmarks/results/long_runs.json}" "${LONG_RUNS_MANIFEST:-benchmarks/MANIFEST.md}" \
  "${CURVES:-benchmarks/results/claim}"; do [ -e "$F" ] && PACK+=("$F"); done
tar -cf "$OUT/claim_gpu.tar" "${PACK[@]}" 2> >(grep -v "Removing leading" >&2)
# The device tool brings back files of at most 16 MiB (64 MiB in all): a larger archive goes in 15 MiB parts.
if [ "$(stat -c %s "$OUT/claim_gpu.tar")" -gt $((15 * 1024 * 1024)) ]; then
  split -b 15M -d "$OUT/claim_gpu.tar" "$OUT/claim_gpu.tar." && rm "$OUT/claim_gpu.tar"
  say "packed in parts (cat claim_gpu.tar.?? > claim_gpu.tar): ${PACK[*]}"
else
  say "packed into $OUT/claim_gpu.tar: ${PACK[*]}"
fi
