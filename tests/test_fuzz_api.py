"""Property-based: the Python API's bad calls. ``metalm.adapt``, the losses, ``build_algorithm``,
``select_parameters`` / ``apply_adapter``, ``collate`` / ``tensorize``, ``load_run`` and the evaluation
entry point given malformed batches, parameter dicts, arguments and configs answer with one metalm
error (a ``ValueError`` or ``TypeError`` subclass) naming the argument, or succeed with a well-formed
result; never another exception.

Every test draws its calls from one well-formed call and a list of corruptions; the default run draws
a bounded number of examples (seconds), ``METALM_FUZZ=long`` (``make fuzz``) 4 times more:
``EXAMPLES`` sums to 370 generated calls in the default run and 1,480 in ``make fuzz``.
"""

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metalm
from metalm import AdapterConfig, MetaConfig, MetalmError
from metalm.data.collate import CollateConfig, collate, tensorize
from metalm.data.episode import Example, TextEpisode
from metalm.models import save_tiny_model

SCALE = 4 if os.environ.get("METALM_FUZZ") == "long" else 1  # each call is a model forward: x4, not x20
EXAMPLES = {"batch": 80, "weights": 60, "arguments": 80, "algorithm": 40, "adapter": 30, "collate": 40,
            "run": 20, "eval": 20}
VOCAB = 96


def fuzz(kind):
    """Hypothesis settings of the tests of ``kind``: ``EXAMPLES[kind]`` calls (x4 in ``make fuzz``)."""
    return settings(deadline=None, max_examples=EXAMPLES[kind] * SCALE, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                 st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                                st.integers(), max_size=2))


def expect_metalm_error(call, *names):
    """Run ``call``; a raised error must be metalm's, a ``ValueError``/``TypeError``, and name one of
    ``names`` in its message. Returns the result (or ``None`` after an error)."""
    try:
        return call()
    except MetalmError as err:
        assert isinstance(err, (ValueError, TypeError)), f"{type(err).__name__} is not a ValueError/TypeError"
        assert any(n in str(err) for n in names), f"{err!s} names none of {names}"
        return None


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    model = metalm.load_model(metalm.tiny_config("gpt2", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2))
    adapter = AdapterConfig(rank=2)
    model = metalm.apply_adapter(model, adapter)
    sel = metalm.select_parameters(model, adapter, MetaConfig())
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :3] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {"model": model, "selection": sel, "fast": sel.fast_params(model), "batch": batch}


# --------------------------------------------------------------------------- batches
def _corrupt_batch(batch, how, key, value):
    if not isinstance(batch, dict):
        return batch  # already not a mapping
    b = dict(batch)
    if how == "not a mapping":
        return value if not isinstance(value, dict) else [value]
    tensors = all(isinstance(v, torch.Tensor) and v.dim() == 2 for v in b.values())
    if how not in ("drop", "replace") and (key not in b or not tensors):
        return b  # an earlier corruption removed what this one changes
    if how == "drop":
        b.pop(key, None)
    elif how == "replace":
        b[key] = value
    elif how == "dtype":
        b[key] = b[key].to(value)
    elif how == "flatten":
        b[key] = b[key].reshape(-1)
    elif how == "add dim":
        b[key] = b[key].unsqueeze(0)
    elif how == "cut":
        b[key] = b[key][:, :value]
    elif how == "rows":
        b = {k: v[:value] for k, v in b.items()}
    elif how == "shift":
        b[key] = torch.where(b[key] >= 0, b[key] + value, b[key])
    elif how == "fill":
        b[key] = torch.full_like(b[key], value)
    return b


KEYS = st.sampled_from(["input_ids", "labels", "attention_mask"])
batch_corruptions = st.one_of(
    st.tuples(st.just("not a mapping"), st.none(), junk),
    st.tuples(st.just("drop"), KEYS, st.none()),
    st.tuples(st.just("replace"), KEYS, junk),
    st.tuples(st.just("dtype"), KEYS, st.sampled_from([torch.float32, torch.bool, torch.int32, torch.float64])),
    st.tuples(st.sampled_from(["flatten", "add dim"]), KEYS, st.none()),
    st.tuples(st.just("cut"), KEYS, st.integers(0, 5)),
    st.tuples(st.just("rows"), st.none(), st.integers(0, 1)),
    st.tuples(st.just("shift"), st.sampled_from(["input_ids", "labels"]),
              st.integers(-2 * VOCAB, 2 * VOCAB)),
    st.tuples(st.just("fill"), KEYS, st.sampled_from([-100, -1, 0, 1, 2, VOCAB])),
)


