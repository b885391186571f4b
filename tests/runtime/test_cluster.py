"""Client resolution: explicit client, local schedulers, active client, address, embedded
cluster; and no computation on a local scheduler behind a distributed client's back."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings

import dask
import dask.array
import numpy as np
import pandas as pd
import pytest
from distributed import Client
from helpers import no_local_compute

from daskglm.runtime.cluster import _local_cluster_kwargs, compute, get_client


def test_local_compute_is_detected():
    """The trap works: any local compute fails, whatever scheduler is asked for."""
    x = dask.array.ones(10, chunks=5).sum()
    with no_local_compute():
        for attempt in (x.compute, lambda: dask.compute(x, scheduler="threads"),
                        lambda: x.compute(scheduler="sync"), lambda: np.asarray(x)):
            with pytest.raises(AssertionError, match="local scheduler"):
                attempt()
    assert x.compute(scheduler="sync") == 10


@pytest.fixture(scope="module")
def tiny_fiac(fiac_data):
    data = fiac_data(shape=(16, 18, 10), n_scans=40)
    designs = [pd.DataFrame(np.load(data[f"design_matrix{r}"])["X"]) for r in (1, 2)]
    return data, designs


@pytest.mark.slow
@pytest.mark.parametrize("how", ["explicit", "active"])
def test_nothing_runs_locally_with_a_distributed_client(tiny_fiac, cluster_client, tmp_path, how):
    """Ingest, fit (AR(2): a computed KMeans pass), contrasts, voxel-wise maps, fixed
    effects with a computed mask, lazy maps: all on the cluster, none in this process."""
    from daskglm.glm.fixed_effects import compute_fixed_effects
    from daskglm.models.first_level import FirstLevelModel
    from daskglm.store.ingest import ingest_run

    data, designs = tiny_fiac
    runs = [data["func1"], data["func2"]]
    client = cluster_client if how == "explicit" else None
    current = cluster_client.as_current() if how == "active" else contextlib.nullcontext()
    with current, no_local_compute(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ingest_run(data["func1"], tmp_path / "nomask.zarr", client=client,
                        mask_img=data["mask"], smoothing_fwhm=4.0)
        assert ds["bold"].shape[0] == 40
        model = FirstLevelModel(mask_img=data["mask"], smoothing_fwhm=4.0, noise_model="ar2",
                                random_state=0, store=tmp_path / "stores", client=client,
                                minimize_memory=False)
        model.fit(runs, design_matrices=designs)
        maps = model.compute_contrast([[-1, -1, 1, 1]], output_type="all")
        assert np.isfinite(maps["z_score"].get_fdata()).all()
        assert len(model.r_square) == 2
        fixed = compute_fixed_effects([maps["effect_size"]] * 2, [maps["effect_variance"]] * 2,
                                      client=client)
        assert len(fixed) == 4
        lazy = model.contrast_dataset([[-1, -1, 1, 1]])
        (z,) = compute(lazy["z_score"].data, client=client)
    mask = np.asarray(model.mask_img_.dataobj) > 0
    np.testing.assert_allclose(z, maps["z_score"].get_fdata()[mask], rtol=1e-12)


def test_explicit_client_is_used_and_left_open(cluster_client):
    with get_client(cluster_client) as client:
        assert client is cluster_client
    assert cluster_client.status == "running"
    assert compute(dask.delayed(sum)([1, 2, 3]), client=cluster_client) == (6,)


def test_local_scheduler_names_give_no_client():
    with get_client("sync") as client:
        assert client is None
        assert dask.config.get("scheduler") == "sync"


def test_active_client_is_found(cluster_client):
    with cluster_client.as_current():
        with get_client() as client:
            assert client is cluster_client


def test_address_and_environment_variable(cluster_client, monkeypatch):
    address = cluster_client.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    with get_client(address) as client:
        assert isinstance(client, Client) and client.scheduler.address == address
        assert client is not cluster_client
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with get_client() as client:
        assert client.scheduler.address == address
        workers = client.run(lambda: 1)
        assert len(workers) == 2


def test_embedded_local_cluster_is_created_and_closed(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with get_client(n_workers=1, memory_limit="1GiB") as client:
        info = client.scheduler_info()
        assert len(info["workers"]) == 1
        (worker,) = info["workers"].values()
        assert worker["memory_limit"] == 2**30
        assert worker["nthreads"] == 1
    assert client.status == "closed"


def _malloc_environ() -> dict:
    import os

    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")}


@pytest.mark.slow
def test_embedded_cluster_workers_keep_freed_memory_for_the_next_task(monkeypatch):
    """Workers of the embedded cluster start with daskglm's malloc settings, not dask's 64 KiB trim,
    and one malloc arena (each of a worker's threads would otherwise keep freed memory of its own)."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with get_client(None, n_workers=1) as client:
        (seen,) = client.run(_malloc_environ).values()
    assert seen == {"MALLOC_TRIM_THRESHOLD_": str(128 * 2**20), "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                    "MALLOC_ARENA_MAX": "1"}


@pytest.mark.slow
def test_user_malloc_setting_is_left_alone(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 12345}):
        with get_client(None, n_workers=1) as client:
            (seen,) = client.run(_malloc_environ).values()
    assert seen["MALLOC_TRIM_THRESHOLD_"] == "12345" and seen["MALLOC_MMAP_THRESHOLD_"] is None
    assert seen["MALLOC_ARENA_MAX"] is None


def _saturation(dask_scheduler) -> float:
    return dask_scheduler.WORKER_SATURATION


@pytest.mark.parametrize("work_bytes", [None, 1])  # worker processes; threads in this process
def test_embedded_scheduler_keeps_three_root_tasks_per_thread(monkeypatch, work_bytes):
    """The embedded cluster's scheduler sends each worker 3 root tasks per thread, so that the alias
    task after each fused fit column does not leave the worker waiting for the next column; a
    saturation the user configured is theirs."""
    from daskglm.runtime.cluster import WORKER_SATURATION

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with get_client(None, n_workers=1, work_bytes=work_bytes) as client:
        assert client.run_on_scheduler(_saturation) == WORKER_SATURATION == 3.0
    with dask.config.set({"distributed.scheduler.worker-saturation": 2.5}):
        with get_client(None, n_workers=1, work_bytes=work_bytes) as client:
            assert client.run_on_scheduler(_saturation) == 2.5
    assert dask.config.get("distributed.scheduler.worker-saturation") == 1.1  # restored


def test_bad_client_type_is_named():
    with pytest.raises(TypeError, match="client must be.*int: 42"):
        with get_client(42):
            pass


def test_scheduler_file_is_accepted(cluster_client, tmp_path):
    path = tmp_path / "scheduler.json"
    path.write_text(json.dumps({"address": cluster_client.scheduler.address}))
    with get_client(str(path)) as client:
        assert client.scheduler.address == cluster_client.scheduler.address
        assert compute(dask.delayed(sum)([1, 2]), client=client) == (3,)
    assert client.status == "closed"


@pytest.mark.slow
def test_unusable_addresses_are_named(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="client 'thread' is neither a scheduler address"):
        with get_client("thread"):  # a typo of "threads"
            pass
    with pytest.raises(ValueError, match="scheduler.json"):
        with get_client(str(tmp_path / "scheduler.json")):  # no such file
            pass
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        with pytest.raises(OSError, match=r"scheduler at 'tcp://127\.0\.0\.1:9' \(client\)"):
            with get_client("tcp://127.0.0.1:9"):
                pass
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:9")
        with pytest.raises(OSError, match="DASK_SCHEDULER_ADDRESS"):
            with get_client():
                pass


def test_embedded_cluster_is_sized_to_the_machine():
    from dask.system import CPU_COUNT

    kwargs = _local_cluster_kwargs(None, None)
    assert kwargs["n_workers"] == CPU_COUNT and kwargs["threads_per_worker"] == 1
    assert kwargs["processes"] is True and kwargs["host"] == "127.0.0.1"
    assert kwargs["memory_limit"] == "auto"
    assert _local_cluster_kwargs(3, "2GiB")["memory_limit"] == "2GiB"
    with pytest.raises(ValueError, match="n_workers.*0"):
        _local_cluster_kwargs(0, None)


def _slow(x):
    import time

    time.sleep(0.5)
    return x


@pytest.mark.slow
@pytest.mark.parametrize("where", ["threads", "distributed"])
def test_progress_bar_shows_for_long_work_and_is_switchable_off(where, capsys, cluster_client):
    import dask

    from daskglm.runtime import cluster as cluster_mod

    client = "threads" if where == "threads" else cluster_client
    work = [dask.delayed(_slow)(i) for i in range(12)]  # ~3 s on two workers
    assert compute(*work, client=client, verbose=0) == tuple(range(12))
    assert capsys.readouterr().out == ""
    work = [dask.delayed(_slow)(i) for i in range(12)]  # new keys: nothing cached
    assert compute(*work, client=client, verbose=1) == tuple(range(12))
    out = capsys.readouterr().out
    # stdout is not a terminal here: plain lines (tests/runtime/test_progress.py has the terminal's bar)
    assert "computing: done in" in out and "(12 tasks)" in out and "\r" not in out, out
    # The default comes from verbosity(); quick work shows nothing.
    with cluster_mod.verbosity(1):
        assert compute(dask.delayed(sum)([1, 2]), client=client) == (3,)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="verbose must be a non-negative integer or a bool; got -1"):
        with cluster_mod.verbosity(-1):
            pass
    with cluster_mod.verbosity(False):  # nilearn reads a bool as 0 or 1
        assert compute(dask.delayed(sum)([1, 2]), client=client) == (3,)


