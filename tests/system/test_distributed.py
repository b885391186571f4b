"""daskglm on a real multi-process Dask cluster (issue 5, parts 1-3; issue 8, part 3).

The cluster is made of the real console scripts: ``dask scheduler`` and two
``dask worker`` processes (one thread each, a memory limit), talking TCP on
127.0.0.1 on random ports, each started in its own process group and killed
as a group at teardown. Nothing here uses another network address.

- The two-run model ingested and fitted through ``client=<address>`` and
  through ``DASK_SCHEDULER_ADDRESS`` gives the in-process results, with its
  fits held in memory (contrasts in the client, in numpy) and kept lazy
  (contrasts on the cluster); and the client process runs no dask task itself
  (dask's local schedulers are booby-trapped).
- A worker SIGKILLed once about half of a fit's (or an ingestion's) blocks are
  written: the work completes on the remaining worker, the maps are identical
  to an uninterrupted run, and the store holds exactly the reference data.
- The graphs of an HCP-sized run (91x109x91x1200 int16, a sparse file) stay
  small: workers read the data themselves.
"""

from __future__ import annotations

import os
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
import pytest
import zarr
from helpers import (
    CHUNKS,
    N_SCANS,
    RealCluster,
    assert_same_maps,
    assert_same_store,
    no_local_compute,  # dask's local schedulers raise inside
    real_cluster,
)
from helpers import cluster_model as _model
from helpers import executed_tasks as _executed
from helpers import fit_and_maps as _fit_and_maps
from helpers import model_stores as _stores

from daskglm.models.first_level import FirstLevelModel
from daskglm.store.zarrio import StoreIncompleteError, open_run

# The cluster is in tests/helpers.py, the runs and the reference results in tests/system/conftest.py
# (shared with test_faults.py).
pytestmark = pytest.mark.usefixtures("one_blas_thread")

MiB = 2**20


# --------------------------------------------------------------------------- a real cluster


@pytest.fixture
def cluster(tmp_path):
    """A fresh scheduler + two workers (fresh, since the failure tests kill one)."""
    with real_cluster(tmp_path / "cluster") as running:
        yield running


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """Scheduler + two workers shared by the tests that kill nothing."""
    with real_cluster(tmp_path_factory.mktemp("shared_cluster")) as running:
        yield running


# --------------------------------------------------------------------------- data and runs


@pytest.fixture(scope="module")
def fiac(cluster_fiac):
    """Two FIAC-shaped runs, designs and mask (conftest.py)."""
    return cluster_fiac


@pytest.fixture(scope="module")
def reference(cluster_reference):
    """The in-process maps and stores of the two-run model and of run 1 alone (conftest.py)."""
    return cluster_reference


# --------------------------------------------------------------------------- same results


