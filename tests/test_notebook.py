"""_StartHere.ipynb executes top to bottom (small parameters), with no error in any cell."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import ROOT, free_port


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path):
    notebook = nbformat.read(ROOT / "_StartHere.ipynb", as_version=4)
    params = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    small = {"SERVERS": "12", "HOURS": "96", "EPOCHS": "1", "WINDOWS": "256", "HIDDEN": "8", "ENCODER": "24",
             "WORKDIR": repr(str(tmp_path / "nb")), "PORT": str(free_port())}
    for name, value in small.items():
        params.source, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", params.source, flags=re.M)
        assert count == 1, f"parameter {name} not found in the parameters cell"
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                        for o in c.get("outputs", []))
    assert "valid: True" in outputs and "saved:" in outputs and "forecast made at" in outputs
    assert "daemon stopped" in outputs
    images = sum(1 for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images >= 3  # fleet, loss curve, forecasts vs actuals
