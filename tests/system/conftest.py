"""The end-to-end and infrastructure tests: every test of this folder is ``slow`` (marked here, once),
and the fixtures of the tests on real ``dask scheduler`` / ``dask worker`` processes
(test_distributed.py, test_faults.py): FIAC-shaped runs and their in-process reference results;
and ``chrome``, a headless Chromium (test_report_browser.py, test_docs.py).
"""

from __future__ import annotations

import os
import shutil
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


# --- A real browser: headless Chromium driven by selenium, offline ------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-dev-shm-usage", "--window-size=1400,1000",
                  "--host-resolver-rules=MAP * ~NOTFOUND")  # offline: no host name resolves


def _browser() -> tuple[str, str]:
    """Paths of the system Chromium and chromedriver, or skip saying what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = "/usr/bin/chromedriver" if os.access("/usr/bin/chromedriver", os.X_OK) else shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if not path]
    if missing:
        pytest.skip(f"headless browser test needs the Debian packages {' and '.join(missing)} "
                    "(apt-get install chromium chromium-driver; listed in .ci/apt-packages)")
    return chromium, driver


@pytest.fixture
def chrome(tmp_path, monkeypatch):
    """A headless Chromium session with a fresh profile; selenium never looks for or downloads a driver."""
    chromium, driver_path = _browser()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the 'test' extra")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager, should it ever run, stays offline
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