def test_small_work_runs_on_threads_in_this_process_and_large_on_processes():
    import dask

    from daskglm.runtime.cluster import DEFAULT_THREADS_BELOW, THREADS_BELOW_KEY

    small = _local_cluster_kwargs(None, None, work_bytes=DEFAULT_THREADS_BELOW - 1)
    assert small["processes"] is False and small["n_workers"] == 1
    large = _local_cluster_kwargs(None, None, work_bytes=DEFAULT_THREADS_BELOW)
    assert large["processes"] is True and large["threads_per_worker"] == 1
    # a memory limit is per worker process: asked for, processes it is
    assert _local_cluster_kwargs(2, "1GiB", work_bytes=10)["processes"] is True
    assert _local_cluster_kwargs(3, None, work_bytes=10)["threads_per_worker"] == 3
    with dask.config.set({THREADS_BELOW_KEY: 0}):
        assert _local_cluster_kwargs(None, None, work_bytes=10)["processes"] is True
    with dask.config.set({THREADS_BELOW_KEY: "1 GiB"}):
        assert _local_cluster_kwargs(None, None, work_bytes=2**29)["processes"] is False
    with dask.config.set({THREADS_BELOW_KEY: "lots"}), pytest.raises(ValueError, match="threads-below.*lots"):
        _local_cluster_kwargs(None, None, work_bytes=10)