def test_model_on_real_cluster_equals_in_process(fiac, reference, shared_cluster, tmp_path,
                                                 monkeypatch):
    assert shared_cluster.listening() == {"127.0.0.1"}
    stores = tmp_path / "stores"
    before = _executed(shared_cluster)
    with no_local_compute():
        by_address = _fit_and_maps(_model(fiac, stores, shared_cluster.address), fiac)
    assert_same_maps(by_address, reference["maps"])
    ran = _executed(shared_cluster)
    ran = {key: n - before.get(key, 0) for key, n in ran.items() if n > before.get(key, 0)}
    # the fit of a column and its write into the fit group: one task (packed_fit fused into it)
    assert {"ingest_block", "write_fit_block"} <= ran.keys(), ran
    assert "contrast_block" not in ran, ran  # small fits: held in memory, contrasts in numpy here
    # two .nii.gz runs on two workers: no seek index, each run read through by one task (indexes_pay)
    assert "build_gzip_index" not in ran and ran["ingest_block"] == 2, ran

    # Through DASK_SCHEDULER_ADDRESS (and the stores just made: ingestion and the fits of the
    # same design are reused), with the fits kept lazy: the contrasts run on the cluster.
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", shared_cluster.address)
    before = _executed(shared_cluster)
    with no_local_compute(), dask.config.set({"daskglm.fit-memory-bytes": 0}):
        model = _model(fiac, stores, None)
        by_env = _fit_and_maps(model, fiac)
    assert_same_maps(by_env, reference["maps"])
    after = _executed(shared_cluster)
    assert after["write_fit_block"] == before["write_fit_block"]
    assert after.get("ingest_block") == before.get("ingest_block")
    assert after.get("contrast_block", 0) > before.get("contrast_block", 0)
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
        folder = next(stores[0].glob(self.folder), None)  # a model's fit group is glm-<fit key>
        return sum(1 for _ in folder.iterdir()) if folder is not None and folder.is_dir() else 0

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
    _fit_with_a_kill(fiac, reference, cluster, "glm-*/sigma2/c", total)


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
    import daskglm.glm.fitstore
    import daskglm.models.first_level
    import daskglm.store.ingest
    import daskglm.store.zarrio

    run, mask = _sparse_hcp_run(tmp_path)
    assert nib.load(run).shape == (91, 109, 91, 1200)
    sent: list[tuple[str, int, int]] = []

    def record(*collections, client=None, verbose=None, release_heap=False):
        """Measure what would be submitted, run nothing, answer zeros."""
        n_tasks = len(set().union(*(c.__dask_graph__().keys() for c in collections)))
        sent.append((collections[0].__class__.__name__, n_tasks, _submitted_bytes(collections)))
        return tuple(np.zeros(c.shape, c.dtype) if isinstance(c, dask.array.Array) else None
                     for c in collections)

    monkeypatch.setattr(daskglm.store.ingest, "compute", record)
    monkeypatch.setattr(daskglm.glm.fitstore, "compute", record)
    monkeypatch.setattr(daskglm.models.first_level, "compute", record)
    design = pd.DataFrame(np.random.default_rng(0).normal(size=(1200, 13)))
    model = FirstLevelModel(mask_img=mask, smoothing_fwhm=5.0, store=tmp_path / "stores",
                            client="sync")
    with pytest.raises(StoreIncompleteError):  # nothing ran: no block is flagged
        model.fit(str(run), design_matrices=design)
    ((_, n_ingest, ingest_bytes),) = sent
    # Pretend the ingestion ran (the rows stay unwritten: nothing reads them below, and the
    # check of the missing chunks against the integrity record a real ingestion writes is off).
    (store,) = (tmp_path / "stores").glob("*.zarr")
    group = zarr.open_group(str(store), mode="r+")
    group["ingest_done"][:] = 1
    group.attrs["complete"] = True
    monkeypatch.setattr(daskglm.store.zarrio, "verify_store",
                        lambda store, group, *args: {n: group[n][:] for n in "ijk"})
    monkeypatch.setattr(daskglm.glm.fitstore, "check_chunks", lambda *args: None)  # the fit's, likewise
    assert open_run(store)["bold"].shape[0] == 1200
    sent.clear()
    model.fit(str(run), design_matrices=design)  # reuses the store; the fit graph is recorded
    # The fit (290k voxels x 13 regressors: 35 MB) is held in memory: a contrast submits nothing.
    assert isinstance(model.results_[0]["beta"].data, np.ndarray)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the betas read back are the fill value, NaN
        model.compute_contrast(np.eye(13)[:1], output_type="all")
    ((_, n_fit, fit_bytes),) = sent
    sent.clear()
    with dask.config.set({"daskglm.fit-memory-bytes": 0}):  # kept lazy: in large chunks
        model.fit(str(run), design_matrices=design)  # the same design: its stored fit is reused
        model.compute_contrast(np.eye(13)[:1], output_type="all")
    ((_, n_contrast, contrast_bytes),) = sent
    sizes = {"ingest": (n_ingest, ingest_bytes), "fit": (n_fit, fit_bytes),
             "contrast": (n_contrast, contrast_bytes)}
    print(f"HCP-sized graphs submitted (tasks, bytes): {sizes}")
    assert n_contrast <= 16, sizes  # a handful of tasks, not a few per fit block
    # One task per block, plus the shared smoothing crop (one key for all tasks).
    assert n_ingest == -(-1200 // group.attrs["chunks"]["time"]) + 1, sizes
    for what, (_, size) in sizes.items():
        assert size < 1 * MiB, f"the {what} graph of an HCP-sized run is {size} bytes: {sizes}"
