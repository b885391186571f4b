"""A cluster lost in the middle of a fit: no hang, no traceback (daskglm.runtime.cluster.compute).

Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1 (``real_cluster``
in tests/helpers.py), one single-threaded worker. The worker is started with a
preload module (``distributed.worker.preload``, from the environment) that
makes the first fit block of the cluster sleep after creating a flag file: the
test kills a process once that file exists, so the kill lands mid-fit.

- Every worker of an external cluster SIGKILLed mid-fit: with
  ``daskglm.no-workers-timeout`` = 3 s the fit raises ``NoWorkersError``
  (naming the scheduler) within seconds, with and without the progress bar;
  before, it waited forever.
- The scheduler SIGKILLed mid-fit under ``daskglm fit --scheduler ADDRESS``:
  exit status 1 and one ``daskglm: error:`` line naming the scheduler, no
  traceback; before, a traceback.
- ``daskglm.no-workers-timeout`` parsed and validated.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import dask
import numpy as np
import pandas as pd
import pytest
from helpers import real_cluster

from daskglm.runtime.cluster import (
    ClusterLostError,
    NoWorkersError,
    SchedulerLostError,
    _scheduler_config,
    compute,
    no_workers_timeout,
)

#: Bound on a test's wait for the fit to end once its cluster is gone (a hang fails the test).
GIVE_UP = 30.0

#: Worker preload: the first fit block over the cluster (flag created with O_EXCL) signals and sleeps.
PRELOAD = '''
import os, time
import daskglm.glm.fit as fit

_real = fit._packed_fit
FLAG = os.environ["DASKGLM_TEST_SLOW_FLAG"]


def _packed_fit(*args, **kwargs):
    try:
        os.close(os.open(FLAG, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        pass
    else:
        time.sleep(float(os.environ.get("DASKGLM_TEST_SLOW_SECONDS", "20")))
    return _real(*args, **kwargs)


fit._packed_fit = _packed_fit
'''


@pytest.fixture(scope="module")
def tiny(fiac_data):
    """One small simulated run (16x18x10 voxels, 40 scans), its design matrix and mask."""
    data = fiac_data(shape=(16, 18, 10), n_scans=40)
    return {"run": data["func1"], "mask": data["mask"], "design_file": data["design_matrix1"],
            "design": pd.DataFrame(np.load(data["design_matrix1"])["X"])}


@contextlib.contextmanager
def slow_real_cluster(root: Path, env: dict | None = None):
    """Scheduler + one worker whose first fit block sleeps (``flag`` appears when it starts)."""
    import daskglm.glm.fit

    assert callable(daskglm.glm.fit._packed_fit), "the preload slows daskglm.glm.fit._packed_fit"
    root.mkdir(parents=True, exist_ok=True)
    preload = root / "slow_first_fit_block.py"
    preload.write_text(PRELOAD)
    flag = root / "fit-block-started"
    env = {"DASK_DISTRIBUTED__WORKER__PRELOAD": repr([str(preload)]),
           "DASKGLM_TEST_SLOW_FLAG": str(flag), "DASKGLM_TEST_SLOW_SECONDS": "20", **(env or {})}
    with real_cluster(root / "cluster", n_workers=1, env=env) as running:
        running.flag = flag
        yield running


@pytest.fixture
def slow_cluster(tmp_path):
    with slow_real_cluster(tmp_path / "slow") as running:
        yield running


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = GIVE_UP) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended before the fit started: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no fit block started in {timeout} s")
        time.sleep(0.05)


# --------------------------------------------------------------------------- every worker gone


def fit_in_thread(model, tiny, outcome: dict) -> threading.Thread:
    """``model.fit`` of the tiny run in a thread: its error and end time go to ``outcome``."""

    def fit() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(tiny["run"], design_matrices=tiny["design"])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    fitting = threading.Thread(target=fit, daemon=True)
    fitting.start()
    return fitting


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [0, 1], ids=["quiet", "progress-bar"])
def test_all_workers_killed_mid_fit_raise_no_workers_error(tiny, slow_cluster, tmp_path, verbose, capsys):
    from daskglm.models.first_level import FirstLevelModel

    cluster = slow_cluster
    model = FirstLevelModel(mask_img=tiny["mask"], smoothing_fwhm=4.0, store=tmp_path / "stores",
                            client=cluster.address, t_chunk=8, v_chunk=256, verbose=verbose)
    outcome: dict = {}
    with dask.config.set({"daskglm.no-workers-timeout": "3s"}):
        fitting = fit_in_thread(model, tiny, outcome)
        wait_for(cluster.flag)
        cluster.kill("worker-0")  # SIGKILL, nanny and worker: no worker left
        killed = time.monotonic()
        fitting.join(GIVE_UP)
    assert not fitting.is_alive(), f"the fit still waits {GIVE_UP} s after its last worker was killed"
    error = outcome.get("error")
    assert isinstance(error, NoWorkersError), repr(error)
    assert isinstance(error, ClusterLostError) and isinstance(error, RuntimeError)
    message = str(error)
    assert cluster.address in message and error.address == cluster.address
    assert "no workers" in message and "gone for" in message and "daskglm.no-workers-timeout" in message
    assert error.timeout == 3.0
    assert 3.0 <= outcome["at"] - killed <= 3.0 + 10.0
    # Nothing of the cancelled fit is left on the scheduler.
    with cluster.client() as client:
        deadline = time.monotonic() + 10
        while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0
    if verbose:  # the progress ended with a line saying so: the error starts a line of its own
        out = capsys.readouterr().out
        assert "fitting the run: stopped after" in out and out.endswith("\n"), out


@pytest.mark.slow
def test_the_schedulers_own_no_workers_timeout_is_no_workers_error_too(tiny, tmp_path):
    """A scheduler started with distributed's ``no-workers-timeout`` (the embedded cluster's is
    given daskglm's) fails the tasks itself: the same NoWorkersError."""
    from daskglm.models.first_level import FirstLevelModel

    env = {"DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": "2s"}
    with slow_real_cluster(tmp_path / "slow", env) as cluster:
        model = FirstLevelModel(mask_img=tiny["mask"], smoothing_fwhm=4.0, store=tmp_path / "stores",
                                client=cluster.address, t_chunk=8, v_chunk=256)
        outcome: dict = {}
        with dask.config.set({"daskglm.no-workers-timeout": "60s"}):  # the scheduler's comes first
            fitting = fit_in_thread(model, tiny, outcome)
            wait_for(cluster.flag)
            cluster.kill("worker-0")
            killed = time.monotonic()
            fitting.join(GIVE_UP)
        assert not fitting.is_alive(), f"the fit still waits {GIVE_UP} s after its last worker was killed"
    error = outcome.get("error")
    assert isinstance(error, NoWorkersError), repr(error)
    assert cluster.address in str(error) and "no workers" in str(error)
    assert error.timeout == 2.0 and outcome["at"] - killed < 10.0


