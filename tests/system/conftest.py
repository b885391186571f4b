"""The end-to-end and infrastructure tests: every test of this folder is ``slow`` (marked here, once),
and the fixtures of the tests on real ``dask scheduler`` / ``dask worker`` processes
(test_distributed.py, test_faults.py): FIAC-shaped runs and their in-process reference results;
and ``chrome``, a headless Chromium (test_report_browser.py, test_docs.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import N_SCANS, cluster_model, fit_and_maps, model_stores

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything here runs the whole stack on real components (processes, clusters, a browser,
    Slurm, S3, notebooks): ``slow``, out of ``pytest -m "not slow"``."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread in this (client) process, as dask gives its workers.

    Building an AR(1) fit graph tabulates 201 small covariances (SVDs of the
    design) in the client; with a multithreaded BLAS on a busy 2-core machine
    each is ~10x slower, which would dominate these tests' time.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def cluster_fiac(tmp_path_factory, fiac_data):
    """Two FIAC-shaped runs (.nii.gz, 30x32x20 voxels, 100 scans), designs and mask."""
    root = tmp_path_factory.mktemp("distributed")
    data = fiac_data(shape=(30, 32, 20), n_scans=N_SCANS)
    designs = [pd.DataFrame(np.load(data[f"design_matrix{r}"])["X"]) for r in (1, 2)]
    return {"root": root, "data": data, "runs": [data["func1"], data["func2"]], "designs": designs}


@pytest.fixture(scope="session")
def cluster_reference(cluster_fiac):
    """The in-process results (dask's synchronous scheduler in this process): the
    two-run model, and the first run alone (its store is reused: only the fit is redone)."""
    from threadpoolctl import threadpool_limits

    fiac = cluster_fiac
    with threadpool_limits(limits=1, user_api="blas"):  # see one_blas_thread
        model = cluster_model(fiac, fiac["root"] / "reference", "sync")
        two_runs = fit_and_maps(model, fiac)
        stores = model_stores(model)
        first_run = fit_and_maps(model, fiac, slice(0, 1))
    assert model_stores(model) == stores[:1]
    return {"maps": two_runs, "stores": stores, "run1_maps": first_run}