@fuzz("batch")
@given(st.lists(batch_corruptions, min_size=1, max_size=3), st.sampled_from(["adapt", "loss"]))
def test_a_malformed_batch_is_a_batch_error_naming_the_batch(world, corruptions, call):
    batch = world["batch"]
    for how, key, value in corruptions:
        batch = _corrupt_batch(batch, how, key, value)
    if call == "adapt":
        out = expect_metalm_error(lambda: metalm.adapt(world["model"], world["fast"], batch, steps=1, lr=0.1),
                                  "support batch")
        if out is not None:
            assert set(out) == set(world["fast"]) and all(torch.isfinite(v).all() for v in out.values())
    else:
        loss = expect_metalm_error(lambda: metalm.lm_loss(world["model"], world["fast"], batch), "batch")
        assert loss is None or math.isfinite(loss.item())


# --------------------------------------------------------------------------- parameter dicts
weight_corruptions = st.one_of(
    st.tuples(st.just("not a mapping"), junk.filter(lambda v: not isinstance(v, dict))),
    st.tuples(st.just("empty"), st.none()),
    st.tuples(st.just("unknown name"), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("shape"), st.lists(st.integers(0, 4), min_size=0, max_size=3)),
    st.tuples(st.just("dtype"), st.sampled_from([torch.int64, torch.bool, torch.float64, torch.float16])),
    st.tuples(st.just("value"), junk),
)


def _corrupt_weights(fast, how, value, index):
    names = list(fast)
    name = names[index % len(names)]
    w = dict(fast)
    if how == "not a mapping":
        return value
    if how == "empty":
        return {}
    if how == "unknown name":
        w[value] = torch.zeros(2)
    elif how == "shape":
        w[name] = torch.zeros(value)
    elif how == "dtype":
        w[name] = w[name].to(value)
    elif how == "value":
        w[name] = value
    return w


@fuzz("weights")
@given(weight_corruptions, st.integers(0, 100), st.sampled_from(["params", "frozen"]))
def test_a_malformed_parameter_dict_is_a_config_error_naming_it(world, corruption, index, argument):
    model, fast = world["model"], world["fast"]
    if argument == "params":
        bad = _corrupt_weights(fast, *corruption, index)
        out = expect_metalm_error(lambda: metalm.adapt(model, bad, world["batch"], steps=1, lr=0.1), "params")
    else:  # the shared weights passed as values: any non-fast tensor of the model
        shared = {n: p for n, p in model.named_parameters() if n not in fast}
        bad = _corrupt_weights(shared, *corruption, index)
        out = expect_metalm_error(lambda: metalm.adapt(model, fast, world["batch"], steps=1, lr=0.1, frozen=bad),
                                  "frozen")
    if out is not None:
        assert set(out) == set(fast if argument == "frozen" else bad)


# --------------------------------------------------------------------------- keyword arguments
KWARGS = ["steps", "lr", "optimizer", "clip_grad_norm", "betas", "eps", "proximal", "first_order"]


@fuzz("arguments")
@given(st.dictionaries(st.sampled_from(KWARGS), st.one_of(junk, st.floats(-2, 2), st.tuples(junk, junk)),
                       min_size=1, max_size=3))
def test_bad_inner_loop_arguments_are_config_errors_naming_them(world, kwargs):
    args = {"steps": 1, "lr": 0.1, **kwargs}
    if isinstance(args["steps"], int) and not isinstance(args["steps"], bool):
        args["steps"] = min(args["steps"], 3)  # a valid large count is slow, not wrong
    out = expect_metalm_error(lambda: metalm.adapt(world["model"], world["fast"], world["batch"], **args), *kwargs)
    if out is not None:
        assert set(out) == set(world["fast"])


# --------------------------------------------------------------------------- algorithms
@fuzz("algorithm")
@given(st.one_of(st.sampled_from(metalm.algorithm_names()), st.text(max_size=8), junk),
       st.one_of(st.none(), junk, st.dictionaries(st.sampled_from(["inner", "steps", "lr", "first_order", "junk",
                                                                    "weighting", "basis", "hub_budget"]),
                                                  st.one_of(junk, st.dictionaries(st.sampled_from(
                                                      ["steps", "lr", "vmap", "x"]), junk, max_size=2)),
                                                  max_size=3)))
def test_build_algorithm_answers_a_bad_name_or_config_with_a_config_error(world, name, config):
    learner = expect_metalm_error(lambda: metalm.build_algorithm(name, world["model"], world["selection"], config),
                                  "algorithm", "inner", "config", "adapter", *(config if isinstance(config, dict) else ()),
                                  *(map(str, config) if isinstance(config, dict) else ()))
    assert learner is None or isinstance(learner, metalm.MetaLearner)


