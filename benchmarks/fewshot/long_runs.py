"""The manifest of long training runs: what each was started from, the step it reached, its status.

`benchmarks/fewshot/train_long.sh` calls this when a run starts (``running``) and when its process ends
(``finished`` at its schedule's last step, ``stopped`` by a signal or ``--until``, ``failed`` with
the exit code), so the manifest says where every run is without anyone editing it; ``lost`` is set by
hand when the run folder is gone (a new machine does not keep ``runs/``): the entry keeps the step it
had reached, and the same command starts it again from step 0, or from its committed state;
``abandoned``, by hand too, marks a run that will never be resumed (its split or config is gone): the
entry stays as the record of what ran, without a command. The files:
`benchmarks/results/long_runs.json` (one entry per run folder) and the table between the markers
of `benchmarks/MANIFEST.md` (rewritten from the JSON). Run folders stay local (``runs/`` is not
committed), but when a run's process ends its newest checkpoint (without the base model) is copied
into ``benchmarks/runs/NAME`` (:mod:`metalm.runtime.runstate`), which is committed with the manifest at a
session's end: ``restore`` lays it into an empty ``runs/NAME`` on a fresh clone, and the same
command continues from it bit-identically (train_long.sh does both). The steps a learning curve will score
(``--keep-steps``; train_long.sh's ``KEEP_STEPS``) are kept in it too once the run has reached them. A
finished run's committed state is weights only (scored, never resumed: the optimizer's state is dropped).

    python benchmarks/fewshot/long_runs.py update runs/long-hyperlora --config benchmarks/fewshot/claim/hyperlora.yaml \
        --status running
    python benchmarks/fewshot/long_runs.py update runs/long-hyperlora --exit-code 0 --keep-steps 150,300
    python benchmarks/fewshot/long_runs.py restore runs/long-hyperlora   # from benchmarks/runs/long-hyperlora
    python benchmarks/fewshot/long_runs.py keep runs/long-fomaml 150   # a curve's chosen step, kept committed
    python benchmarks/fewshot/long_runs.py show
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metalm.errors import MetalmError
from metalm.run import load_train_config
from metalm.runtime.checkpoint import list_checkpoints, read_step
from metalm.runtime.files import json_lines, locked, write_atomic
from metalm.runtime.runstate import commit_state, committed_step, keep_checkpoint, kept_checkpoints, restore_state

ROOT = Path(__file__).resolve().parents[2]
# Elsewhere for a test or a scratch study: LONG_RUNS_JSON, LONG_RUNS_MANIFEST.
JSON = Path(os.environ.get("LONG_RUNS_JSON", ROOT / "benchmarks" / "results" / "long_runs.json"))
MANIFEST = Path(os.environ.get("LONG_RUNS_MANIFEST", ROOT / "benchmarks" / "MANIFEST.md"))
STATE = Path(os.environ.get("LONG_RUNS_STATE", ROOT / "benchmarks" / "runs"))
BEGIN, END = "<!-- long runs: begin (benchmarks/fewshot/long_runs.py writes this table) -->", "<!-- long runs: end -->"
STATUSES = ("running", "finished", "stopped", "failed", "lost", "abandoned")


def state_dir(run: Path, root: Path = STATE) -> Path:
    """Where a run's committed state lives: ``benchmarks/runs/NAME`` (``$LONG_RUNS_STATE/NAME``)."""
    return root / run.name


def observe(run: Path, config_path: str | None = None) -> dict[str, Any]:
    """What a run folder says of itself: algorithm, schedule length, newest checkpoint, last logged step
    (a run not started yet: from ``config_path``)."""
    own = run / "config.yaml"
    if not own.is_file() and not config_path:
        raise SystemExit(f"{run} holds no config.yaml (no run started there); give --config")
    config = load_train_config(own if own.is_file() else Path(config_path))
    steps = [s for s in map(read_step, list_checkpoints(run)) if s is not None]
    log = json_lines(run / "log.jsonl") if (run / "log.jsonl").is_file() else []
    logged = max((r["step"] for r in log if "step" in r), default=None)
    return {"algorithm": config.algorithm["name"], "max_steps": config.max_steps,
            "checkpointed": max(steps, default=None), "logged": logged}


