"""Fixtures and settings shared by every test folder: the session's own daskglm cache and data
folders (never the user's), hypothesis profiles, the simulated datasets (:func:`fiac_data`,
:func:`bids_data`: each set of parameters simulated once per session), a small run written to
disk, a LocalCluster, a headless Chromium (:func:`chrome`, for the report and docs pages).

Helpers that test modules import (not fixtures) are in ``helpers.py``; the real ``dask scheduler``
/ ``dask worker`` fixtures of the end-to-end tests are in ``system/conftest.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import write_run
from hypothesis import HealthCheck, settings

# Hypothesis profiles, once for every test module (``HYPOTHESIS_PROFILE=dev`` for a quick pass, ``ci`` for a
# deeper one). No deadline: the kernels' first call compiles (numba) or warms caches. Modules ask for fewer
# examples where one example is costly, with ``@settings(max_examples=...)`` on top of the profile.
settings.register_profile("default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", parent=settings.get_profile("default"), max_examples=10)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

_USER_FOLDERS: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    """daskglm's default cache and simulated data in a folder of this session, never the user's
    (``~/.cache/daskglm``): every model, command and subprocess of the tests inherits it."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="daskglm-tests-"))
    for variable in ("DASKGLM_CACHE", "DASKGLM_DATA"):
        _USER_FOLDERS[variable] = os.environ.get(variable)
        os.environ[variable] = str(root / variable.lower())
    _USER_FOLDERS["root"] = str(root)


def pytest_unconfigure(config: pytest.Config) -> None:
    for variable in ("DASKGLM_CACHE", "DASKGLM_DATA"):
        if _USER_FOLDERS.get(variable) is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = _USER_FOLDERS[variable]
    if _USER_FOLDERS.get("root"):
        shutil.rmtree(_USER_FOLDERS["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's folder of simulated datasets (see :func:`fiac_data`, :func:`bids_data`)."""
    return tmp_path_factory.mktemp("simulated")


@pytest.fixture(scope="session")
def fiac_data(simulated: Path):
    """``fiac_data(**params)``: :func:`daskglm.datasets.fiac.simulate_fiac` with those parameters, in
    this session's folder. The simulation is deterministic and cached by its parameters (a folder
    per parameter set), so modules asking for the same data share one simulation. Treat its files
    as read-only: copy a file before changing it."""
    from daskglm.datasets.fiac import simulate_fiac

    def make(**params):
        return simulate_fiac(data_dir=simulated / "fiac", **params)

    return make


@pytest.fixture(scope="session")
def bids_data(simulated: Path):
    """``bids_data(**params)``: :func:`daskglm.datasets.bids_sim.simulate_bids` with those parameters
    (its defaults for the others), in a folder of this session named after them: one simulation per
    parameter set and session, shared by the modules asking for it. Treat the dataset as
    read-only: copy it (``shutil.copytree(bids.root, ...)``) before changing it."""
    from daskglm.datasets.bids_sim import simulate_bids

    def make(**params):
        key = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return simulate_bids(simulated / f"bids-{key}", **params)

    return make


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> dict:
    """A 20x22x14 run of 30 int16 volumes (.nii and .nii.gz), an oblique-free
    anisotropic affine, a box-and-blob mask, and a mask on another grid."""
    root = tmp_path_factory.mktemp("small_run")
    rng = np.random.default_rng(42)
    shape = (20, 22, 14, 30)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape[:3]], indexing="ij")
    brain = ((x - 10) / 8) ** 2 + ((y - 11) / 9) ** 2 + ((z - 7) / 6) ** 2 < 1
    base = np.where(brain, 1000.0, 30.0)[..., None]
    data = np.round(base + rng.normal(0, 25, size=shape)).astype(np.int16)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    affine[:3, 3] = [-30.0, -33.0, -24.0]
    mask = np.zeros(shape[:3], np.uint8)
    mask[4:16, 5:18, 3:11] = 1
    mask[2, 2, 2] = 1  # an isolated voxel near the edge
    paths = {
        "nii": write_run(root / "run.nii", data, affine),
        "nii.gz": write_run(root / "run.nii.gz", data, affine),
    }
    mask_path = root / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, affine), str(mask_path))
    # The same mask at twice the resolution, half a voxel shifted: another grid.
    fine_affine = affine.copy()
    fine_affine[:3, :3] /= 2
    fine = np.repeat(np.repeat(np.repeat(mask, 2, 0), 2, 1), 2, 2)
    fine_path = root / "mask_fine.nii.gz"
    nib.save(nib.Nifti1Image(fine, fine_affine), str(fine_path))
    return {
        "root": root, "data": data, "affine": affine, "mask": mask.astype(bool),
        "mask_path": mask_path, "fine_mask_path": fine_path, "t_r": 2.0, **paths,
    }


@pytest.fixture(scope="session")
def cluster_client():
    """A real LocalCluster of two worker processes on 127.0.0.1."""
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, memory_limit="2GiB",
        )
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


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
