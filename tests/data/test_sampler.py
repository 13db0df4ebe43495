"""The episodic sampler: episode shapes, disjointness, remapping, task sampling, determinism, resume."""

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from metalm.data import EpisodeSampler, SamplerConfig
from metalm.errors import ConfigError, TaskError


def pool(registry, *names):
    return [registry[n] for n in names]


def test_n_way_k_shot_episode(registry):
    sampler = EpisodeSampler(pool(registry, "toy_cls"), SamplerConfig(ways=2, shots=3, queries=4), seed=0)
    for _ in range(20):
        ep = sampler.sample()
        assert len(ep.classes) == 2 and set(ep.classes) <= {"yes", "no", "maybe"}
        assert len(ep.support) == 6 and len(ep.query) == 8
        assert Counter(ex.label for ex in ep.support) == {0: 3, 1: 3}
        assert Counter(ex.label for ex in ep.query) == {0: 4, 1: 4}
        verbal = {"yes": " yes", "no": " no", "maybe": " unsure"}
        assert ep.support[0].options == [verbal[c] for c in ep.classes]
        for ex in ep.support + ep.query:
            assert ex.answer == ex.options[ex.label]
            # The example's true class (it is in the prompt) is the episode class at its label.
            assert f" {ep.classes[ex.label]}?" in ex.prompt
        assert not {ex.prompt for ex in ep.support} & {ex.prompt for ex in ep.query}


def test_task_with_fewer_classes_than_ways_uses_all(registry):
    ep = EpisodeSampler(pool(registry, "toy_cls"), SamplerConfig(ways=5, shots=1, queries=1), seed=1).sample()
    assert sorted(ep.classes) == ["maybe", "no", "yes"]


def test_labels_are_remapped_per_episode(registry):
    sampler = EpisodeSampler(pool(registry, "toy_cls"), SamplerConfig(ways=3, shots=1, queries=1), seed=0)
    orders = {tuple(sampler.sample().classes) for _ in range(40)}
    assert len(orders) > 3  # label 0 is not always the same class


def test_permuted_verbalizers_stay_consistent_within_an_episode(registry):
    cfg = SamplerConfig(ways=3, shots=2, queries=2, permute_verbalizers=True)
    sampler = EpisodeSampler(pool(registry, "toy_cls"), cfg, seed=0)
    permuted = 0
    for _ in range(30):
        ep = sampler.sample()
        mapping = {}
        for ex in ep.support + ep.query:
            true_class = next(c for c in ep.classes if f" {c}?" in ex.prompt)
            assert mapping.setdefault(true_class, ex.answer) == ex.answer
        natural = {"yes": " yes", "no": " no", "maybe": " unsure"}
        permuted += any(mapping[c] != natural[c] for c in mapping)
    assert permuted > 10


def test_multiple_choice_generation_and_lm_episodes(registry):
    cfg = SamplerConfig(ways=2, shots=3, queries=2)
    mc = EpisodeSampler(pool(registry, "toy_mc"), cfg, seed=0).sample()
    assert len(mc.support) == 3 and len(mc.query) == 2 and mc.classes == []
    for ex in mc.support:
        assert len(ex.options) == 3 and ex.answer == ex.options[ex.label] and ex.answer.startswith(" ")
    gen = EpisodeSampler(pool(registry, "toy_gen"), cfg, seed=0).sample()
    ex = gen.query[0]
    assert ex.options == [] and ex.answer.strip() == ex.references[0] and ex.prompt.endswith("Reversed:")
    lm = EpisodeSampler(pool(registry, "plays"), cfg, seed=0).sample()
    assert lm.type == "language_modeling" and lm.support[0].prompt == "" and "Line" in lm.support[0].answer
    assert not {e.answer for e in gen.support} & {e.answer for e in gen.query}


@pytest.mark.parametrize("mode, expected", [
    ("uniform", [1 / 3, 1 / 3, 1 / 3]),
    ("proportional", [36 / 72, 24 / 72, 12 / 72]),  # 36, 24 and 12 examples
    ("temperature", np.sqrt([36, 24, 12]) / np.sqrt([36, 24, 12]).sum()),
])
def test_task_sampling_frequencies(registry, mode, expected):
    cfg = SamplerConfig(ways=2, shots=1, queries=1, task_sampling=mode, temperature=2.0)
    sampler = EpisodeSampler(pool(registry, "toy_cls", "toy_mc", "toy_gen"), cfg, seed=0)
    assert np.allclose(sampler.task_probs, expected)
    counts = Counter(sampler.sample().task for _ in range(1500))
    freq = [counts[n] / 1500 for n in ("toy_cls", "toy_mc", "toy_gen")]
    assert np.allclose(freq, expected, atol=0.05)


def episode_digest(sampler, n):
    return [(e.task, e.classes, [x.prompt + x.answer for x in e.support + e.query]) for e in
            (sampler.sample() for _ in range(n))]


