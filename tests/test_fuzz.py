"""Property-based: configs, overrides, run folders and CLI arguments given garbage answer with one
metalm error (exit status 2 through the CLI), never another exception or a silent success.

The default run draws a bounded number of examples (seconds); ``METALM_FUZZ=long`` (``make fuzz``,
run in CI) draws 20 times more.
"""

import contextlib
import io
import json
import math
import os
import shutil
import warnings

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from metalm.cli import main, parse_overrides
from metalm.config import from_dict, to_dict
from metalm.errors import ConfigError
from metalm.runtime.checkpoint import latest_checkpoint, save_checkpoint
from metalm.train import TrainConfig

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def _leaves(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


SCALE = 20 if os.environ.get("METALM_FUZZ") == "long" else 1  # examples per test: x20 in `make fuzz`
DEFAULT = to_dict(TrainConfig())
FIELDS = sorted(_leaves(DEFAULT)) + ["algorithm.inner.lr", "algorithm.inner.steps", "algorithm.name", "junk"]


def _set(data, dotted, value):
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def _finite_numbers(data):
    if isinstance(data, dict):
        return all(_finite_numbers(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return all(_finite_numbers(v) for v in data)
    return not isinstance(data, float) or math.isfinite(data)


@settings(deadline=None, max_examples=200 * SCALE, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), values), min_size=1, max_size=3))
def test_a_corrupted_config_is_a_config_error_or_a_valid_config(changes):
    data = json.loads(json.dumps(DEFAULT))
    for field, value in changes:
        _set(data, field, value)
    try:
        config = from_dict(TrainConfig, data, source="fuzz.yaml")
    except ConfigError as err:
        assert err.source == "fuzz.yaml" and err.field and "\n" not in str(err)
        return
    # Accepted: every number finite, every count in range (no silent garbage).
    assert _finite_numbers(to_dict(config))
    assert config.max_steps >= 1 and config.outer.meta_batch >= 1 and 0 <= config.seed < 2**32
    assert config.outer.lr > 0 and config.outer.weight_decay >= 0 and config.model.strip()
    assert config.outer.lr * config.outer.weight_decay < 1 and 1 <= config.adapter.rank <= 65536
    assert 1 <= config.algorithm_config().inner.steps <= 10_000


@settings(deadline=None, max_examples=200 * SCALE)
@given(st.lists(st.text(max_size=24), max_size=4))
def test_overrides_parse_or_name_the_pair(pairs):
    try:
        data = parse_overrides(pairs)
    except ConfigError as err:
        assert err.field in pairs or any(err.field == p.partition("=")[0] for p in pairs)
        return
    try:
        from_dict(TrainConfig, data, source="command line")
    except ConfigError as err:
        assert err.source == "command line"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    g = torch.Generator().manual_seed(0)
    for step in (1, 2):
        tensors = {"meta/w": torch.randn(8, 8, generator=g), "rng/torch": torch.get_rng_state()}
        save_checkpoint(root, step, tensors, {"optimizer": {}, "scheduler": {}, "sampler": {}, "algorithm": {},
                                              "rng": {}})
    return root


@settings(deadline=None, max_examples=60 * SCALE, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(["tensors.safetensors", "state.json", "checksums.json"]),
       how=st.sampled_from(["flip", "truncate", "garbage", "delete"]), where=st.floats(0, 1),
       data=st.binary(min_size=1, max_size=16))
def test_a_damaged_checkpoint_is_detected_and_the_previous_one_used(run_folder, tmp_path_factory, file, how, where,
                                                                    data):
    run = tmp_path_factory.mktemp("damaged")
    shutil.copytree(run_folder / "checkpoints", run / "checkpoints")
    path = run / "checkpoints" / "step-0000002" / file
    raw = bytearray(path.read_bytes())
    at = min(int(where * len(raw)), len(raw) - 1)
    if how == "flip":
        raw[at] ^= 1 << (at % 8)
        path.write_bytes(bytes(raw))
    elif how == "truncate":
        path.write_bytes(bytes(raw[:at]))
    elif how == "garbage":
        path.write_bytes(bytes(raw[:at]) + data + bytes(raw[at + len(data):]))
    else:
        path.unlink()
    changed = not path.exists() or path.read_bytes() != (run_folder / "checkpoints" / "step-0000002" / file).read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = latest_checkpoint(run)
    assert found is not None and found.name == ("step-0000001" if changed else "step-0000002")
    # Named in a warning, except a folder missing a file, which is no checkpoint at all (a killed write).
    assert bool(caught) == (changed and not (how == "delete" and file != "checksums.json"))
    good = load_file(str(run_folder / "checkpoints" / found.name / "tensors.safetensors"))  # the intact copy
    assert torch.equal(found.tensors["meta/w"], good["meta/w"])


@settings(deadline=None, max_examples=40 * SCALE, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["report", "export", "eval", "tasks", "diagnose"]),
       st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        max_size=12), max_size=3))
def test_cli_arguments_end_in_exit_2_with_one_line(tmp_path_factory, command, args):
    folder = tmp_path_factory.mktemp("cli")
    argv = {"report": [str(folder / "x"), *args], "export": [str(folder / "x"), str(folder / "out"), *args],
            "eval": ["--run-dir", str(folder), "--tasks", ",".join(args) or "x"],
            "tasks": ["show", *(args or ["x"])[:1]],
            "diagnose": ["--run-dir", str(folder), "--json", str(folder / "d.json"), *args]}[command]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([command, *argv])
        except SystemExit as exit_:  # argparse: usage error
            code = exit_.code
    err = stderr.getvalue().strip().split("\n")
    assert code == 2 and err and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("metalm: error: ") and len(err) == 1 or err[0].startswith("usage: ")
    assert not (folder / "out").exists() and not (folder / "d.json").exists()


def test_yaml_configs_that_are_not_mappings(tmp_path):
    from metalm.train import load_train_config

    for text in ("- a\n- b\n", "3", "'x'", "a: [", "\x00", "a: !!python/object:os.system x"):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_train_config(path)
        assert str(path) in str(err.value)
    assert yaml.safe_load("a: 1") == {"a": 1}