def test_threaded_embedded_cluster_runs_in_this_process_with_one_blas_thread():
    import os

    from threadpoolctl import threadpool_info

    def where():
        return os.getpid(), [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    with get_client(None, n_workers=2, work_bytes=1000) as client:
        assert len(client.scheduler_info()["workers"]) == 1
        assert sum(client.nthreads().values()) == 2
        pid, blas = client.submit(where, pure=False).result()
        assert pid == os.getpid() and blas and all(n == 1 for n in blas)
    with get_client(None, n_workers=1, work_bytes=10**12) as client:
        assert client.submit(where, pure=False).result()[0] != os.getpid()


def test_n_jobs_maps_to_workers_as_joblib_counts_cores():
    from dask.system import CPU_COUNT

    from daskglm.runtime.cluster import n_workers_from_n_jobs

    assert n_workers_from_n_jobs(1) == 1 and n_workers_from_n_jobs(7) == 7
    assert n_workers_from_n_jobs(np.int64(3)) == 3
    assert n_workers_from_n_jobs(-1) == CPU_COUNT
    assert n_workers_from_n_jobs(-2) == max(1, CPU_COUNT - 1)
    assert n_workers_from_n_jobs(-CPU_COUNT - 5) == 1
    for bad in (0, 1.5, 2.0, "2", None, True):
        with pytest.raises(ValueError, match=f"n_jobs must be a non-zero integer.*got {bad!r}"):
            n_workers_from_n_jobs(bad)


def _main_of_this_process() -> tuple:
    import sys

    main = sys.modules["__main__"]
    return getattr(main, "__file__", None), getattr(getattr(main, "__spec__", None), "name", None)


def test_nanny_workers_are_spawned_without_the_main_module_only_inside_the_block():
    """multiprocessing tells a spawned child to import the parent's __main__; inside
    workers_skip_main a process named as distributed names a nanny's worker is not told."""
    import multiprocessing.spawn as spawn

    from daskglm.runtime.compat import MAIN_MODULE_KEYS, NANNY_WORKER_PROCESS_NAME, workers_skip_main

    def main_keys(name: str) -> set:
        return set(spawn.get_preparation_data(name)) & set(MAIN_MODULE_KEYS)

    assert main_keys(NANNY_WORKER_PROCESS_NAME)  # pytest's __main__ (a path or a module name)
    with workers_skip_main() as installed:
        assert installed
        assert main_keys(NANNY_WORKER_PROCESS_NAME) == set()
        assert main_keys("another process")
        with workers_skip_main():  # nested: still filtered after the inner block
            pass
        assert main_keys(NANNY_WORKER_PROCESS_NAME) == set()
    assert main_keys(NANNY_WORKER_PROCESS_NAME)  # clusters made outside daskglm: as distributed does


def test_distributed_still_names_the_nanny_worker_process_as_daskglm_expects():
    """If this fails, distributed renamed it: workers import __main__ again (as without daskglm)."""
    import inspect

    from distributed.nanny import WorkerProcess

    from daskglm.runtime.compat import NANNY_WORKER_PROCESS_NAME

    assert repr(NANNY_WORKER_PROCESS_NAME).strip("'") in inspect.getsource(WorkerProcess.start)


def _our_wrappers() -> int:
    import multiprocessing.spawn as spawn

    from daskglm.runtime import compat as _compat

    function, count = spawn.get_preparation_data, 0
    while function is not None:
        count += function is _compat._wrapper
        function = getattr(function, "__wrapped__", None)
    return count


@pytest.mark.slow
def test_filter_is_installed_once_and_stays(monkeypatch):
    """Installed by the first embedded process cluster and never twice: not by later clusters,
    nor after another library wrapped it; it stays installed after the cluster is closed, and the
    embedded cluster's workers, also one its nanny restarts, never import pytest's __main__
    (under ``python -m pytest`` multiprocessing would not import it anyway: test_unguarded.py
    runs scripts)."""
    import functools
    import multiprocessing.spawn as spawn

    from daskglm.runtime import compat as _compat

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    for attempt in range(2):
        with get_client(None, n_workers=1) as client:
            assert _compat._active == 1
            (seen,) = client.run(_main_of_this_process).values()
            assert seen == (None, None)  # python -c "from multiprocessing.spawn import spawn_main..."
            if attempt == 0:
                client.restart()
                (seen,) = client.run(_main_of_this_process).values()
                assert seen == (None, None)
        assert _compat._active == 0 and _our_wrappers() == 1
    installed = spawn.get_preparation_data
    assert _compat.install_main_filter() and spawn.get_preparation_data is installed

    @functools.wraps(installed)
    def someone_elses(*args, **kwargs):
        return installed(*args, **kwargs)

    monkeypatch.setattr(spawn, "get_preparation_data", someone_elses)
    assert _compat.main_filter_installed() and _compat.install_main_filter()
    assert spawn.get_preparation_data is someone_elses and _our_wrappers() == 1


def _count_heap_releases() -> None:
    """On a worker: wrap ``release_free_heap`` (looked up by name when a pickled reference
    arrives) with a recorder of the results the worker holds at each call."""
    from distributed import Worker

    import daskglm.runtime.compat as compat

    original = getattr(compat, "_original_release", compat.release_free_heap)
    compat._original_release = original
    compat._releases = []

    def counted() -> bool:
        (worker,) = Worker._instances  # the process's worker (``client.run`` runs outside of a task)
        compat._releases.append(len(worker.data))
        return original()

    compat.release_free_heap = counted


def _heap_releases() -> list[int]:
    import daskglm.runtime.compat as compat

    held = compat._releases
    compat.release_free_heap = compat._original_release
    return held


@pytest.mark.parametrize("release", [True, False])
def test_workers_give_their_free_heap_back_after_a_computation_when_asked(cluster_client, release):
    """``compute(release_heap=True)`` has every worker process call ``release_free_heap`` twice: once
    the result is computed and before it is gathered (the worker that computed it still holds it, so
    that this process's copy does not add to the workers' freed buffers), and after; without it none does."""
    import dask.array as da

    cluster_client.run(_count_heap_releases)
    try:
        x = da.ones((1000, 1000), chunks=250).sum()
        assert compute(x, client=cluster_client, release_heap=release) == (1e6,)
    finally:
        held = list(cluster_client.run(_heap_releases).values())
    assert [len(calls) for calls in held] == [2 * int(release)] * 2
    if release:
        assert sum(calls[0] for calls in held) >= 1  # the result, not gathered yet


#: Run in its own process: the forkserver, once started, serves every later embedded cluster of the process.
_FORKSERVER_SCRIPT = '''
import json, os, sys
from daskglm.runtime.cluster import get_client, start_worker_forkserver

def seen():
    import os, sys
    from threadpoolctl import threadpool_info
    with open("/proc/self/environ", "rb") as f:  # the environment this process image started with
        start = dict(item.split(b"=", 1) for item in f.read().split(b"\\0") if b"=" in item)
    return {"ppid": os.getppid(), "preloaded": "nilearn.plotting" in sys.modules,
            "blas": [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"],
            "arena": start.get(b"MALLOC_ARENA_MAX", b"").decode()}

out = {"pid": os.getpid()}
with get_client(None, n_workers=2, work_bytes=10**12) as client:
    out["spawned"] = list(client.run(seen).values())
out["started"] = start_worker_forkserver(["nilearn.plotting"])
with get_client(None, n_workers=2, work_bytes=10**12) as client:
    out["forked"] = list(client.run(seen).values())
print(json.dumps(out))
'''


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="reads a worker's start environment in /proc")
def test_workers_fork_from_a_preloaded_server_once_it_is_started(monkeypatch):
    """Before ``start_worker_forkserver`` the embedded cluster's workers are spawned by this process and
    import what their tasks need; after it they are forks of the server, with its preloaded modules,
    one BLAS thread and daskglm's malloc settings from their start."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    proc = subprocess.run([sys.executable, "-c", _FORKSERVER_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["started"]
    assert [w["ppid"] for w in out["spawned"]] == [out["pid"]] * 2
    assert not any(w["preloaded"] for w in out["spawned"])
    (server,) = {w["ppid"] for w in out["forked"]}
    assert server != out["pid"] and len(out["forked"]) == 2
    for worker in out["forked"]:
        assert worker["preloaded"] and worker["blas"] and all(n == 1 for n in worker["blas"])
        assert worker["arena"] == "1"
