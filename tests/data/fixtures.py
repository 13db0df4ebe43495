"""Small data made for the tests: a BIG-bench-format cache, a BBC-style folder, play texts, task YAMLs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

WORDS = "apple river stone cloud lamp tiger violin garden mirror candle forest rocket".split()


def _manifest(folder: Path, name: str) -> None:
    (folder / "manifest.json").write_text(json.dumps({"name": name, "files": {}}), encoding="utf-8")


def make_home(root: Path) -> Path:
    """Write a METALM_HOME with fixture data under ``root`` and return it."""
    data = root / "data"
    bb = data / "bigbench"
    cls = [{"input": f"Is the {w} number {i} {lab}?", "target_scores": {"yes": int(lab == "yes"), "no": int(lab == "no"),
                                                                        "maybe": int(lab == "maybe")}}
           for lab in ("yes", "no", "maybe") for i, w in enumerate(WORDS)]
    mc = [{"input": f"Which follows {w}?", "target_scores": {f"{w}-{k}": int(k == i % 3) for k in range(3)}}
          for i, w in enumerate(WORDS + [w.upper() for w in WORDS])]
    gen = [{"input": f"Spell {w} backwards:", "target": [w[::-1], w[::-1].upper()]} for w in WORDS]
    small = [{"input": f"x{i}", "target_scores": {"a": int(i < 3), "b": int(i >= 3)}} for i in range(20)]
    tasks = {"toy_cls": {"task_prefix": "Answer.\n", "examples": cls}, "toy_mc": {"examples": mc},
             "toy_gen": {"examples": gen, "example_output_prefix": "\nReversed: "}, "small": {"examples": small}}
    for name, body in tasks.items():
        (bb / name).mkdir(parents=True)
        (bb / name / "task.json").write_text(json.dumps({"name": name, "canary": "CANARY", **body}), encoding="utf-8")
    _manifest(bb, "bigbench")
    bbc = data / "bbc-news"
    for topic in ("tech", "sports", "business"):  # created out of order on purpose
        (bbc / topic).mkdir(parents=True)
        for i in range(10):
            (bbc / topic / f"{i:03d}.txt").write_text(f"{topic.title()} story {i}\n\nBody of {topic} story {i}.\n",
                                                       encoding="utf-8")
    _manifest(bbc, "bbc-news")
    plays = data / "shakespeare"
    plays.mkdir(parents=True)
    for play in ("hamlet", "tempest"):
        lines = [f"{play.upper()}. Line {i} of the play, with some words to read." for i in range(200)]
        (plays / f"{play}.txt").write_text("\n".join(lines), encoding="utf-8")
    _manifest(plays, "shakespeare")
    return root


SPECS = {
    "toy_cls": {"type": "classification", "source": {"kind": "bigbench", "task": "toy_cls"},
                "template": "Answer.\nQ: {{ input }}{% for o in options %}\n  choice: {{ o }}{% endfor %}\nA:",
                "labels": ["yes", "no", "maybe"], "verbalizers": {"maybe": "unsure"}},
    "toy_mc": {"type": "multiple_choice", "source": {"kind": "bigbench", "task": "toy_mc"}, "template": "Q: {{ input }}\nA:"},
    "toy_gen": {"type": "generation", "source": {"kind": "bigbench", "task": "toy_gen"}, "target_field": "target",
                "template": "{{ input }}\nReversed:", "metric": "exact_match"},
    "news": {"type": "classification", "source": {"kind": "bbc_news"}, "template": "{{ title }}\nTopic:",
             "labels": ["business", "sports", "tech"]},
    "plays": {"type": "language_modeling", "source": {"kind": "shakespeare", "chunk_chars": 200},
              "template": "{{ text }}", "metric": "perplexity"},
}


def make_tasks_dir(root: Path, extra: dict | None = None) -> Path:
    """Write one YAML per fixture task (plus ``extra`` name -> spec) and a split; return the folder."""
    folder = root / "tasks"
    (folder / "splits").mkdir(parents=True)
    for name, spec in {**SPECS, **(extra or {})}.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **spec}, sort_keys=False), encoding="utf-8")
    split = {"name": "toy", "meta_train": ["toy_cls", "toy_mc"], "meta_val": ["toy_gen"], "meta_test": ["news"]}
    (folder / "splits" / "toy.yaml").write_text(yaml.safe_dump(split), encoding="utf-8")
    return folder


def corpus() -> list[str]:
    """Texts to train a fixture tokenizer on."""
    return ["Answer. Q: Is the apple number 1 yes? choice: yes no unsure A: yes no unsure maybe",
            "Which follows apple? Spell backwards: Reversed: Topic: story Body of business sports tech",
            *[f"{w} {w[::-1]} {w.upper()}" for w in WORDS],
            "HAMLET. TEMPEST. Line of the play, with some words to read. 0 1 2 3 4 5 6 7 8 9"]


def make_world(root: Path, **config: object) -> dict:
    """A data home, the fixture tasks, a tiny Llama and a training config on them (``config`` overrides
    top-level keys); returns ``{"root", "config" (the YAML path), "env" (with METALM_HOME)}``."""
    import os

    from metalm.models import save_tiny_model

    make_home(root / "home")
    tasks = make_tasks_dir(root)
    model = save_tiny_model(root / "model", corpus(), "llama")
    base = {"model": model, "adapter": {"rank": 2, "layers": "top:2"},
            "algorithm": {"name": "maml", "inner": {"steps": 2, "lr": 0.3}},
            "split": str(tasks / "splits" / "toy.yaml"), "task_dirs": [str(tasks)],
            "sampler": {"ways": 2, "shots": 2, "queries": 2}, "collate": {"max_length": 64}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({**base, **config}), encoding="utf-8")
    return {"root": root, "config": path, "env": {**os.environ, "METALM_HOME": str(root / "home")}}
