"""daskglm on a real multi-process Dask cluster (issue 5, parts 1-3; issue 8, part 3).

The cluster is made of the real console scripts: ``dask scheduler`` and two
``dask worker`` processes (one thread each, a memory limit), talking TCP on
127.0.0.1 on random ports, each started in its own process group and killed
as a group at teardown. Nothing here uses another network address.

- The two-run model ingested and fitted through ``client=<address>`` and
  through ``DASK_SCHEDULER_ADDRESS`` gives the in-process results; and the
  client process runs no task itself (dask's local schedulers are booby-trapped).
- A worker SIGKILLed once about half of a fit's (or an ingestion's) blocks are
  written: the work completes on the remaining worker, the maps are identical
  to an uninterrupted run, and the store holds exactly the reference data.
- The graphs of an HCP-sized run (91x109x91x1200 int16, a sparse file) stay
  small: workers read the data themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import dask
import dask.array
import nibabel as nib
import numpy as np
import pandas as pd
import psutil
import pytest
import zarr

from daskglm.model import FirstLevelModel
from daskglm.store import StoreIncompleteError, open_run
from test_cluster import no_local_compute  # dask's local schedulers raise inside

pytestmark = pytest.mark.slow

CONTRASTS = {
    "DSt_minus_SSt": np.array([[-1, -1, 1, 1]]),
    "DSp_minus_SSp": np.array([[-1, 1, -1, 1]]),
    "Effects_of_interest": np.eye(13)[:5],
}
N_SCANS = 100
MiB = 2**20


# --------------------------------------------------------------------------- a real cluster


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
        # The scheduler remembers every transition (not the last 1000): see _executed.
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
def real_cluster(root: Path, n_workers: int = 2, memory_limit: str = "1.5GiB"):
    root.mkdir(parents=True, exist_ok=True)
    cluster = RealCluster(root)
    try:
        cluster.start(n_workers, memory_limit)
        yield cluster
    finally:  # also when the start failed half-way
        cluster.close()


@pytest.fixture
def cluster(tmp_path):
    """A fresh scheduler + two workers (fresh, since the failure tests kill one)."""
    with real_cluster(tmp_path / "cluster") as running:
        yield running


# --------------------------------------------------------------------------- data and runs


@pytest.fixture(scope="module", autouse=True)
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


@pytest.fixture(scope="module")
def fiac(tmp_path_factory):
    """Two FIAC-shaped runs (.nii.gz, 30x32x20 voxels, 100 scans), designs and mask."""
    from daskglm.datasets import simulate_fiac

    root = tmp_path_factory.mktemp("distributed")
    data = simulate_fiac(data_dir=root / "data", shape=(30, 32, 20), n_scans=N_SCANS)
    designs = [pd.DataFrame(np.load(data[f"design_matrix{r}"])["X"]) for r in (1, 2)]
    return {"root": root, "data": data, "runs": [data["func1"], data["func2"]], "designs": designs}


def _model(fiac, store: Path, client) -> FirstLevelModel:
    return FirstLevelModel(mask_img=fiac["data"]["mask"], smoothing_fwhm=5.0, noise_model="ar1",
                           store=store, client=client, **CHUNKS)


def _fit_and_maps(model: FirstLevelModel, fiac, runs: slice = slice(None)) -> dict[str, np.ndarray]:
    """Fit the runs (both by default) and compute the contrasts' maps (all output types)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(fiac["runs"][runs], design_matrices=fiac["designs"][runs])
        maps = {}
        for name, con in CONTRASTS.items():
            for kind, img in model.compute_contrast(con, output_type="all").items():
                maps[f"{name}/{kind}"] = np.asarray(img.dataobj)
    return maps


def _stores(model: FirstLevelModel) -> list[str]:
    return [fit.attrs["store"] for fit in model.results_]


@pytest.fixture(scope="module")
def reference(fiac):
    """The in-process results (dask's synchronous scheduler in this process): the
    two-run model, and the first run alone (its store is reused: only the fit is redone)."""
    model = _model(fiac, fiac["root"] / "reference", "sync")
    two_runs = _fit_and_maps(model, fiac)
    stores = _stores(model)
    first_run = _fit_and_maps(model, fiac, slice(0, 1))
    assert _stores(model) == stores[:1]
    return {"maps": two_runs, "stores": stores, "run1_maps": first_run}


def assert_same_maps(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12, err_msg=key)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def assert_same_store(store: str, expected: str) -> None:
    """Same ingested rows and fit arrays, complete, every block flagged, the same files.
    """
    got, ref = zarr.open_group(store, mode="r"), zarr.open_group(expected, mode="r")
    assert got.attrs["complete"] is True and got["glm"].attrs["complete"] is True
    assert np.asarray(got["ingest_done"][:]).tolist() == [1] * got["ingest_done"].shape[0]
    for path in ("bold", "i", "j", "k", "glm/beta", "glm/sigma2", "glm/label_index", "glm/cov",
                 "glm/label_value"):
        a, b = got[path], ref[path]
        assert a.shape == b.shape and a.chunks == b.chunks and a.dtype == b.dtype, path
        np.testing.assert_array_equal(a[...], b[...], err_msg=path)
    # One file per chunk, as in the uninterrupted store: nothing duplicated, and no
    # "<key>.<uuid>.partial" debris of a chunk write killed midway (swept before
    # the store is marked complete).
    assert _files(Path(store)) == _files(Path(expected))


