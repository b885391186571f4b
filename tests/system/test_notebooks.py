"""The notebooks in docs/notebooks/ run from top to bottom on small simulated data.

They are executed with a real Jupyter kernel (nbclient + ipykernel), as a user
would run them; a cell that raises fails the test with the cell's traceback.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
from nbclient import NotebookClient  # noqa: E402 - nbclient needs nbformat: imported once it is known installed

NOTEBOOKS = Path(__file__).resolve().parents[2] / "docs" / "notebooks"


def _execute(name: str, cwd: Path, monkeypatch, workdir: Path | None = None,
             probe: str | None = None) -> nbformat.NotebookNode:
    """Run a notebook in ``cwd``, with ``DASKGLM_NOTEBOOK_DIR=workdir`` (unset when None).

    ``probe``, if given, is run as one more cell at the end (in the same kernel).
    """
    monkeypatch.setenv("DASKGLM_NOTEBOOK_SIZE", "small")
    if workdir is None:
        monkeypatch.delenv("DASKGLM_NOTEBOOK_DIR", raising=False)
    else:
        monkeypatch.setenv("DASKGLM_NOTEBOOK_DIR", str(workdir))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for cell in notebook.cells:
        assert not cell.get("outputs"), f"{name}: commit notebooks without outputs"
    if probe is not None:
        notebook.cells.append(nbformat.v4.new_code_cell(probe))
    cwd.mkdir(parents=True, exist_ok=True)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def _text(notebook) -> str:
    chunks = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            chunks.append(output.get("text", ""))
            chunks.extend(str(v) for v in output.get("data", {}).values())
    return "\n".join(chunks)


def test_two_runs_model_notebook(tmp_path, monkeypatch):
    notebook = _execute("two_runs_model", tmp_path, monkeypatch, workdir=tmp_path)
    text = _text(notebook)
    assert "Contrast 8 out of 8: Effects_of_interest" in text
    from helpers import parse_report

    page = parse_report((tmp_path / "report.html").read_text(encoding="utf-8"))  # nilearn's report, as it saves it
    assert page.names == ["DSt_minus_SSt", "Effects_of_interest"]
    assert any(c.clusters for c in page.contrasts)
    assert any("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
    assert f"data, stores and report kept in {tmp_path}" in text  # DASKGLM_NOTEBOOK_DIR was set


def test_connect_to_cluster_notebook(tmp_path, monkeypatch):
    # The task table, as data: its columns, rows and total against the task stream.
    probe = ("import json\nprint(json.dumps({'kinds': [str(k) for k in per_worker.columns], "
             "'workers': len(per_worker), 'counted': int(per_worker.to_numpy().sum()), 'tasks': len(tasks), "
             "'keys': len(set(map(str, tasks['key'])))}))")
    notebook = _execute("connect_to_cluster", tmp_path, monkeypatch, workdir=tmp_path, probe=probe)
    text = _text(notebook)
    assert "scheduler: tcp://127.0.0.1:" in text
    # The stand-in scheduler and workers it started are gone.
    import psutil

    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(tmp_path / "scheduler.json") in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, leftovers

    # The table of which worker ran what has a column per task kind (dask's key_split of the key,
    # as daskglm's graph names its layers), not one per task.
    table = json.loads(notebook.cells[-1].outputs[0]["text"])
    kinds = table["kinds"]
    assert table["workers"] == 2, table  # both workers took part
    assert table["counted"] == table["tasks"], table  # every task is counted once
    assert {"ingest_block", "write_fit_block"} <= set(kinds), kinds
    tokens = [kind for kind in kinds if re.search(r"[0-9a-f]{8}", kind)]
    assert not tokens, f"task keys (with their tokens) as columns: {tokens}"
    assert len(kinds) <= 10 and 2 * len(kinds) <= table["keys"], table
    assert (tmp_path / "stores").is_dir() and f"data and stores kept in {tmp_path}" in text


def test_group_analysis_notebook(tmp_path, monkeypatch):
    notebook = _execute("group_analysis", tmp_path, monkeypatch, workdir=tmp_path)
    text = _text(notebook)
    assert "skipped on rerun" in text and "mean group z inside the sentence blob" in text
    assert len(list((tmp_path / "first_level").glob("sub-*/.daskglm-complete.json"))) == 6
    assert f"dataset, stores and maps kept in {tmp_path}" in text


def _processes_with(variable: str, value: str) -> list:
    """Processes of this machine whose environment has ``variable=value``."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(variable) == value:
                found.append(process)
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.parametrize("name", ["two_runs_model", "connect_to_cluster", "group_analysis"])
def test_notebook_cleans_up(name, tmp_path, monkeypatch):
    """Without DASKGLM_NOTEBOOK_DIR a notebook works in a temporary folder it makes and removes at the end.

    The kernel (and all it starts: clusters, stand-in scheduler and workers) gets TMPDIR, DASKGLM_CACHE
    (daskglm's default store folder) and DASKGLM_DATA (simulate_fiac's default) pointing to empty folders;
    they are empty afterwards: no working folder, no stores in the cache, no dask scratch space. A Jupyter
    kernel itself writes nothing to TMPDIR (its connection file is in Jupyter's runtime folder), so nothing
    there is excused. No process the notebook started outlives it.
    """
    folders = {variable: tmp_path / variable.lower() for variable in ("TMPDIR", "DASKGLM_CACHE", "DASKGLM_DATA")}
    for variable, folder in folders.items():
        folder.mkdir()
        monkeypatch.setenv(variable, str(folder))
    notebook = _execute(name, tmp_path / "cwd", monkeypatch)
    for variable, folder in folders.items():
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [], f"left in {variable}"
    made = re.search(r"removed (\S+)", _text(notebook))
    assert made and Path(made.group(1)).parent == folders["TMPDIR"], "the last cell says what it removed"
    deadline = time.monotonic() + 30  # the kernel's shutdown may still be under way
    while (alive := _processes_with("TMPDIR", str(folders["TMPDIR"]))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, [p.cmdline() for p in alive]
