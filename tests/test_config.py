"""Config dataclasses: validation names the field, YAML errors name the file."""

import dataclasses

import pytest

from metalm import AdapterConfig, ConfigError, InnerConfig, from_dict, load_yaml, to_dict
from metalm.algorithms import MAMLPlusPlusConfig, algorithm_config


@dataclasses.dataclass
class Run:
    adapter: AdapterConfig = dataclasses.field(default_factory=AdapterConfig)
    inner: InnerConfig = dataclasses.field(default_factory=InnerConfig)
    seed: int = 0


def test_round_trip():
    run = from_dict(Run, {"adapter": {"rank": 4, "target_modules": ["q_proj"]}, "inner": {"betas": [0.8, 0.9]}})
    assert run.adapter.rank == 4 and run.inner.betas == (0.8, 0.9) and run.inner.steps == 5
    assert from_dict(Run, to_dict(run)) == run


@pytest.mark.parametrize("data, field, message", [
    ({"adaptor": {}}, "adaptor", "unknown field"),
    ({"adapter": {"rnak": 4}}, "adapter.rnak", "unknown field"),
    ({"adapter": {"rank": "8"}}, "adapter.rank", "expected int"),
    ({"adapter": {"rank": 0}}, "adapter.rank", ">= 1"),
    ({"adapter": {"kind": "prefix"}}, "adapter.kind", "not one of"),
    ({"adapter": {"layers": "top"}}, "adapter.layers", "layer range"),
    ({"inner": {"lr": -1}}, "inner.lr", "> 0"),
    ({"inner": {"lr": True}}, "inner.lr", "expected a number"),
    ({"inner": {"betas": [0.9]}}, "inner.betas", "2 items"),
    ({"inner": {"clip_grad_norm": "big"}}, "inner.clip_grad_norm", "number"),
    ({"inner": {"vmap_chunk": -1}}, "inner.vmap_chunk", ">= 0"),
    ({"inner": 3}, "inner", "mapping"),
    ({"seed": 1.5}, "seed", "expected int"),
])
def test_errors_name_the_field(data, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        from_dict(Run, data)
    assert err.value.field == field


def test_yaml_errors_name_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("adapter:\n  rank: 2\n  layers: top:2\n")
    assert load_yaml(Run, good).adapter.layers == "top:2"
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner:\n  steps: -3\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(Run, bad)
    assert err.value.source == str(bad) and err.value.field == "inner.steps"
    assert str(err.value).startswith(f"{bad}: inner.steps:")
    broken = tmp_path / "broken.yaml"
    broken.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML") as err:
        load_yaml(Run, broken)
    assert str(broken) in str(err.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(Run, binary)


def test_algorithm_sections_are_rooted_under_algorithm():
    with pytest.raises(ConfigError) as err:
        algorithm_config("maml", {"lr_per_step": True})
    assert err.value.field == "algorithm.lr_per_step"
    with pytest.raises(ConfigError) as err:
        algorithm_config("maml++", {"inner": {"first_order": True}})
    assert err.value.field == "algorithm.first_order_steps"
    assert isinstance(algorithm_config("maml++"), MAMLPlusPlusConfig)


def test_a_runs_algorithm_config_is_parsed_once_and_again_only_when_changed(monkeypatch):
    import metalm.run as run_module
    from metalm.run import TrainConfig

    calls = []
    real = run_module.algorithm_config
    monkeypatch.setattr(run_module, "algorithm_config", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    config = TrainConfig(algorithm={"name": "fomaml", "inner": {"steps": 3}})
    first = config.algorithm_config()
    assert config.algorithm_config() is first and calls == ["fomaml"]  # parsed by validation, then reused
    assert first.inner.steps == 3 and "_algorithm_parsed" not in to_dict(config)
    config.algorithm["inner"]["steps"] = 4
    assert config.algorithm_config().inner.steps == 4 and calls == ["fomaml", "fomaml"]


def test_yaml_reads_exponents_as_numbers_and_refuses_duplicate_keys(tmp_path):
    """`1e-3` (YAML 1.1 reads it as a string) is a number in files and overrides; a key given twice
    is an error naming the file, not a silent last-one-wins."""
    from metalm.cli import parse_overrides

    assert parse_overrides(["inner.lr=1e-3", "seed=7", "inner.eps=.5"]) == {"inner": {"lr": 0.001, "eps": 0.5},
                                                                             "seed": 7}
    path = tmp_path / "run.yaml"
    path.write_text("inner: {lr: 2e-2}\nseed: 1\n")
    assert load_yaml(Run, path).inner.lr == 0.02
    path.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'seed'") as err:
        load_yaml(Run, path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text", ["seed: " + "[" * 3000 + "]" * 3000, "a:\n" + "".join("  " * i + "- \n" for i in
                                                                                     range(1, 80))])
def test_deeply_nested_yaml_is_one_error(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="deep.yaml: <yaml>: malformed YAML: nested deeper than 64 levels"):
        load_yaml(Run, path)


def test_the_fsdp_refusal_names_the_algorithms_that_declare_they_run_sharded():
    from metalm.algorithms.base import sharded_algorithms
    from metalm.run import TrainConfig

    names = sharded_algorithms()  # asked of each registered class, not listed by hand
    assert {"fomaml", "reptile", "multitask", "metaicl"} <= set(names)
    assert not {"maml", "imaml", "maml++"} & set(names)
    with pytest.raises(ConfigError) as err:
        TrainConfig(algorithm={"name": "maml"}, distributed="fsdp")
    assert err.value.field == "distributed" and f"({', '.join(names)}, or inner.first_order: true)" in str(err.value)


def test_inner_vmap_is_refused_by_the_algorithms_that_declare_they_run_tasks_one_by_one():
    from metalm.algorithms import algorithm_class, algorithm_names

    for name in algorithm_names():
        if algorithm_class(name).vmaps_tasks:
            assert algorithm_config(name, {"inner": {"vmap": True}}).inner.vmap
        else:
            with pytest.raises(ConfigError, match="does not run its tasks under torch.func.vmap") as err:
                algorithm_config(name, {"inner": {"vmap": True}})
            assert err.value.field == "algorithm.inner.vmap"
    assert {n for n in algorithm_names() if algorithm_class(n).vmaps_tasks} == \
        {"maml", "fomaml", "anil", "meta-sgd", "maml++", "reptile"}