def test_same_seed_same_episodes_in_another_process(registry, home, tmp_path):
    cfg = SamplerConfig(ways=2, shots=2, queries=2)
    here = episode_digest(EpisodeSampler(pool(registry, "toy_cls", "toy_mc"), cfg, seed=7), 5)
    script = f"""
import json
from metalm.data import EpisodeSampler, SamplerConfig, TaskRegistry
reg = TaskRegistry.from_dirs({str(tmp_path / 'tasks')!r})
s = EpisodeSampler([reg['toy_cls'], reg['toy_mc']], SamplerConfig(ways=2, shots=2, queries=2), seed=7)
print(json.dumps([(e.task, e.classes, [x.prompt + x.answer for x in e.support + e.query])
                  for e in (s.sample() for _ in range(5))]))
"""
    env = {**os.environ, "PYTHONHASHSEED": "123", "METALM_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(out) == json.loads(json.dumps(here))


def test_ranks_have_independent_streams(registry):
    cfg = SamplerConfig(ways=2, shots=2, queries=2)
    tasks = pool(registry, "toy_cls", "toy_mc")
    a = episode_digest(EpisodeSampler(tasks, cfg, seed=3, rank=0, world_size=2), 4)
    b = episode_digest(EpisodeSampler(tasks, cfg, seed=3, rank=1, world_size=2), 4)
    assert a != b
    assert a == episode_digest(EpisodeSampler(tasks, cfg, seed=3, rank=0, world_size=2), 4)
    with pytest.raises(ConfigError, match="rank"):
        EpisodeSampler(tasks, cfg, seed=3, rank=2, world_size=2)


def test_a_fork_is_the_other_ranks_stream_over_the_same_index(registry):
    cfg = SamplerConfig(ways=2, shots=2, queries=2)
    tasks = pool(registry, "toy_cls", "toy_mc")
    first = EpisodeSampler(tasks, cfg, seed=3, rank=0, world_size=2)
    first.sample()  # the fork starts at its own beginning whatever the parent drew
    fork = first.fork(1)
    assert fork.index is first.index and fork.drawn == 0
    assert episode_digest(fork, 4) == episode_digest(EpisodeSampler(tasks, cfg, seed=3, rank=1, world_size=2), 4)
    assert fork.state_dict()["rank"] == 1
    with pytest.raises(ConfigError, match="rank"):
        first.fork(2)


def test_state_dict_resumes_exactly(registry):
    cfg = SamplerConfig(ways=2, shots=2, queries=2)
    tasks = pool(registry, "toy_cls", "toy_mc", "toy_gen")
    sampler = EpisodeSampler(tasks, cfg, seed=5)
    episode_digest(sampler, 3)
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a JSON checkpoint
    expected = episode_digest(sampler, 4)
    resumed = EpisodeSampler(tasks, cfg, seed=5)
    resumed.load_state_dict(state)
    assert episode_digest(resumed, 4) == expected and resumed.drawn == 7
    with pytest.raises(ConfigError, match="another task pool"):
        EpisodeSampler(tasks[:2], cfg, seed=5).load_state_dict(state)


def test_classes_with_too_few_examples(home, tmp_path):
    from metalm.data import Task, parse_task

    task = Task(parse_task({"name": "small", "type": "classification", "labels": ["a", "b"],
                            "source": {"kind": "bigbench", "task": "small"}}), "small.yaml")
    with pytest.raises(TaskError) as err:
        EpisodeSampler([task], SamplerConfig(ways=2, shots=2, queries=2))
    assert err.value.source == "small.yaml" and "\n" not in str(err.value)
    assert str(err.value).endswith("task 'small' supports at most 1 shots with 2 queries (class 'a' has 3 examples); "
                                   "asked for 2 (set drop_small_classes to skip such classes)")
    with pytest.raises(TaskError, match=r"fewer than 2 classes with 4 examples \(at most 1 shots with 2 queries\); "
                                        "asked for 2$"):
        EpisodeSampler([task], SamplerConfig(ways=2, shots=2, queries=2, drop_small_classes=True))
    assert EpisodeSampler([task], SamplerConfig(ways=2, shots=1, queries=2)).sample().classes
    mc = Task(parse_task({"name": "m", "type": "multiple_choice", "max_shots": 20,
                          "source": {"kind": "bigbench", "task": "toy_mc"}}))
    with pytest.raises(TaskError) as err:  # one line: what the task supports, what its file records, what was asked
        EpisodeSampler([mc], SamplerConfig(shots=20, queries=5))
    assert str(err.value).endswith("task 'm' supports at most 19 shots with 5 queries (it has 24 examples; its file "
                                   "records max_shots: 20); asked for 20") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="max_shots"):
        parse_task({"name": "m", "type": "multiple_choice", "max_shots": 0, "source": {"kind": "bigbench", "task": "x"}})


def test_bad_sampler_configs():
    for kwargs, field in [({"ways": 1}, "sampler.ways"), ({"shots": 0}, "sampler.shots"),
                          ({"temperature": 0}, "sampler.temperature")]:
        with pytest.raises(ConfigError) as err:
            SamplerConfig(**kwargs)
        assert err.value.field == field
    with pytest.raises(ConfigError, match="at least one task"):
        EpisodeSampler([])


def test_tasks_too_small_for_the_shape_are_left_out_by_name_when_asked(home):
    from metalm.data import Task, parse_task

    small = Task(parse_task({"name": "small", "type": "classification", "labels": ["a", "b"],
                             "source": {"kind": "bigbench", "task": "small"}}), "small.yaml")
    mc = Task(parse_task({"name": "m", "type": "multiple_choice", "source": {"kind": "bigbench", "task": "toy_mc"}}))
    cfg = SamplerConfig(ways=2, shots=2, queries=2, drop_small_classes=True, drop_small_tasks=True)
    with pytest.warns(UserWarning) as caught:
        sampler = EpisodeSampler([small, mc], cfg, seed=0)
    assert [str(w.message) for w in caught] == [
        "sampler.drop_small_tasks: small left out of the pool: task 'small' has fewer than 2 classes with 4 "
        "examples (at most 1 shots with 2 queries); asked for 2"]
    assert list(sampler.dropped) == ["small"] and sampler.tasks == ["m"]
    assert {sampler.sample().task for _ in range(5)} == {"m"}
    with pytest.raises(TaskError, match="no task of the pool of 2 can supply 2-way 30-shot episodes with 2 queries"), \
            pytest.warns(UserWarning):
        EpisodeSampler([small, mc], SamplerConfig(ways=2, shots=30, queries=2, drop_small_classes=True,
                                                  drop_small_tasks=True))
