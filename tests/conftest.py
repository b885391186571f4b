"""Shared fixtures: small runs written to disk, a LocalCluster, and real ``dask
scheduler`` / ``dask worker`` processes with FIAC-shaped runs and in-process
reference results (used by test_distributed.py and test_faults.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pandas as pd
import psutil
import pytest
from dask.callbacks import Callback

if TYPE_CHECKING:
    from daskglm.models.first_level import FirstLevelModel

# Hypothesis profiles, once for every test module (``HYPOTHESIS_PROFILE=dev`` for a quick pass, ``ci`` for a
# deeper one). No deadline: the kernels' first call compiles (numba) or warms caches. Modules ask for fewer
# examples where one example is costly, with ``@settings(max_examples=...)`` on top of the profile.
from hypothesis import HealthCheck, settings  # noqa: E402

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


def write_run(path: Path, data: np.ndarray, affine: np.ndarray, t_r: float = 2.0) -> Path:
    """Save a 4D int16/float array as NIfTI with the TR in the header."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(np.sqrt((affine[:3, :3] ** 2).sum(0))) + (t_r,))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


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


# --------------------------------------------------------------------------- real dask processes

CONTRASTS = {
    "DSt_minus_SSt": np.array([[-1, -1, 1, 1]]),
    "DSp_minus_SSp": np.array([[-1, 1, -1, 1]]),
    "Effects_of_interest": np.eye(13)[:5],
}
N_SCANS = 100


def _dask_script() -> str:
    """The ``dask`` console script of this interpreter's environment."""
    script = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if script is None:
        pytest.fail("the `dask` console script (package distributed) is not installed")
    return script


