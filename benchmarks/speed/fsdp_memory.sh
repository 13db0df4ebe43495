#!/usr/bin/env bash
# Per-process memory of `distributed: fsdp` against replicated processes: SmolLM2-135M, the
# FOMAML config (benchmarks/fewshot/fomaml.yaml) with every base weight shared (meta.shared: all, so the
# AdamW state of 135M weights is sharded too), 2 CPU processes under torchrun (gloo), 2 outer steps.
# Prints each process's peak RSS (/usr/bin/time) and the base parameters each process holds
# (`base_param_mib` in the run's log).
#
#   bash benchmarks/speed/fsdp_memory.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
OUT=$(mktemp -d)
for mode in replicate fsdp; do
  OMP_NUM_THREADS=1 $BIN/python -m torch.distributed.run --standalone --nproc_per_node 2 --no-python \
    /usr/bin/time -f "$mode peak RSS %M KiB" $BIN/python -m metalm.cli train benchmarks/fewshot/fomaml.yaml \
    --run-dir "$OUT/$mode" --quiet distributed=$mode max_steps=2 val_every=0 meta.shared=all 2>&1 \
    | grep "peak RSS"
  $BIN/python -c "import json,sys; r=json.loads(open(sys.argv[1]).readline()); \
print(sys.argv[2], 'base MiB held per process', r['base_param_mib']['held'], 'of', r['base_param_mib']['whole'], \
'; step seconds', round(r['seconds'], 1))" "$OUT/$mode/log.jsonl" $mode
done
rm -rf "$OUT"