# --------------------------------------------------------------------------- the scheduler gone


@pytest.mark.slow
def test_scheduler_killed_mid_fit_is_one_error_line_from_the_cli(tiny, slow_cluster, tmp_path):
    cluster = slow_cluster
    env = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "DASKGLM_DEBUG")}
    command = [sys.executable, "-m", "daskglm", "fit", tiny["run"], "--design-matrix", tiny["design_file"],
               "--mask", tiny["mask"], "--contrast", "a=-1,-1,1,1" + ",0" * 9, "--out", tmp_path / "out",
               "--store", tmp_path / "stores", "--t-chunk", "8", "--v-chunk", "256",
               "--scheduler", cluster.address]
    proc = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        wait_for(cluster.flag, proc)
        cluster.kill("scheduler")
        try:
            out, err = proc.communicate(timeout=GIVE_UP)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daskglm fit still runs {GIVE_UP} s after its scheduler was killed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        cluster.kill("worker-0")  # still in its sleeping fit block
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("daskglm: error:")]
    assert len(errors) == 1 and errors == [line for line in lines if not line.startswith("daskglm: warning:")], err
    assert cluster.address in errors[0] and "scheduler" in errors[0]


@pytest.mark.slow
def test_scheduler_lost_is_raised_from_python(slow_cluster):
    """The same, from Python, on any graph: SchedulerLostError naming the scheduler."""
    cluster = slow_cluster
    outcome: dict = {}

    def run() -> None:
        try:
            compute(dask.delayed(time.sleep)(60), client=cluster.address)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    running = threading.Thread(target=run, daemon=True)
    running.start()
    with cluster.client() as client:
        deadline = time.monotonic() + GIVE_UP
        while not any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
    cluster.kill("scheduler")
    running.join(GIVE_UP)
    cluster.kill("worker-0")
    assert not running.is_alive()
    error = outcome.get("error")
    assert isinstance(error, SchedulerLostError), repr(error)
    assert cluster.address in str(error) and error.address == cluster.address


# --------------------------------------------------------------------------- the setting


@pytest.mark.parametrize("value, seconds", [(None, None), ("60s", 60.0), ("5 minutes", 300.0), (7, 7.0),
                                            (0.5, 0.5), ("250ms", 0.25)])
def test_no_workers_timeout_is_parsed(value, seconds):
    with dask.config.set({"daskglm.no-workers-timeout": value}):
        assert no_workers_timeout() == seconds


def test_no_workers_timeout_default_is_a_minute():
    assert dask.config.get("daskglm.no-workers-timeout", None) is None  # not set: daskglm's default
    assert no_workers_timeout() == 60.0


@pytest.mark.parametrize("value", ["soon", "-5s", 0, -1, float("nan"), float("inf"), True, [3], "3 parsecs"])
def test_no_workers_timeout_is_validated(value):
    with dask.config.set({"daskglm.no-workers-timeout": value}):
        with pytest.raises(ValueError, match=r"'daskglm.no-workers-timeout' must be a positive duration.*got"):
            no_workers_timeout()
        # Checked by every computation, before anything runs.
        with pytest.raises(ValueError, match=r"'daskglm.no-workers-timeout'"):
            compute(dask.delayed(int)(1), client="sync")


