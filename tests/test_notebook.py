"""`notebooks/quickstart.ipynb` runs top to bottom in a Jupyter kernel (nbclient) without errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanochat_ternary import _core

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat (test extra)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient (test extra)")
pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel (test extra)")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


@pytest.mark.skipif(not hasattr(_core, "Engine"), reason="_core.Engine is not built yet")
def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel runs this interpreter (the venv), whatever kernelspecs are installed.
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name=NATIVE_KERNEL_NAME, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not [o for o in cell.outputs if o.output_type == "error"], f"cell {index} failed"
        outputs[index] = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)
    text = "\n".join(outputs.values())
    assert "TernaryModel(name='quickstart'" in text
    assert "loss after 30 steps" in text
    assert "TernaryModel(name='quickstart-hf'" in text
