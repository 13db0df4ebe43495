#!/usr/bin/env bash
# The speed tables on a lent GPU in one short call (about 5 minutes on one H100-class GPU, after
# `make install data`): meta-step vs higher/naive (fp32, as higher runs), vmap over tasks vs the loop,
# the frozen-prefix cache on SmolLM2 in bf16 autocast, shared-prompt scoring, and a bf16
# meta-training smoke run. Output: the tables on stdout.
set -euo pipefail
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv
$PY benchmarks/speed/meta_step.py --device cuda --steps 1,2,4,8 --repeats 5
$PY benchmarks/speed/vmap_tasks.py --device cuda --tasks 4,8,16 --repeats 5
$PY benchmarks/speed/prefix_cache.py --bf16 --steps 5 --repeats 5
$PY benchmarks/speed/prefix_cache.py --bf16 --steps 5 --repeats 5 --first-order
$PY benchmarks/speed/scoring.py --device cuda --labels 2,5,10 --repeats 3
rm -rf "${RUN:-/tmp/metalm-gpu}"
$PY -m metalm.cli train benchmarks/fewshot/fomaml.yaml --run-dir "${RUN:-/tmp/metalm-gpu}" --max-steps 10 \
    --quiet val_every=5 checkpoint_every=10