# --------------------------------------------------------------------------- adapters
@fuzz("adapter")
@given(st.dictionaries(st.sampled_from(["kind", "rank", "alpha", "layers", "targets", "dropout"]),
                       st.one_of(junk, st.sampled_from(["lora", "head", "bitfit", "full", "top:1", "all", "0,1",
                                                        "5:9"])), min_size=1, max_size=3),
       st.one_of(st.none(), st.dictionaries(st.sampled_from(["shared", "junk"]),
                                            st.one_of(junk, st.sampled_from(["all", "none", "top:1", "norms"])),
                                            max_size=1)))
def test_bad_adapter_and_meta_configs_are_config_errors(adapter, meta):
    def call():
        cfg = metalm.from_dict(AdapterConfig, adapter)
        meta_cfg = metalm.from_dict(MetaConfig, meta) if meta is not None else None
        model = metalm.apply_adapter(metalm.load_model(metalm.tiny_config("gpt2", vocab_size=VOCAB, n_embd=16,
                                                                          n_layer=2, n_head=2)), cfg)
        return metalm.select_parameters(model, cfg, meta_cfg)

    sel = expect_metalm_error(call, "adapter", "meta", "kind", "rank", "alpha", "layers", "targets", "dropout",
                              "shared", "junk")
    assert sel is None or sel.fast


# --------------------------------------------------------------------------- collate / tensorize
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = save_tiny_model(tmp_path_factory.mktemp("tok") / "m", ["alpha beta gamma", "delta epsilon"] * 20, "llama")
    return AutoTokenizer.from_pretrained(path)


example_fields = st.fixed_dictionaries({}, optional={
    "prompt": st.one_of(st.text(max_size=8), junk), "answer": st.one_of(st.text(max_size=4), junk),
    "options": st.one_of(st.lists(st.text(max_size=3), max_size=3), junk), "label": st.one_of(st.integers(-2, 4), junk),
    "context": st.one_of(st.text(max_size=5), junk)})


@fuzz("collate")
@given(st.lists(example_fields, max_size=3), st.one_of(st.none(), st.integers(-2, 40), junk),
       st.sampled_from(["plain", "direct", "channel", "junk"]))
def test_collate_and_tensorize_answer_bad_examples_with_a_metalm_error(tokenizer, fields, max_length, queries):
    def call():
        examples = [Example(**{"prompt": "alpha ", "answer": "beta", **f}) for f in fields]
        config = CollateConfig(max_length=max_length) if max_length is not None else None
        episode = TextEpisode("t", "classification", examples, examples, ["beta"])
        return collate(examples, tokenizer, config), tensorize(episode, tokenizer, config, queries=queries)

    out = expect_metalm_error(call, "max_length", "prompt", "answer", "options", "label", "context", "examples",
                              "queries", "example")
    if out is not None:
        batch, episode = out
        assert batch["input_ids"].shape == batch["labels"].shape and episode.support["input_ids"].dim() == 2


# --------------------------------------------------------------------------- runs and evaluation
@fuzz("run")
@given(st.sampled_from(["missing", "file", "empty folder", "bad config", "junk"]), junk)
def test_load_run_of_a_bad_path_is_a_metalm_error(tmp_path_factory, kind, value):
    from metalm.run import load_run

    root = tmp_path_factory.mktemp("run")
    path = {"missing": root / "nope", "file": root / "f", "empty folder": root, "bad config": root,
            "junk": value}[kind]
    if kind == "file":
        path.write_text("x")
    if kind == "bad config":
        (root / "config.yaml").write_text("model: [")
        (root / "checkpoints" / "step-00000001").mkdir(parents=True)
    with pytest.raises(MetalmError) as err:
        load_run(path)
    assert isinstance(err.value, (ValueError, TypeError)) and ("run_dir" in str(err.value) or "config" in str(err.value))


@fuzz("eval")
@given(st.sampled_from(["base", "trained", "config", "tasks"]), junk, st.integers(0, 100))
def test_the_evaluation_entry_point_answers_bad_values_with_a_metalm_error(world, tokenizer, what, value, index):
    from metalm.eval import EvalConfig, Harness

    learner = metalm.build_algorithm("fomaml", world["model"], world["selection"])
    values = {n: v.detach() for n, v in learner.meta_parameters().items()}
    name = sorted(values)[index % len(values)]
    args = {"base": values, "trained": values, "config": {"shots": [1], "episodes": 1, "methods": ["zeroshot"]},
            "tasks": []}
    args[what] = {**values, name: value} if what in ("base", "trained") and index % 2 else value

    def call():
        config = metalm.from_dict(EvalConfig, args["config"]) if isinstance(args["config"], dict) else args["config"]
        harness = Harness.from_learner(learner, tokenizer, args["base"], args["trained"], config)
        return harness.run(args["tasks"])

    expect_metalm_error(call, "base", "trained", "values", "config", "tasks", "shots", "episodes", "methods",
                        "EvalConfig")
