#!/usr/bin/env bash
# End-to-end runs of the CLI: train -> eval -> report -> export, on a tiny model and on the real
# SmolLM2-135M with a very small budget. Needs the packaged data (make data) and the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The runs use a researcher's own tasks (JSONL files and a split in a task folder), built from BBC News:
# binary topic tasks to meta-train and validate on, the shipped 5-way bbc_news task held out. They need
# no BIG-bench (which the package registry may refuse); the shipped BIG-bench tasks are tested where
# `make data` cached them (tests/data/test_shipped.py).
echo "== own tasks from BBC News; tiny model (random Llama, BPE tokenizer trained on their text)"
$BIN/python - "$WORK/tasks" "$WORK/tiny" <<'PY'
import json, sys
from pathlib import Path
from metalm.data import default_registry, load_split
from metalm.data.download import require
from metalm.models import save_tiny_model
bbc, out = require("bbc-news"), Path(sys.argv[1])
(out / "splits").mkdir(parents=True)
pairs = [("business", "tech"), ("politics", "sports"), ("entertainment", "business"), ("tech", "politics"),
         ("sports", "entertainment")]
for a, b in pairs:
    rows = [{"text": " ".join(f.read_text(encoding="utf-8", errors="replace").split())[:400], "label": t}
            for t in (a, b) for f in sorted((bbc / t).glob("*.txt"))[:40]]
    (out / f"{a}_{b}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / f"{a}_{b}.yaml").write_text(json.dumps({
        "name": f"{a}_{b}", "type": "classification", "source": {"kind": "jsonl", "path": f"{a}_{b}.jsonl"},
        "template": "Article: {{ text }}\nTopic:", "labels": [a, b], "metric": "accuracy"}), encoding="utf-8")
names = [f"{a}_{b}" for a, b in pairs]
(out / "splits" / "e2e.yaml").write_text(json.dumps(
    {"name": "e2e", "meta_train": names[:4], "meta_val": names[4:], "meta_test": ["bbc_news"]}), encoding="utf-8")
registry = default_registry(out)
split = load_split("e2e", registry)
texts = [t for name in split.meta_train + split.meta_val for t in registry[name].data["text"]]
save_tiny_model(sys.argv[2], texts, "llama", vocab_size=1024)
PY
$BIN/metalm train --run-dir "$WORK/tiny-run" --quiet model="$WORK/tiny" task_dirs="[$WORK/tasks]" split=e2e max_steps=4 val_every=2 \
  checkpoint_every=2 adapter.layers=top:2 sampler.ways=2 sampler.shots=2 sampler.queries=2 collate.max_length=96
$BIN/metalm eval --run-dir "$WORK/tiny-run" --shots 1,2 --episodes 2 --ways 2 --queries 1 --quiet max_length=96
$BIN/metalm report "$WORK/tiny-run"
$BIN/metalm export "$WORK/tiny-run" "$WORK/tiny-export"
test -f "$WORK/tiny-run/report/accuracy_vs_shots.png" && test -f "$WORK/tiny-export/adapter_model.safetensors"

echo "== tiny model: multi-task run (torchjd UPGrad, LM objective added), mtl row, diagnostics, 2 processes"
TINY=(model="$WORK/tiny" task_dirs="[$WORK/tasks]" split=e2e adapter.layers=top:2 sampler.ways=2 sampler.shots=2 sampler.queries=2
      collate.max_length=96 val_every=0)
$BIN/metalm train --run-dir "$WORK/tiny-mtl" --quiet "${TINY[@]}" max_steps=2 checkpoint_every=2 \
  "algorithm={name: multitask, weighting: upgrad}" "extra_tasks=[shakespeare]"
$BIN/metalm eval --run-dir "$WORK/tiny-run" --run-dir "$WORK/tiny-mtl" --shots 1 --episodes 1 --ways 2 --queries 1 \
  --quiet max_length=96 --json "$WORK/mtl-eval.json"
grep -q '"mtl"' "$WORK/mtl-eval.json"
$BIN/metalm diagnose --run-dir "$WORK/tiny-mtl" --batches 1 --json "$WORK/diag.json"
test -f "$WORK/diag.png"
GLOO_SOCKET_IFNAME=lo $BIN/python -m torch.distributed.run --standalone --nproc_per_node=2 -m metalm.cli train \
  --run-dir "$WORK/tiny-dist" --quiet "${TINY[@]}" max_steps=2 checkpoint_every=2 outer.meta_batch=2
test -d "$WORK/tiny-dist/checkpoints"
# Second-order MAML with the meta-batch's tasks under torch.func.vmap: no fallback to the loop.
$BIN/metalm train --run-dir "$WORK/tiny-vmap" --quiet "${TINY[@]}" max_steps=2 checkpoint_every=2 \
  outer.meta_batch=4 "algorithm={name: maml, inner: {steps: 2, vmap: true}}" 2> "$WORK/vmap.err"
if grep -q "does not run under torch.func.vmap" "$WORK/vmap.err"; then cat "$WORK/vmap.err"; exit 1; fi

echo "== SmolLM2-135M, very small budget"
$BIN/metalm train benchmarks/fewshot/main.yaml --run-dir "$WORK/smol-run" --quiet task_dirs="[$WORK/tasks]" split=e2e max_steps=2 \
  val_every=0 checkpoint_every=1 outer.meta_batch=1
$BIN/metalm eval --run-dir "$WORK/smol-run" --task-dir "$WORK/tasks" --tasks bbc_news --shots 1 --episodes 1 --ways 2 --queries 1 \
  --methods "zeroshot,$($BIN/python benchmarks/fewshot/run_kind.py "$WORK/smol-run")" --quiet  # main.yaml's row kind
$BIN/metalm report "$WORK/smol-run"
$BIN/metalm export "$WORK/smol-run" "$WORK/smol-export"
test -f "$WORK/smol-export/adapter_model.safetensors"
echo "end-to-end: ok"