def status_of(seen: dict[str, Any], exit_code: int | None, status: str | None) -> str:
    """``status`` if given; else from the process's exit code: 0 at the schedule's end ``finished``, 0 before
    it (``--until``) or a signal's code (a pre-emption, SIGTERM: 143) ``stopped``, any other ``failed (N)``."""
    if status is not None:
        return status
    if exit_code == 0:
        return "finished" if seen["checkpointed"] == seen["max_steps"] else "stopped"
    if exit_code is not None and exit_code > 128:
        return "stopped"
    return f"failed ({exit_code})"


def update(run: Path, *, config: str | None = None, status: str | None = None, exit_code: int | None = None,
           keep_steps: Sequence[int] = (), path: Path = JSON, manifest: Path = MANIFEST, state: Path = STATE,
           now: str | None = None) -> dict[str, Any]:
    """Record ``run``'s state in ``path`` and rewrite ``manifest``'s table; returns the entry.

    When the process ended (``exit_code``) its newest checkpoint is committed, with each of ``keep_steps``
    (a learning curve's points) the run has reached: kept (:func:`keep_checkpoint`), so a run stopped
    past a point still has that point's checkpoint on a new machine. A reached point whose checkpoint is
    gone from this machine is listed under ``unkept`` (the manifest says so): its curve point cannot be
    scored from this run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):  # two lanes ending at once: one update waits for the other, none is lost
        return _update(run, config, status, exit_code, keep_steps, path, manifest, state, now)


def _update(run: Path, config: str | None, status: str | None, exit_code: int | None, keep_steps: Sequence[int],
            path: Path, manifest: Path, state: Path, now: str | None) -> dict[str, Any]:
    runs = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    key = os.path.relpath(run.resolve(), ROOT) if run.resolve().is_relative_to(ROOT) else str(run)
    if status == "abandoned":  # never to be resumed (its split is gone): the entry stays, without a command
        if key not in runs:
            raise SystemExit(f"{key} is not in {path}: nothing to mark abandoned")
        entry = dict(runs[key])
    elif status == "lost":
        if run.exists():
            raise SystemExit(f"{run} is still there: a run is lost only when its folder is gone")
        if key not in runs:
            raise SystemExit(f"{key} is not in {path}: nothing to mark lost")
        entry = dict(runs[key])
    else:
        entry = {**runs.get(key, {}), **observe(run, config)}
    entry["config"] = config or entry.get("config", "")
    entry["status"] = status_of(entry, exit_code, status)
    if exit_code is not None and entry.get("checkpointed") is not None:  # the process ended: keep its state
        entry["committed"] = commit_state(run, state_dir(run, state), weights_only=entry["status"] == "finished")
        keep_reached(run, state_dir(run, state), keep_steps, entry)
    else:
        entry["committed"] = committed_step(state_dir(run, state))
    kept = [read_step(p) for p in kept_checkpoints(state_dir(run, state))]
    if kept:  # older checkpoints kept committed (keep): a curve's chosen step
        entry["kept"] = kept
    else:
        entry.pop("kept", None)
    entry["updated"] = now or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    runs[key] = entry
    write_atomic(path, json.dumps(dict(sorted(runs.items())), indent=1) + "\n")
    if manifest.is_file():
        text = manifest.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{manifest}: the markers of the long runs' table are missing ({BEGIN} ... {END})")
        head, rest = text.split(BEGIN, 1)
        write_atomic(manifest, head + BEGIN + "\n" + table(runs) + "\n" + END + rest.split(END, 1)[1])
    return entry


def keep_reached(run: Path, target: Path, steps: Sequence[int], entry: dict[str, Any]) -> None:
    """Keep in the committed state ``target`` each of ``steps`` the run has reached (at most its committed
    step) and not kept yet; those whose checkpoint this machine lacks go to ``entry["unkept"]``."""
    kept = {read_step(p) for p in kept_checkpoints(target)}
    unkept = set(entry.pop("unkept", [])) - kept
    for step in sorted(set(steps)):
        if step > entry["committed"] or step in kept:
            continue
        try:
            keep_checkpoint(run, target, step)
            unkept.discard(step)
        except MetalmError as err:
            print(f"long_runs.py: curve step {step} is not kept: {err}", file=sys.stderr)
            unkept.add(step)
    if unkept:
        entry["unkept"] = sorted(unkept)


def steps_list(text: str) -> list[int]:
    """``"150,300"`` or ``"150 300"`` as steps (argparse's type for ``--keep-steps``)."""
    try:
        steps = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--keep-steps {text!r}: steps are whole numbers, e.g. 150,300") from None
    if any(s < 1 for s in steps):
        raise argparse.ArgumentTypeError(f"--keep-steps {text!r}: a step is at least 1")
    return steps


def table(runs: dict[str, dict[str, Any]]) -> str:
    """The manifest's markdown table of ``runs``."""
    lines = ["| run folder | config | algorithm | step checkpointed / schedule | committed (benchmarks/runs/) | "
             "status | updated | resume |", "|---|---|---|---|---|---|---|---|"]
    for key, e in sorted(runs.items()):
        resume = f"`bash benchmarks/fewshot/train_long.sh {e['config']}`" \
            if e.get("config") and e["status"] not in ("finished", "abandoned") else ""
        committed = e.get("committed")
        if resume and e["status"] == "lost":
            resume = (f"from step {committed} (committed): " if committed else "from step 0: ") + resume
        kept = "none" if committed is None else f"step {committed}"
        if e.get("kept"):
            kept += f" (and kept: {', '.join(map(str, e['kept']))})"
        if e.get("unkept"):
            kept += f" (curve steps lost: {', '.join(map(str, e['unkept']))})"
        if committed is not None and e.get("checkpointed") is not None and e["checkpointed"] > committed:
            kept += f" (steps {committed + 1}-{e['checkpointed']} are on this machine only)"
        lines.append(f"| `{key}` | `{e.get('config', '')}` | {e['algorithm']} | {e['checkpointed']} / "
                     f"{e['max_steps']} | {kept} | {e['status']} | {e['updated']} | {resume} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("update", help="record a run folder's state")
    up.add_argument("run", type=Path)
    up.add_argument("--config", help="the config it was started from (kept from an earlier update if not given)")
    up.add_argument("--status", choices=STATUSES)
    up.add_argument("--exit-code", type=int, help="the training process's exit code (sets the status)")
    up.add_argument("--keep-steps", type=steps_list, default=[],
                    help="steps to keep committed once reached, e.g. a learning curve's points: 150,300")
    sub.add_parser("show", help="print the table")
    rs = sub.add_parser("restore", help="lay a run's committed state into its (empty or older) run folder")
    rs.add_argument("run", type=Path)
    kp = sub.add_parser("keep", help="keep an older checkpoint in the run's committed state (e.g. a curve's "
                                     "chosen step), through later commits")
    kp.add_argument("run", type=Path)
    kp.add_argument("step", type=int)
    args = parser.parse_args(argv)
    if args.command == "keep":
        try:
            keep_checkpoint(args.run, state_dir(args.run), args.step)
        except MetalmError as err:
            print(f"long_runs.py keep: {err}", file=sys.stderr)
            return 2
        runs = json.loads(JSON.read_text(encoding="utf-8")) if JSON.is_file() else {}
        key = os.path.relpath(args.run.resolve(), ROOT) if args.run.resolve().is_relative_to(ROOT) else str(args.run)
        if key in runs:  # the manifest says what is kept
            update(args.run, status=runs[key]["status"])
        kept = ", ".join(p.name for p in kept_checkpoints(state_dir(args.run)))
        print(f"{state_dir(args.run)}: keeps {kept} besides its newest (commit the folder)", file=sys.stderr)
        return 0
    if args.command == "restore":
        step = restore_state(state_dir(args.run), args.run)
        print(f"{args.run}: resumes from step {step}" if step is not None else f"{args.run}: starts at step 0",
              file=sys.stderr)
        return 0
    if args.command == "show":
        print(table(json.loads(JSON.read_text(encoding="utf-8")) if JSON.is_file() else {}))
        return 0
    if args.status is None and args.exit_code is None:
        parser.error("update needs --status or --exit-code")
    entry = update(args.run, config=args.config, status=args.status, exit_code=args.exit_code,
                   keep_steps=args.keep_steps)
    print(f"{args.run}: {entry['status']}, step {entry['checkpointed']} of {entry['max_steps']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
