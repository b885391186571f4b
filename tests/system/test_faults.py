"""Fault injection on a real cluster (issue 8, part 3): a worker out of memory, transient read errors.

The cluster is made of real ``dask scheduler`` / ``dask worker`` processes on
127.0.0.1 (``real_cluster`` in tests/helpers.py; test_distributed.py SIGKILLs
workers during ingestion and during the fit with the same machinery), with a
small memory limit per worker. Faults are injected from this (client) process
only: a daskglm task function is monkeypatched here with a wrapper that the
graph carries to the workers (pickled by value); a file flag created with
``O_EXCL`` makes the fault happen exactly once over the whole cluster.

- Out of memory during the fit: one fit block allocates far beyond the
  worker's limit; the nanny terminates the worker process and starts a new
  one, the scheduler reruns the lost tasks, and the maps and the store are
  identical to the in-process reference.
- A transient read error: the first read of one block of volumes raises
  ``OSError``. With ``daskglm.retries`` = 0 the ingestion fails with that
  error and leaves an incomplete store; with the default (2) the task is
  retried and the result is identical.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloudpickle
import dask
import numpy as np
import psutil
import pytest
from helpers import (
    assert_same_maps,
    assert_same_store,
    cluster_model,
    fit_and_maps,
    model_stores,
    real_cluster,
)

from daskglm.store.zarrio import StoreIncompleteError, open_run

pytestmark = pytest.mark.usefixtures("one_blas_thread")

# The task wrappers below are defined here and run on the workers, which cannot
# import this test module: pickle them (and what they use from here) by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MEMORY_LIMIT = "1GiB"
MiB = 2**20


@pytest.fixture(scope="module")
def faulty_cluster(tmp_path_factory):
    """Scheduler + two workers with a 1 GiB memory limit each (the nanny terminates at 95%)."""
    with real_cluster(tmp_path_factory.mktemp("faults"), memory_limit=MEMORY_LIMIT) as running:
        yield running


def first_time(flag: str) -> bool:
    """True for the one caller, over all processes, that creates ``flag``."""
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    return True


def worker_pids(cluster) -> dict[str, int]:
    """Worker process pid (the nanny's child) of each worker, from the scheduler."""
    with cluster.client() as client:
        pids = client.run(os.getpid)
        return {info["name"]: pids[address]
                for address, info in client.scheduler_info()["workers"].items()}


def wait_for_worker_pids(cluster, n: int, timeout: float = 90) -> dict[str, int]:
    """Block until ``n`` workers are registered; their pids."""
    cluster.wait_for_workers(n, timeout=timeout)
    return worker_pids(cluster)


# --------------------------------------------------------------------------- out of memory


def hungry(flag: str, limit: int):
    """A ``daskglm.glm.fit._packed_fit`` that, the first time over the cluster, eats memory until killed."""

    def _packed_fit(*args, **kwargs):
        import daskglm.glm.fit  # on a worker: the real module, unpatched

        if first_time(flag):
            hoard = []
            while sum(a.nbytes for a in hoard) < 4 * limit:  # the nanny acts at 95% of the limit
                hoard.append(np.ones(32 * MiB // 8))  # pages touched: resident memory
                time.sleep(0.01)
            time.sleep(120)  # not killed? the test's timeout says so
        return daskglm.glm.fit._packed_fit(*args, **kwargs)

    return _packed_fit


def test_worker_out_of_memory_during_the_fit_is_restarted(cluster_fiac, cluster_reference,
                                                          faulty_cluster, tmp_path, monkeypatch):
    from dask.utils import parse_bytes

    import daskglm.glm.fit

    fiac, cluster = cluster_fiac, faulty_cluster
    before = wait_for_worker_pids(cluster, 2)
    nannies = {name: cluster.procs[name].pid for name in before}
    flag = tmp_path / "oom-once"
    monkeypatch.setattr(daskglm.glm.fit, "_packed_fit", hungry(str(flag), parse_bytes(MEMORY_LIMIT)))
    model = cluster_model(fiac, tmp_path / "stores", cluster.address)
    started = time.monotonic()
    maps = fit_and_maps(model, fiac, slice(0, 1))
    print(f"fit with one worker out of memory: {time.monotonic() - started:.1f} s")

    assert flag.exists(), "no fit block ran the memory hog"
    with cluster.client() as client:
        restarts = client.get_events("worker-restart-memory")
    assert len(restarts) == 1, restarts
    ((_, event),) = restarts
    assert event["rss"] > 0.95 * parse_bytes(MEMORY_LIMIT)
    after = wait_for_worker_pids(cluster, 2)
    restarted = [name for name in before if after[name] != before[name]]
    assert len(restarted) == 1, (before, after)
    (name,) = restarted
    assert event["pid"] == before[name] and not psutil.pid_exists(before[name])
    # Restarted by its nanny: the same nanny process, a new worker process under it.
    assert cluster.procs[name].poll() is None and cluster.procs[name].pid == nannies[name]
    assert after[name] in [p.pid for p in cluster.processes(name)]
    assert "exceeded 95% memory budget" in (cluster.root / f"{name}.log").read_text(errors="replace")
    # Complete and identical.
    assert_same_maps(maps, cluster_reference["run1_maps"])
    (store,) = model_stores(model)
    assert_same_store(store, cluster_reference["stores"][0])


# --------------------------------------------------------------------------- transient read errors


def flaky_reads(flag: str, attempts: str, block_start: int):
    """A ``daskglm.store.ingest._ingest_block`` whose read of volume ``block_start`` fails the first time."""

    def _ingest_block(*args, **kwargs):
        import daskglm.store.ingest  # on a worker: the real module (one thread per worker: safe to patch)

        real = daskglm.store.ingest.read_volumes

        def read_volumes(path, start, stop, *more, **options):
            if start == block_start:
                with open(attempts, "a") as fh:
                    fh.write(f"{os.getpid()}\n")
                if first_time(flag):
                    raise OSError(f"simulated transient read error of {Path(path).name} "
                                  f"(volumes {start}:{stop}): 503 Slow Down")
            return real(path, start, stop, *more, **options)

        daskglm.store.ingest.read_volumes = read_volumes
        try:
            return daskglm.store.ingest._ingest_block(*args, **kwargs)
        finally:
            daskglm.store.ingest.read_volumes = real

    return _ingest_block


def test_transient_read_errors_are_retried(cluster_fiac, cluster_reference, faulty_cluster,
                                           tmp_path, monkeypatch):
    import daskglm.store.ingest

    fiac, cluster = cluster_fiac, faulty_cluster
    stores = tmp_path / "stores"
    block_start = 8  # the third block of volumes (t_chunk 4)

    # Without retries the error surfaces, named, and the store is left incomplete.
    flag, attempts = tmp_path / "fail-once-a", tmp_path / "attempts-a"
    monkeypatch.setattr(daskglm.store.ingest, "_ingest_block", flaky_reads(str(flag), str(attempts), block_start))
    model = cluster_model(fiac, stores, cluster.address)
    with dask.config.set({"daskglm.retries": 0}):
        with pytest.raises(OSError, match=r"transient read error of run1.nii.gz \(volumes 8:12\)"):
            fit_and_maps(model, fiac, slice(0, 1))
    assert attempts.read_text().count("\n") == 1
    (store,) = stores.glob("*.zarr")
    with pytest.raises(StoreIncompleteError):
        open_run(store)

    # With the default retries the same fault costs one retry: the ingestion resumes
    # the incomplete store, and the maps and the store are the reference's.
    flag, attempts = tmp_path / "fail-once-b", tmp_path / "attempts-b"
    monkeypatch.setattr(daskglm.store.ingest, "_ingest_block", flaky_reads(str(flag), str(attempts), block_start))
    assert dask.config.get("daskglm.retries", None) is None  # the default: 2
    model = cluster_model(fiac, stores, cluster.address)
    maps = fit_and_maps(model, fiac, slice(0, 1))
    assert flag.exists() and attempts.read_text().count("\n") == 2  # failed, then retried
    assert_same_maps(maps, cluster_reference["run1_maps"])
    assert_same_store(store, cluster_reference["stores"][0])


def test_retries_are_read_from_dask_config():
    from daskglm.runtime.cluster import DEFAULT_RETRIES, task_retries

    assert task_retries() == DEFAULT_RETRIES == 2
    with dask.config.set({"daskglm.retries": 5}):
        assert task_retries() == 5
    for bad in (-1, 1.5, "many", True):
        with dask.config.set({"daskglm.retries": bad}):
            with pytest.raises(ValueError, match=rf"'daskglm.retries' must be a non-negative integer; got {bad!r}"):
                task_retries()
