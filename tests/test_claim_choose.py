"""The claim study's selection rules (benchmarks/fewshot/claim/choose.py, PLAN.md) on curve points whose
answer is known by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .data.fixtures import make_world

ROOT = Path(__file__).resolve().parents[1]


def load(script: str = "choose"):
    """A claim script as a module (loaded by path: benchmarks/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fewshot" / "claim" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(f"claim_{script}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rules_by_hand():
    s = load()
    assert s.choose_step({500: 0.61, 1000: 0.6104, 1500: 0.58}) == 1000  # 0.610 twice: the later step
    assert s.choose_step({500: 0.62, 1000: 0.6104}) == 500
    chosen = {"a": {"meta": {16: 0.60, 4: 0.58}}, "b": {"mtl": {16: 0.65, 4: 0.5804}, "mtl@ft": {16: 0.64, 4: 0.50}}}
    assert s.designate(chosen) == {"16": {"candidate": "b", "row": "mtl"}, "4": {"candidate": "a", "row": "meta"},
                                   "1": {"candidate": "a", "row": "meta"}}  # 4 shots: 0.580 twice, a listed first


def macro_rows(rows):
    return {"macro": [{"method": m, "shots": k, "accuracy": a, "ci95": 0.05} for m, per in rows.items()
                      for k, a in per.items()] + [{"method": "finetune", "shots": k, "accuracy": 0.9, "ci95": 0.05}
                                                  for k in (4, 16)]}


def test_selection_and_the_comparisons_row_names(tmp_path):
    s = load()
    world = make_world(tmp_path)
    base = yaml.safe_load(world["config"].read_text())
    algorithms = {"long-maml": {"name": "maml", "inner": {"steps": 2, "lr": 0.3}}, "long-mtl": {"name": "multitask"},
                  "long-fo": {"name": "fomaml", "inner": {"steps": 2, "lr": 0.3}}}
    runs = []
    for name, algorithm in algorithms.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump({**base, "algorithm": algorithm}))
        runs.append(tmp_path / name)
    curves = tmp_path / "curves"
    curves.mkdir()
    points = {  # candidate -> step -> row -> shots -> meta-val macro (finetune, a baseline, is never chosen)
        "maml": {500: {"meta": {4: 0.50, 16: 0.60}, "meta@ft": {4: 0.52, 16: 0.61}},
                 1000: {"meta": {4: 0.55, 16: 0.6104}, "meta@ft": {4: 0.50, 16: 0.60}}},
        "mtl": {500: {"mtl": {4: 0.58, 16: 0.59}, "mtl@ft": {4: 0.57, 16: 0.65}},
                1000: {"mtl": {4: 0.56, 16: 0.58}, "mtl@ft": {4: 0.55, 16: 0.62}}},
        "fo": {1000: {"meta": {4: 0.58, 16: 0.60}, "meta@ft": {4: 0.60, 16: 0.55}}},
    }
    for name, steps in points.items():
        for step, rows in steps.items():
            (curves / f"{name}.step-{step:07d}.json").write_text(json.dumps(macro_rows(rows)))
    selection = s.select(runs, curves)
    got = {Path(r).name: c["chosen_step"] for r, c in selection["candidates"].items()}
    assert got == {"long-maml": 1000, "long-mtl": 500, "long-fo": 1000}  # maml: 0.610 at both, the later
    assert selection["designated"] == {"16": {"candidate": str(runs[1]), "row": "mtl@ft"},
                                       "4": {"candidate": str(runs[2]), "row": "meta@ft"},
                                       "1": {"candidate": str(runs[2]), "row": "meta@ft"}}
    out = tmp_path / "selection.json"
    assert s.main([*map(str, runs), "--curves", str(curves), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["designated"] == selection["designated"]
    with pytest.raises(SystemExit, match="no curve point of nothing"):
        s.curve(tmp_path / "long-nothing", curves)


def test_the_pilots_rule_by_hand():
    """The better arm goes on only when the interval excludes zero; otherwise the cheaper per step."""
    s = load()

    def report(a, b):  # one seed of 4 episodes on two tasks; per unit the mean over the tasks
        return {"tasks": ["x", "y"], "per_episode": {"f|x|4": [a], "f|y|4": [a], "r|x|4": [b], "r|y|4": [b]}}

    clear = s.pilot(report([1.0, 1.0, 0.5, 1.0], [0.5, 0.5, 0.0, 0.5]), "f", "r")
    assert clear["chosen"] == "fomaml" and clear["diff"] == 0.5 and clear["ci95"] == 0.0
    worse = s.pilot(report([0.0, 0.0, 0.5, 0.0], [0.5, 0.5, 1.0, 0.5]), "f", "r")
    assert worse["chosen"] == "reptile" and worse["diff"] == -0.5
    # differences 0.5, -0.5, 0.5, 0: mean 0.125, sd 0.479, half-width 3.182 x 0.239 = 0.762 > 0.125
    noisy = s.pilot(report([1.0, 0.0, 1.0, 0.5], [0.5, 0.5, 0.5, 0.5]), "f", "r")
    assert noisy["chosen"] == "reptile" and noisy["diff"] == pytest.approx(0.125)
    assert noisy["ci95"] == pytest.approx(3.1824 * 0.4787 / 2, abs=1e-3)
    noisy = s.pilot(report([1.0, 0.0, 1.0, 0.5], [0.5, 0.5, 0.5, 0.5]), "f", "r", cheaper="fomaml")
    assert noisy["chosen"] == "fomaml"
    assert s.pilot(report([0.0, 0.0, 0.5, 0.0], [0.5, 0.5, 1.0, 0.5]), "f", "r", cheaper="fomaml")["chosen"] == "reptile"
    with pytest.raises(SystemExit, match="no 'meta' row"):
        s.pilot(report([1.0], [1.0]), "meta", "r")


def test_the_cheaper_arm_from_the_cost_file(tmp_path):
    s = load()
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"rows": {"fomaml/4": {"seconds_mean": 7.5}, "reptile/4": {"seconds_mean": 7.8},
                                          "fomaml/4/autocast=bf16": {"seconds_mean": 1.0}}}))
    assert s.cheaper_arm(costs) == "fomaml"  # the study's precision's rows, not another precision's
    costs.write_text(json.dumps({"rows": {"fomaml/4": {"seconds_mean": 7.5}}}))
    with pytest.raises(SystemExit, match="no reptile/4 row"):
        s.cheaper_arm(costs)