def test_embedded_scheduler_gets_the_timeout_unless_set():
    assert _scheduler_config()["distributed.scheduler.no-workers-timeout"] == 60.0
    with dask.config.set({"daskglm.no-workers-timeout": "2 minutes"}):
        assert _scheduler_config()["distributed.scheduler.no-workers-timeout"] == 120.0
    with dask.config.set({"distributed.scheduler.no-workers-timeout": "10s"}):
        assert "distributed.scheduler.no-workers-timeout" not in _scheduler_config()
    with dask.config.set({"daskglm.no-workers-timeout": None}):
        assert "distributed.scheduler.no-workers-timeout" not in _scheduler_config()


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("error", ["cancelled", "killed-worker", "no-worker", "scheduler-lost"])
def test_cli_reports_cluster_errors_as_one_line(error, tmp_path, monkeypatch, capsys):
    """Dask's own errors about the cluster, wherever they come from, are one line too (exit status 1)."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from distributed.scheduler import NoWorkerError

    cli = importlib.import_module("daskglm.cli.main")  # the package's `main` attribute is the function
    raised = {"cancelled": FutureCancelledError("fit-123", "scheduler-connection-lost",
                                                "Client lost the connection to the scheduler.\nRe-run."),
              "killed-worker": KilledWorker("fit-123", SimpleNamespace(address="tcp://127.0.0.1:1234"),
                                            allowed_failures=3),
              "no-worker": NoWorkerError("fit-123", 60),
              "scheduler-lost": SchedulerLostError("the Dask scheduler at tcp://127.0.0.1:1 is gone: ...",
                                                   "tcp://127.0.0.1:1")}[error]

    def convert(args):
        raise raised

    monkeypatch.setattr(cli, "_convert", convert)
    run = tmp_path / "run.nii.gz"
    run.write_bytes(b"")
    assert cli.main(["convert", str(run), str(tmp_path / "store.zarr")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("daskglm: error: "), err
    assert "Traceback" not in err
    assert ("tcp://127.0.0.1:1" if error == "scheduler-lost" else "fit-123") in err


@pytest.mark.slow
def test_all_workers_killed_mid_batch_raise_no_workers_error(slow_cluster, tmp_path, bids_data):
    """run_batch on an external cluster (one subject per task) waits for its subjects as compute
    waits for its tasks: the last worker killed mid-subject is NoWorkersError, not a hang."""
    from daskglm.bids.batch import run_batch

    bids = bids_data(n_subjects=2, n_runs=1, task="language", shape=(16, 18, 10), n_scans=40)
    outcome: dict = {}

    def batch() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run_batch(bids.root, "language", "DStDSp - SStSSp", tmp_path / "out",
                          derivatives_folder="derivatives/fmriprep", client=slow_cluster.address, verbose=0,
                          figures=False, store=tmp_path / "stores", smoothing_fwhm=4.0)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    with dask.config.set({"daskglm.no-workers-timeout": "3s"}):
        running = threading.Thread(target=batch, daemon=True)
        running.start()
        wait_for(slow_cluster.flag)
        slow_cluster.kill("worker-0")
        killed = time.monotonic()
        running.join(GIVE_UP)
    assert not running.is_alive(), f"the batch still waits {GIVE_UP} s after its last worker was killed"
    error = outcome.get("error")
    assert isinstance(error, NoWorkersError) and slow_cluster.address in str(error), repr(error)
    assert 3.0 <= outcome["at"] - killed <= 3.0 + 10.0


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_line_within_the_connect_timeout(tiny, tmp_path):
    """`daskglm fit --scheduler` at an address nobody listens on: one error line naming the address and
    the setting, after daskglm.connect-timeout (5 s), before any work (it took distributed's 30 s)."""
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    design = tmp_path / "design.tsv"
    tiny["design"].to_csv(design, sep="\t", index=False)
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    try:  # 20 s: the 5 s connect timeout and the command's start, not distributed's 30 s
        proc = subprocess.run([sys.executable, "-m", "daskglm", "fit", str(tiny["run"]), "--design-matrix",
                               str(design), "--mask", str(tiny["mask"]), "--contrast", "c=1" + ",0" * 12, "--out",
                               str(tmp_path / "out"), "--store", str(tmp_path / "stores"), "--scheduler", address],
                              capture_output=True, text=True, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"daskglm fit still waits for {address} after 20 s: daskglm.connect-timeout (5 s) not applied")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("daskglm: error:"), proc.stderr
    assert address in lines[0] and "daskglm.connect-timeout" in lines[0], lines[0]
    assert not (tmp_path / "stores").exists() and not list((tmp_path / "out").glob("*.nii.gz"))


def test_connect_timeout_is_validated():
    from daskglm.runtime.cluster import connect_timeout

    assert connect_timeout() == 5.0
    with dask.config.set({"daskglm.connect-timeout": None}):
        assert connect_timeout() is None
    with dask.config.set({"daskglm.connect-timeout": "soon"}), pytest.raises(
            ValueError, match="'daskglm.connect-timeout' must be a positive duration"):
        connect_timeout()
