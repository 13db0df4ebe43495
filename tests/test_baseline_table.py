"""benchmarks/fewshot/baseline_table.py on the committed pool baseline report: its tables, and the line
that says fine-tuning's budget was chosen on noise when the report records it so."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fewshot" / "baseline_table.py"
REPORT = ROOT / "benchmarks" / "results" / "bench_pool_baselines.json"


def _table(report: Path, *args: str) -> str:
    ran = subprocess.run([sys.executable, str(SCRIPT), str(report), *args], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_the_committed_table_and_the_noise_line(tmp_path):
    out = _table(REPORT, "--json", str(tmp_path / "t.json"))
    assert out.startswith("22 held-out tasks") and "| icl-cal | 0.654 ± 0.011" in out and "chosen on noise" not in out
    report = json.loads(REPORT.read_text(encoding="utf-8"))
    # the same report with the runner-up comparison a newer evaluation records (hand-written figures)
    report["finetune"]["versus"] = {"runner_up": {"optimizer": "sgd", "lr": 1.0, "steps": 10}, "diff": 0.016,
                                    "ci95": 0.03, "p": 0.3, "n": 160, "separated": False}
    (tmp_path / "r.json").write_text(json.dumps(report), encoding="utf-8")
    noisy = _table(tmp_path / "r.json")
    assert "\nFine-tuning's budget was chosen on noise: on the meta-val episodes it beats the runner-up (sgd lr 1, " \
           "10 steps) by +0.016 (paired 95% [-0.014, +0.046], 160 episodes)" in noisy
    assert noisy.replace(noisy[noisy.index("Fine-tuning"):noisy.index("Macro")], "") == out
