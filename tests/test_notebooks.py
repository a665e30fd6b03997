"""The notebooks in docs/notebooks run end to end in a real Jupyter kernel, on small data."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((REPO / "docs" / "notebooks").glob("*.ipynb"))


def _outputs(nb: object, kind: str) -> list[object]:
    cells = nb.cells  # type: ignore[attr-defined]
    return [o for c in cells if c.cell_type == "code" for o in c.outputs if kind in str(o)]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nb = nbformat.read(path, as_version=4)
    # The kernel runs in the test's empty folder (stores, logs, exports land there) with this
    # interpreter and environment; a cell that raises fails the test (CellExecutionError).
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    assert _outputs(nb, "image/png"), "the notebook shows its plots"
    assert not _outputs(nb, "Traceback")
    if path.name == "separable_vs_conv2d.ipynb":
        text = "".join(
            o.get("text", "")
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.outputs  # type: ignore[attr-defined]
        )
        assert "4 complete, 0 failed" in text
        assert "gives the same classes: True" in text
        assert (workdir / "digits-ensemble.keras").is_file()