class RealCluster:
    """``dask scheduler`` + ``dask worker`` processes, each in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scheduler_file = root / "scheduler.json"
        self.env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
        # The scheduler remembers every transition (not the last 1000): see executed_tasks.
        self.env["DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH"] = "1000000"
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: dict[int, float] = {}  # pid -> create_time of every process we started
        self.address = ""

    def start(self, n_workers: int, memory_limit: str) -> None:
        # --dashboard-address: the HTTP server (health, metrics) that runs even without
        # a dashboard would listen on 0.0.0.0 by default; keep it on the loopback too.
        loopback_http = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
        self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", *loopback_http,
                                  "--scheduler-file", str(self.scheduler_file)])
        self.address = self._wait_for_address()
        for index in range(n_workers):
            self._start(f"worker-{index}", [
                "worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
                "--nworkers", "1", "--nthreads", "1", "--memory-limit", memory_limit,
                *loopback_http, "--name", f"worker-{index}", "--death-timeout", "60",
                "--local-directory", str(self.root / f"worker-{index}"),
            ])
        self.wait_for_workers(n_workers)

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [_dask_script(), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True,  # its own process group: killpg reaches the nanny's worker
        )
        log.close()
        self._remember()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]

    def _remember(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(proc.pid)
                for p in [parent, *parent.children(recursive=True)]:
                    self.seen.setdefault(p.pid, p.create_time())

    def _wait_for_address(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["scheduler"].poll() is not None:
                pytest.fail(f"dask scheduler exited: {self.log('scheduler')}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                address = json.loads(self.scheduler_file.read_text())["address"]
                if address.startswith("tcp://127.0.0.1:"):
                    return address
            time.sleep(0.05)
        pytest.fail(f"dask scheduler wrote no address in {timeout} s: {self.log('scheduler')}")

    def client(self):
        from distributed import Client

        return Client(self.address, set_as_default=False, timeout=30)

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        with self.client() as client:
            try:
                client.wait_for_workers(n, timeout=timeout)
            except TimeoutError:
                logs = "\n".join(self.log(name) for name in self.procs if name != "scheduler")
                pytest.fail(f"{n} workers did not register in {timeout} s:\n{logs}")
        self._remember()  # the nannies' worker processes exist now

    def processes(self, name: str) -> list[psutil.Process]:
        parent = psutil.Process(self.procs[name].pid)
        return [parent, *parent.children(recursive=True)]

    def listening(self) -> set[str]:
        """IP addresses on which the cluster's processes accept connections."""
        return {conn.laddr.ip for name in self.procs for proc in self.processes(name)
                for conn in proc.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN}

    def kill(self, name: str) -> None:
        """SIGKILL a worker's whole process group (its nanny and its worker process)."""
        proc = self.procs[name]
        self._remember()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def close(self) -> None:
        self._remember()
        for name in sorted(self.procs, key=lambda n: n == "scheduler"):  # workers first
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():  # whatever did not stop politely
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.assert_no_leftovers()

    def assert_no_leftovers(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alive = []
            for pid, created in self.seen.items():
                with contextlib.suppress(psutil.NoSuchProcess):
                    p = psutil.Process(pid)
                    if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not alive, f"cluster processes left behind: {alive}"


@contextlib.contextmanager
def real_cluster(root: Path, n_workers: int = 2, memory_limit: str = "1.5GiB",
                 env: dict[str, str] | None = None):
    """A started :class:`RealCluster` (``env``: extra environment of its processes), closed on exit."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = RealCluster(root)
    cluster.env.update(env or {})
    try:
        cluster.start(n_workers, memory_limit)
        yield cluster
    finally:  # also when the start failed half-way
        cluster.close()


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


#: Small blocks, so that a fit or an ingestion has tens of tasks and a kill lands mid-way.
CHUNKS = {"t_chunk": 4, "v_chunk": 256}


@pytest.fixture(scope="session")
def cluster_fiac(tmp_path_factory):
    """Two FIAC-shaped runs (.nii.gz, 30x32x20 voxels, 100 scans), designs and mask."""
    from daskglm.datasets.fiac import simulate_fiac

    root = tmp_path_factory.mktemp("distributed")
    data = simulate_fiac(data_dir=root / "data", shape=(30, 32, 20), n_scans=N_SCANS)
    designs = [pd.DataFrame(np.load(data[f"design_matrix{r}"])["X"]) for r in (1, 2)]
    return {"root": root, "data": data, "runs": [data["func1"], data["func2"]], "designs": designs}


def cluster_model(fiac, store: Path, client) -> FirstLevelModel:
    """The model of the cluster tests: AR(1), 5 mm, small chunks, stores under ``store``."""
    from daskglm.models.first_level import FirstLevelModel

    return FirstLevelModel(mask_img=fiac["data"]["mask"], smoothing_fwhm=5.0, noise_model="ar1",
                           store=store, client=client, **CHUNKS)


def fit_and_maps(model: FirstLevelModel, fiac, runs: slice = slice(None)) -> dict[str, np.ndarray]:
    """Fit the runs (both by default) and compute the contrasts' maps (all output types)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(fiac["runs"][runs], design_matrices=fiac["designs"][runs])
        maps = {}
        for name, con in CONTRASTS.items():
            for kind, img in model.compute_contrast(con, output_type="all").items():
                maps[f"{name}/{kind}"] = np.asarray(img.dataobj)
    return maps


def model_stores(model: FirstLevelModel) -> list[str]:
    return [fit.attrs["store"] for fit in model.results_]


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


def assert_same_maps(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12, err_msg=key)


def store_files(root: Path) -> list[str]:
    """The files under ``root``, fit groups named ``glm-*`` (their key names the store's location)."""
    return sorted(re.sub(r"glm-[0-9a-f]{16}", "glm-*", p.relative_to(root).as_posix())
                  for p in root.rglob("*") if p.is_file())


def fit_group(store: str | Path) -> str:
    """The one fit group of a model's run store (``glm-<fit key>``, see daskglm.glm.fit.fit_key)."""
    (name,) = [p.name for p in Path(store).iterdir() if p.name.startswith("glm")]
    return name


def assert_same_store(store: str, expected: str) -> None:
    """Same ingested rows and fit arrays, complete, every block flagged, the same files."""
    import zarr

    got, ref = zarr.open_group(store, mode="r"), zarr.open_group(expected, mode="r")
    glm, ref_glm = fit_group(store), fit_group(expected)
    assert got.attrs["complete"] is True and got[glm].attrs["complete"] is True
    assert np.asarray(got["ingest_done"][:]).tolist() == [1] * got["ingest_done"].shape[0]
    for path in ("bold", "i", "j", "k", *(f"glm/{name}" for name in ("beta", "sigma2", "label_index", "cov",
                                                                       "label_value"))):
        a, b = got[path.replace("glm", glm)], ref[path.replace("glm", ref_glm)]
        assert a.shape == b.shape and a.chunks == b.chunks and a.dtype == b.dtype, path
        np.testing.assert_array_equal(a[...], b[...], err_msg=path)
    # One file per chunk, as in the uninterrupted store: nothing duplicated, and no
    # "<key>.<uuid>.partial" debris of a chunk write killed midway (swept before
    # the store is marked complete).
    assert store_files(Path(store)) == store_files(Path(expected))


def executed_tasks(cluster: RealCluster) -> dict[str, int]:
    """How many tasks of each key prefix the workers ran (from the scheduler's transition log)."""
    def count(dask_scheduler):
        from collections import Counter

        from distributed.utils import key_split

        return dict(Counter(key_split(t.key) for t in dask_scheduler.transition_log
                            if t.finish == "memory"))

    with cluster.client() as client:
        return client.run_on_scheduler(count)


class TaskCounter(Callback):
    """A dask local-scheduler callback counting the tasks started inside ``with TaskCounter() as c``
    (``c.started``): a graph that is only built starts none."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0

    def _pretask(self, key, dsk, state) -> None:
        self.started += 1
