#!/usr/bin/env bash
# A long meta-training run in the background, resumable across sessions: one niced process on THREADS
# threads (default 1), its run folder runs/long-NAME. The same command continues from the folder's last
# checkpoint (written every checkpoint_every steps, and on SIGTERM: a pre-empted run loses at most the
# step in progress). The run folder is local (runs/ is not committed); its state (config, step reached,
# status) is recorded in benchmarks/results/long_runs.json and the table of benchmarks/MANIFEST.md when
# the run starts and when its process ends (benchmarks/fewshot/long_runs.py), and when it ends its newest
# checkpoint (no base model) is copied to benchmarks/runs/NAME: commit that folder, and the same command
# continues from it on a fresh clone (if that commit fails, the script exits non-zero: 4 after a run that
# trained to its end). KEEP_STEPS (e.g. "150 300": a learning curve's points) are kept in
# that folder too once reached, so a run stopped past a point can still be scored there on a new machine.
#
#   nohup bash benchmarks/fewshot/train_long.sh benchmarks/fewshot/claim/hyperlora.yaml > runs/long-hyperlora.log 2>&1 &
#   bash benchmarks/fewshot/train_long.sh CONFIG --until 500     # stop (checkpointed) at step 500
#   pkill -TERM -f runs/long-hyperlora                            # stop it: checkpointed, recorded as stopped
set -uo pipefail
# The body is one function, read whole before it runs: editing this file while a run is in progress
# cannot change what that run does (bash reads a plain script as it goes).
main() {
cd "$(dirname "$0")/../.."
CONFIG=${1:?usage: train_long.sh CONFIG.yaml [metalm train options]}
shift
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-1}
RUN=${RUN:-runs/long-$(basename "$CONFIG" .yaml)}
MANIFEST="$BIN/python benchmarks/fewshot/long_runs.py update $RUN"
if [ -e "$RUN/.lock" ] && command -v flock >/dev/null && ! flock -n "$RUN/.lock" true; then
  echo "train_long.sh: $RUN is in use by process $(cat "$RUN/.lock"); the manifest is left as it is" >&2
  exit 2
fi
# A fresh clone (a new machine) has no runs/: the committed state (benchmarks/runs/NAME) is laid in first.
$BIN/python benchmarks/fewshot/long_runs.py restore "$RUN" || exit 2
# --resume starts afresh in a folder without a checkpoint
OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS nice -n 10 $BIN/metalm train "$CONFIG" --run-dir "$RUN" \
  --quiet --resume "$@" &
CHILD=$!
trap 'kill -TERM $CHILD 2>/dev/null' TERM INT  # a signal to this script stops the run the same way
$MANIFEST --config "$CONFIG" --status running || echo "train_long.sh: the manifest was not updated" >&2
wait $CHILD
RC=$?
while kill -0 $CHILD 2>/dev/null; do  # the wait was cut by a signal: wait for the checkpoint and the exit
  wait $CHILD
  RC=$?
done
# A run whose state was not committed would be lost with this machine: say so and fail (a study stops on it),
# even when the training itself finished; the run folder stays as it is, and the same command commits it.
if ! $MANIFEST --config "$CONFIG" --exit-code $RC --keep-steps "${KEEP_STEPS:-}"; then
  echo "train_long.sh: the manifest was not updated and $RUN's state was not committed (the cause above);" \
    "fix it and run the same command again" >&2
  [ "$RC" -eq 0 ] && RC=4
fi
exit $RC
}
main "$@"; exit