def _executed(cluster: RealCluster) -> dict[str, int]:
    """How many tasks of each key prefix the workers ran (from the scheduler's transition log)."""
    def count(dask_scheduler):
        from collections import Counter

        from distributed.utils import key_split

        return dict(Counter(key_split(t.key) for t in dask_scheduler.transition_log
                            if t.finish == "memory"))

    with cluster.client() as client:
        return client.run_on_scheduler(count)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """Scheduler + two workers shared by the tests that kill nothing."""
    with real_cluster(tmp_path_factory.mktemp("shared_cluster")) as running:
        yield running


# --------------------------------------------------------------------------- same results


def test_model_on_real_cluster_equals_in_process(fiac, reference, shared_cluster, tmp_path,
                                                 monkeypatch):
    assert shared_cluster.listening() == {"127.0.0.1"}
    stores = tmp_path / "stores"
    with no_local_compute():
        by_address = _fit_and_maps(_model(fiac, stores, shared_cluster.address), fiac)
    assert_same_maps(by_address, reference["maps"])
    ran = _executed(shared_cluster)
    assert {"build_gzip_index", "ingest_block", "packed_fit", "contrast_block"} <= ran.keys(), ran
    assert ran["ingest_block"] == 2 * _n_time_blocks()

    # Through DASK_SCHEDULER_ADDRESS (and the stores just made: ingestion is reused, the fit redone).
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", shared_cluster.address)
    with no_local_compute():
        model = _model(fiac, stores, None)
        by_env = _fit_and_maps(model, fiac)
    assert_same_maps(by_env, reference["maps"])
    assert _executed(shared_cluster)["packed_fit"] > ran["packed_fit"]
    for store, expected in zip(_stores(model), reference["stores"]):
        assert_same_store(store, expected)


def test_cli_ingest_runs_on_the_scheduler(fiac, reference, shared_cluster, tmp_path):
    """``daskglm ingest --scheduler ADDRESS`` (default chunks: a few blocks) runs its tasks there."""
    before = _executed(shared_cluster).get("ingest_block", 0)
    store = tmp_path / "cli.zarr"
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "daskglm", "ingest", fiac["runs"][0], str(store),
         "--mask", fiac["data"]["mask"], "--smoothing-fwhm", "5", "--scheduler", shared_cluster.address],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    group = zarr.open_group(str(store), mode="r")
    n_blocks = group["ingest_done"].shape[0]
    assert _executed(shared_cluster)["ingest_block"] - before == n_blocks
    # Other chunks than the reference's, the same rows.
    expected = zarr.open_group(reference["stores"][0], mode="r")["bold"][...]
    np.testing.assert_array_equal(group["bold"][...], expected)


# --------------------------------------------------------------------------- worker failures