def test_sizing_by_hand():
    """The study's size (PLAN.md, 2026-12-06) on costs whose total is worked out by hand."""
    s = load("sizing")
    step = {"a": 10, "fomaml": 20, "reptile": 10}
    per_episode = {"a": (1, 2), "fomaml": (3, 4), "reptile": (1, 1)}  # all of a candidate's rows together
    alone = {"a": (0.5, 1), "fomaml": (1, 2), "reptile": (0.5, 0.5)}  # its dearest row on its own
    costs = {"rows": {f"{c}/4": {"seconds_mean": v} for c, v in step.items()},
             "eval": {f"{c}/{shots}": {"seconds_per_episode": e[i]} for c, e in per_episode.items()
                      for i, shots in enumerate((4, 16))},
             "row_eval": {f"{c}/{shots}": {"seconds_per_episode": {"row": e[i], "cheap": 0.1, "finetune": 99}}
                          for c, e in alone.items() for i, shots in enumerate((4, 16))}}
    hours = s.size(costs, ["a", "fomaml", "reptile"], s.Rung(100, 2, 10, 2), test_tasks=3)
    # training: a 10 x 100, the dearer arm (fomaml) 20 x 100, reptile's pilot 10 x 15
    assert hours["training"] * 3600 == pytest.approx(1000 + 2000 + 150)
    assert hours["pilot"] * 3600 == pytest.approx((3 + 1) * 2 * 30)  # both arms, 4 shots, 2 tasks, 30 units
    # a and fomaml: 2 points at 16 shots, then the chosen checkpoint at 4 and 16; 2 tasks, 10 units
    assert hours["curves"] * 3600 == pytest.approx(((2 * 2 + 1 + 2) + (4 * 2 + 3 + 4)) * 2 * 10)
    assert hours["pool_curve"] * 3600 == pytest.approx(2 * (2000 + 4 * 2 * 10))  # fomaml is the dearest
    # one row per candidate and shot count (its dearest alone; fine-tuning, a baseline, is not scored again),
    # 1 shot at 4 shots' cost; 3 tasks, 30 units
    assert hours["comparison"] * 3600 == pytest.approx(((2 * 0.5 + 1) + (2 * 1 + 2)) * 3 * 30)
    assert hours["total"] * 3600 == pytest.approx(8530)
    chosen, table = s.choose(costs, ["a", "fomaml", "reptile"], 3, budget=1e9)
    assert chosen == s.RUNGS[0] and len(table) == len(s.RUNGS)
    assert s.choose(costs, ["a", "fomaml", "reptile"], 3, budget=0.01)[0] is None
    fits = [row["total"] <= 3 for row in table]  # the first rung within the budget, in the written order
    assert s.choose(costs, ["a", "fomaml", "reptile"], 3, budget=3)[0] == \
        (s.RUNGS[fits.index(True)] if True in fits else None)


