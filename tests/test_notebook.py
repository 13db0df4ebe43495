"""The research notebook runs top to bottom, so it cannot rot."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| meta |" in outputs and "| chance |" in outputs
    # Values fixed by the notebook's own construction (exact on any machine): its six tasks and the
    # LoRA tensors of rank 4 on q and v of the top 2 of the tiny model's layers (A and B each).
    assert "['rule0', 'rule1', 'rule2', 'rule3', 'rule4', 'rule5']" in outputs
    assert "8 fast tensors, e.g. base_model.model.model.layers.2.self_attn.q_proj.lora_A.default.weight" in outputs
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the accuracy-vs-shots plot