class KillWhenHalfDone(threading.Thread):
    """Watch a store; SIGKILL a worker once ``fraction`` of ``total`` chunk files exist."""

    def __init__(self, cluster: RealCluster, worker: str, pattern: str, folder: str, total: int,
                 fraction: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.cluster, self.worker, self.pattern, self.folder = cluster, worker, pattern, folder
        self.total, self.fraction = total, fraction
        self.done_at_kill: int | None = None
        self.stop = threading.Event()

    def count(self) -> int:
        stores = sorted(Path(self.cluster.root).parent.glob(self.pattern))
        if not stores:
            return 0
        folder = stores[0] / self.folder
        return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0

    def run(self) -> None:
        while not self.stop.is_set():
            done = self.count()
            if done >= self.fraction * self.total:
                self.cluster.kill(self.worker)
                self.done_at_kill = done
                return
            time.sleep(0.005)


def _fit_with_a_kill(fiac, reference, cluster, folder: str, total: int):
    """Fit the first run; kill worker-0 once half of ``total`` files are in ``folder`` of its store."""
    stores = cluster.root.parent / "stores"  # where KillWhenHalfDone looks
    killer = KillWhenHalfDone(cluster, "worker-0", "stores/run1-*.zarr", folder, total)
    killer.start()
    try:
        with no_local_compute():
            model = _model(fiac, stores, cluster.address)
            maps = _fit_and_maps(model, fiac, slice(0, 1))
    finally:
        killer.stop.set()
        killer.join(timeout=30)
    assert killer.done_at_kill is not None, "the worker was never killed"
    print(f"worker-0 killed with {killer.done_at_kill} of {total} blocks written")
    # The kill landed mid-way: blocks were still to be written when the worker died.
    assert 0 < killer.done_at_kill < total, (killer.done_at_kill, total)
    assert cluster.procs["worker-0"].poll() is not None
    with cluster.client() as client:
        (survivor,) = client.scheduler_info()["workers"].values()
        assert survivor["name"] == "worker-1"
    assert_same_maps(maps, reference["run1_maps"])
    (store,) = _stores(model)
    assert_same_store(store, reference["stores"][0])


def _n_time_blocks() -> int:
    return -(-N_SCANS // CHUNKS["t_chunk"])


def _n_voxel_blocks(fiac) -> int:
    n_voxels = int((np.asarray(nib.load(fiac["data"]["mask"]).dataobj) > 0).sum())
    return -(-n_voxels // CHUNKS["v_chunk"])


def test_worker_killed_during_the_fit(fiac, reference, cluster):
    total = _n_voxel_blocks(fiac)  # one sigma2 chunk written per fit block
    assert total >= 20
    _fit_with_a_kill(fiac, reference, cluster, "glm/sigma2/c", total)


def test_worker_killed_during_ingestion(fiac, reference, cluster):
    total = _n_time_blocks()  # one ingest_done flag written per ingestion block
    assert total >= 20
    _fit_with_a_kill(fiac, reference, cluster, "ingest_done/c", total)


# --------------------------------------------------------------------------- 3: small graphs


def _submitted_bytes(collections) -> int:
    """Bytes of the graph a distributed client would send for ``client.compute(collections)``.

    The same steps as ``distributed.Client.compute``: one expression for all
    collections, finalised and optimised, serialised by distributed's protocol.
    """
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr
    from distributed.protocol.serialize import serialize, to_serialize
    from distributed.utils import nbytes

    expr = FinalizeCompute(collections_to_expr(list(collections), True)).optimize()
    header, frames = serialize(to_serialize(expr), on_error="raise")
    return sum(map(nbytes, [header, *frames]))


def _sparse_hcp_run(root: Path) -> tuple[Path, Path]:
    """A valid 91x109x91x1200 int16 .nii of 2.4 GB that occupies no disk (a sparse file)
    and an ellipsoid brain mask of ~290k voxels."""
    shape, zooms = (91, 109, 91, 1200), (2.0, 2.0, 2.0)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_zooms((*zooms, 0.72))
    header.set_xyzt_units("mm", "sec")
    run = root / "hcp_run.nii"
    with open(run, "wb") as fh:
        header.write_to(fh)
    os.truncate(run, int(header.get_data_offset()) + int(np.prod(shape)) * 2)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape[:3]], indexing="ij")
    brain = ((x - 45) / 38) ** 2 + ((y - 54) / 48) ** 2 + ((z - 42) / 36) ** 2 < 1
    mask = root / "hcp_mask.nii.gz"
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), str(mask))
    return run, mask


def test_hcp_sized_graphs_are_small(tmp_path, monkeypatch):
    """Workers read the data: the graphs of an HCP-sized run stay < 1 MB."""
    import daskglm.model
    import daskglm.store

    run, mask = _sparse_hcp_run(tmp_path)
    assert nib.load(run).shape == (91, 109, 91, 1200)
    sent: list[tuple[str, int, int]] = []

    def record(*collections, client=None, verbose=None):
        """Measure what would be submitted, run nothing, answer zeros."""
        n_tasks = len(set().union(*(c.__dask_graph__().keys() for c in collections)))
        sent.append((collections[0].__class__.__name__, n_tasks, _submitted_bytes(collections)))
        return tuple(np.zeros(c.shape, c.dtype) if isinstance(c, dask.array.Array) else None
                     for c in collections)

    monkeypatch.setattr(daskglm.store, "compute", record)
    monkeypatch.setattr(daskglm.model, "compute", record)
    design = pd.DataFrame(np.random.default_rng(0).normal(size=(1200, 13)))
    model = FirstLevelModel(mask_img=mask, smoothing_fwhm=5.0, store=tmp_path / "stores",
                            client="sync")
    with pytest.raises(StoreIncompleteError):  # nothing ran: no block is flagged
        model.fit(str(run), design_matrices=design)
    ((_, n_ingest, ingest_bytes),) = sent
    # Pretend the ingestion ran (the rows stay unwritten: nothing reads them below).
    (store,) = (tmp_path / "stores").glob("*.zarr")
    group = zarr.open_group(str(store), mode="r+")
    group["ingest_done"][:] = 1
    group.attrs["complete"] = True
    assert open_run(store)["bold"].shape[0] == 1200
    sent.clear()
    model.fit(str(run), design_matrices=design)  # reuses the store; the fit graph is recorded
    model.compute_contrast(np.eye(13)[:1], output_type="all")
    ((_, n_fit, fit_bytes), (_, n_contrast, contrast_bytes)) = sent
    sizes = {"ingest": (n_ingest, ingest_bytes), "fit": (n_fit, fit_bytes),
             "contrast": (n_contrast, contrast_bytes)}
    print(f"HCP-sized graphs submitted (tasks, bytes): {sizes}")
    # One task per block, plus the shared smoothing crop (one key for all tasks).
    assert n_ingest == -(-1200 // group.attrs["chunks"]["time"]) + 1, sizes
    for what, (_, size) in sizes.items():
        assert size < 1 * MiB, f"the {what} graph of an HCP-sized run is {size} bytes: {sizes}"