def test_the_rungs_curve_steps_as_the_scripts_read_them(tmp_path):
    """sizing.py steps: what curves.sh scores and study.sh keeps committed (every steps / points; the
    anchors' 500-2000 without a sizing, for both); sizing.py rung: curves.sh's meta-val tasks and seeds."""
    s = load("sizing")
    assert s.curve_steps({"steps": 300, "points": 2}) == [150, 300]
    assert s.curve_steps({"steps": 1000, "points": 3}) == [333, 666, 1000]
    sizing = {"chosen": {"steps": 500, "points": 4, "curve_units": 20, "val_tasks": 2}, "meta_val_tasks": ["a", "b"]}
    assert s.rung_line(sizing) == "a,b 2"
    (tmp_path / "sizing.json").write_text(json.dumps(sizing))
    script = str(ROOT / "benchmarks" / "fewshot" / "claim" / "sizing.py")

    def ran(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=60)

    out = ran("rung", str(tmp_path / "sizing.json"))
    assert out.returncode == 0 and out.stdout == "a,b 2\n", out.stderr
    out = ran("steps", str(tmp_path / "sizing.json"))
    assert out.returncode == 0 and out.stdout == "125 250 375 500\n", out.stderr
    out = ran("steps", "none")
    assert out.returncode == 0 and out.stdout == "500 1000 1500 2000\n", out.stderr
    for sub in ("steps", "rung"):  # a sizing not written yet: one line naming the file, no steps
        out = ran(sub, str(tmp_path / "missing.json"))
        assert out.returncode != 0 and out.stdout == "" and "missing.json is not written" in out.stderr


def test_the_meta_val_subset_keeps_each_familys_share():
    s = load("sizing")
    family = {"s1": "syntax", "s2": "syntax", "s3": "syntax", "m1": "semantics", "m2": "semantics"}
    tasks = ["m1", "m2", "s1", "s2", "s3"]
    assert s.val_subset(tasks, family, 4) == ["m1", "s1", "m2", "s2"]  # families in turn, by name
    assert s.val_subset(tasks, family, 5) == ["m1", "s1", "m2", "s2", "s3"]
    assert s.val_subset(tasks, family, 1) == ["m1"]


def test_curve_points_at_16_shots_and_the_chosen_checkpoints_final_scoring(tmp_path, capsys):
    """PLAN.md 2026-12-06: curve points score 16 shots; the chosen checkpoint is scored at 4 and 16 shots
    (``.final.json``), and each candidate is compared with its best row per shot count."""
    s = load()
    world = make_world(tmp_path)
    base = yaml.safe_load(world["config"].read_text())
    run = tmp_path / "long-mtl"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**base, "algorithm": {"name": "multitask"}}))
    curves = tmp_path / "curves"
    curves.mkdir()
    for step, rows in {250: {"mtl": {16: 0.60}, "mtl-cal": {16: 0.62}}, 500: {"mtl": {16: 0.61}, "mtl-cal": {16: 0.6}}}.items():
        (curves / f"mtl.step-{step:07d}.json").write_text(json.dumps(macro_rows(rows)))
    assert s.chosen_step(run, curves) == 250  # 0.62 at 250 against 0.61 at 500
    assert s.main(["step", str(run), "--curves", str(curves)]) == 0 and capsys.readouterr().out.strip() == "250"
    with pytest.raises(SystemExit, match="FINAL=250"):
        s.select([run], curves)
    final = {"mtl": {4: 0.55, 16: 0.60}, "mtl-cal": {4: 0.5504, 16: 0.63}}  # 4 shots: 0.550 twice, mtl first
    (curves / "mtl.step-0000250.final.json").write_text(json.dumps(macro_rows(final)))
    selection = s.select([run], curves)
    c = selection["candidates"][str(run)]
    assert c["chosen_step"] == 250 and c["curve"] == {"250": {"mtl": 0.60, "mtl-cal": 0.62},
                                                       "500": {"mtl": 0.61, "mtl-cal": 0.6}}
    assert c["compared"] == {"16": "mtl-cal", "4": "mtl", "1": "mtl"}
    assert selection["designated"]["16"] == {"candidate": str(run), "row": "mtl-cal"}


