"""notebooks/fruit_classification.ipynb: committed without outputs, and it runs (on a small subset)."""

from __future__ import annotations

import os
import time

import pytest

from .conftest import REPO, needs_shared

NOTEBOOK = REPO / "notebooks" / "fruit_classification.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "strip the outputs before committing"


@needs_shared
@pytest.mark.slow
def test_notebook_runs_on_a_small_subset_within_3_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("FRUITPIPE_NOTEBOOK_QUICK", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    started = time.monotonic()
    nbclient.NotebookClient(nb, timeout=170, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    seconds = time.monotonic() - started
    assert seconds < 180, f"the notebook took {seconds:.0f} s"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6, "every figure of the data story is drawn"
    assert os.environ["FRUITPIPE_NOTEBOOK_QUICK"] == "1"
