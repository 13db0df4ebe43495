"""Decision-level vs token-level objective conflict of two yes/no tasks on a tiny random Llama
(the figures quoted in README and benchmarks/RESULTS.md): python benchmarks/conflict_swapped.py"""

import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import metalm  # noqa: E402
from metalm.models import save_tiny_model  # noqa: E402
from tests.data.fixtures import corpus  # noqa: E402
from tests.test_diagnose import _examples, _measure  # noqa: E402

path = save_tiny_model(Path(tempfile.mkdtemp()) / "m", corpus(), "llama")
model, tok = metalm.load_model(path), AutoTokenizer.from_pretrained(path)
one_sided = {"yes": [_examples(False, label=0)], "no": [_examples(False, label=1)]}
mixed = {"yes_no": [_examples(False)], "no_yes": [_examples(True)]}
for name, groups in (("always yes vs always no", one_sided), ("both labels, swapped", mixed)):
    print(f"{name}: decision {_measure(model, tok, groups, 'decision')[0, 1]:+.5f}, "
          f"token {_measure(model, tok, groups, 'token')[0, 1]:+.5f}")