def test_merge_joins_each_candidates_compared_row_on_the_tables_episodes(tmp_path):
    """merge.py: each candidate one row (its compared row at each shot count), paired with the best baseline on
    the same units (checked by hand), the table's zeroshot as the proof of the same episodes (a changed episode
    is refused), the designated candidate and the target read from the pair."""
    from metalm.eval import summarize
    from metalm.eval.stats import paired

    m = load("merge")
    tasks, seeds, shots = ["a", "b"], [1, 2], [1, 4, 16]
    zs = {t: [[0.5, 0.0], [1.0, 0.5]] for t in tasks}
    icl = {"a": [[1.0, 0.5], [0.5, 0.5]], "b": [[0.5, 0.5], [1.0, 0.0]]}
    data = {(row, t, k): (zs if row == "zeroshot" else icl)[t] for row in ("zeroshot", "icl") for t in tasks for k in shots}
    table = {**summarize(data, tasks, shots, chance=dict.fromkeys(tasks, 1 / 3), majority=dict.fromkeys(tasks, 1 / 3),
                         seeds=seeds, baselines=["zeroshot", "icl"]), "tasks": tasks}
    mine = {"a": [[1.0, 1.0], [1.0, 0.5]], "b": [[1.0, 0.5], [1.0, 1.0]]}  # the compared row's accuracies

    def compare_report(k, row):
        per = {f"zeroshot|{t}|{k}": zs[t] for t in tasks} | {f"{row}|{t}|{k}": mine[t] for t in tasks}
        return {"tasks": tasks, "seeds": {"seeds": seeds}, "per_episode": per,
                "episode_cost": {row: {str(k): {"seconds": 1.0, "forward_tokens": 10, "episodes": 2}}}}

    selection = {"candidates": {"runs/long-multitask": {"compared": {"1": "mtl-cal", "4": "mtl-cal", "16": "mtl@ft"}}},
                 "designated": {k: {"candidate": "runs/long-multitask", "row": "x"} for k in ("1", "4", "16")}}
    reports = {("multitask", k): compare_report(k, "mtl@ft" if k == 16 else "mtl-cal") for k in shots}
    out = m.merge(table, selection, reports, {"a": "t1", "b": "t2"})
    assert out["compared"] == {"multitask": {"1": "mtl-cal", "4": "mtl-cal", "16": "mtl@ft"}}
    assert out["per_episode"]["multitask|b|16"] == mine["b"] and out["reference"]["16"] == "icl"
    units = lambda acc: [(acc["a"][s][e] + acc["b"][s][e]) / 2 for s in range(2) for e in range(2)]  # noqa: E731
    (pair,) = [p for p in out["paired"] if p["task"] == "macro" and p["shots"] == 16 and p["method"] == "multitask"]
    hand = paired(units(mine), units(icl))
    assert pair["diff"] == pytest.approx(hand["diff"]) == pytest.approx(0.3125) and pair["ci95"] == pytest.approx(hand["ci95"])
    t = out["target"]
    assert (t["designated"], t["reference"], t["diff"]) == ("multitask", "icl", pytest.approx(0.3125))
    assert t["met"] == (0.3125 - hand["ci95"] > 0)
    assert out["episode_cost"]["multitask"]["16"]["seconds"] == 1.0 and {r["group"] for r in out["per_type"]} == {"t1", "t2"}
    from metalm.report import write_report

    (tmp_path / "claim.json").write_text(json.dumps(out))  # `metalm report` reads it: the Pareto plot included
    md = write_report(tmp_path / "claim.json").read_text()
    assert "| multitask | 16 |" in md and (tmp_path / "claim_report" / "accuracy_vs_cost.png").is_file()
    reports[("multitask", 4)]["per_episode"]["zeroshot|b|4"] = [[0.5, 0.0], [1.0, 1.0]]  # one episode changed
    with pytest.raises(SystemExit, match="multitask at 4 shots: zeroshot on b differs"):
        m.merge(table, selection, reports)
    del reports[("multitask", 4)]
    with pytest.raises(SystemExit, match="multitask at 4 shots: no report"):
        m.merge(table, selection, reports)
