"""The notebooks in notebooks/ run from top to bottom on small simulated data.

They are executed with a real Jupyter kernel (nbclient + ipykernel), as a user
would run them; a cell that raises fails the test with the cell's traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
from nbclient import NotebookClient  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _execute(name: str, workdir: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("DASKGLM_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("DASKGLM_NOTEBOOK_DIR", str(workdir))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for cell in notebook.cells:
        assert not cell.get("outputs"), f"{name}: commit notebooks without outputs"
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


def _text(notebook) -> str:
    chunks = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            chunks.append(output.get("text", ""))
            chunks.extend(str(v) for v in output.get("data", {}).values())
    return "\n".join(chunks)


@pytest.mark.slow
def test_two_runs_model_notebook(tmp_path, monkeypatch):
    notebook = _execute("two_runs_model", tmp_path, monkeypatch)
    text = _text(notebook)
    assert "Contrast 8 out of 8: Effects_of_interest" in text
    from test_report import parse_report

    page = parse_report((tmp_path / "report.html").read_text(encoding="utf-8"))  # nilearn's report, as it saves it
    assert page.names == ["DSt_minus_SSt", "Effects_of_interest"]
    assert any(c.clusters for c in page.contrasts)
    assert any("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_connect_to_cluster_notebook(tmp_path, monkeypatch):
    notebook = _execute("connect_to_cluster", tmp_path, monkeypatch)
    assert "scheduler: tcp://127.0.0.1:" in _text(notebook)
    # The stand-in scheduler and workers it started are gone.
    import psutil

    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(tmp_path / "scheduler.json") in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, leftovers


@pytest.mark.slow
def test_group_analysis_notebook(tmp_path, monkeypatch):
    notebook = _execute("group_analysis", tmp_path, monkeypatch)
    text = _text(notebook)
    assert "skipped on rerun" in text and "mean group z inside the sentence blob" in text
    assert len(list((tmp_path / "first_level").glob("sub-*/.daskglm-complete.json"))) == 6
