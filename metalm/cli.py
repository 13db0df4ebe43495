"""The ``metalm`` command line.

``metalm demo [key=value ...]`` runs :func:`metalm.demo.run_demo`; ``key=value`` pairs fill its
config (dotted keys for nested fields, values parsed as YAML). Errors in input are printed as
one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from . import __version__
from .config import from_dict
from .errors import ConfigError, MetalmError


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``["inner.steps=3", "algorithm=fomaml"]`` into nested plain data."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(pair, "expected key=value")
        try:
            value = yaml.safe_load(raw)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalm", description="Meta-learning adaptation of language models.")
    parser.add_argument("--version", action="version", version=f"metalm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="meta-train a tiny model on synthetic tasks and report held-out accuracy")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. algorithm=fomaml")
    demo.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metalm`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MetalmError as err:
        print(f"metalm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
