"""Where daskglm's graphs run: one way to get a Dask client.

Resolution order of :func:`get_client`:

1. a :class:`distributed.Client` given explicitly;
2. a dask *local* scheduler name (``"threads"``, ``"sync"``, ``"processes"``),
   given or already set in ``dask.config`` (e.g. by an outer ``get_client``):
   no distributed client, dask's own scheduler (tests, debugging);
3. a scheduler address given explicitly (``"tcp://127.0.0.1:8786"``), or the
   path of a scheduler file written by ``dask scheduler --scheduler-file``;
4. the active client (``Client.current()``, e.g. made in a notebook);
5. ``DASK_SCHEDULER_ADDRESS`` from the environment;
6. an embedded :class:`distributed.LocalCluster` of single-threaded worker
   processes, one per core available to this process, closed when the work
   is done; for small data (``work_bytes`` below the dask config
   ``daskglm.threads-below``, 512 MiB) one worker with a thread per core in
   this process instead.

The embedded cluster's worker processes never import the user's ``__main__``
(see :mod:`daskglm.runtime.compat`): a script without an ``if __name__ ==
"__main__":`` guard, as nilearn's examples are written, runs on worker
processes as it does on threads, its top-level code once.

A client that :func:`get_client` created is closed on exit; one it found is
left alone.

Every computation of daskglm goes through :func:`compute`, so with a
distributed client (given, active, or from the environment) nothing runs on
dask's local threaded scheduler behind the user's back: graphs are submitted
with ``client.compute`` and only their (small) results come back.

Retries: on a distributed client every task of :func:`compute` is retried up
to :func:`task_retries` times (dask config key ``daskglm.retries``, default
2; ``DASK_DASKGLM__RETRIES`` in the environment) when it raises, so a
transient read error from object storage costs a retry, not the run. Every
daskglm task may run twice: each one rewrites whole chunks of its own. (A
worker that dies, e.g. killed by its nanny for exceeding its memory limit,
is a different matter: the scheduler reruns its tasks elsewhere, up to
``distributed.scheduler.allowed-failures`` times.) dask's local schedulers
(``"sync"``, ``"threads"``, ``"processes"``) have no retries: there an error
is raised at once.

A scheduler that cannot be reached (an address or scheduler file given) is
reported within the dask config ``daskglm.connect-timeout`` (default ``"5s"``;
``DASK_DASKGLM__CONNECT_TIMEOUT``; ``None``: distributed's 30 s), naming it.

A cluster lost mid-computation: :func:`compute` never waits forever.

- No workers: if the cluster has had no worker for longer than the dask config
  key ``daskglm.no-workers-timeout`` (default ``"60s"``; a number of seconds or
  a duration such as ``"5 minutes"``; ``None`` waits for workers forever;
  ``DASK_DASKGLM__NO_WORKERS_TIMEOUT`` in the environment), the computation's
  futures are cancelled and :class:`NoWorkersError` is raised, naming the
  scheduler's address. The client watches the scheduler's worker count while
  it waits (one small request every 1 to 5 s, only for computations that last
  that long), which works for any scheduler, also one started by someone else
  (distributed's own ``distributed.scheduler.no-workers-timeout`` acts only in
  schedulers that read it when they start); the embedded cluster's scheduler
  also gets that setting (unless the user gave one). Raise the timeout, or set
  it to ``None``, for clusters whose workers may sit in a batch queue (e.g.
  dask-jobqueue's adaptive Slurm clusters).
- The scheduler stopped, or the connection to it lost: :class:`SchedulerLostError`,
  naming the scheduler's address, as soon as the client notices (a closed
  connection at once; a scheduler that stops answering after the same timeout).

Both are :class:`ClusterLostError`, a :class:`RuntimeError`. The command line
prints them as one ``daskglm: error: ...`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np

from .compat import workers_skip_main

__all__ = ["LOCAL_SCHEDULERS", "ClusterLostError", "NoWorkersError", "SchedulerLostError", "compute",
           "connect_timeout", "get_client", "n_workers_from_n_jobs", "no_workers_timeout", "task_retries",
           "verbosity", "wait_first", "workers_in_this_process"]

LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", "single-threaded", "processes")


def _active_client() -> Any | None:
    from distributed import Client

    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


#: dask's default ``MALLOC_TRIM_THRESHOLD_`` for worker processes.
_DASK_MALLOC_TRIM = 65536
#: glibc malloc settings of the embedded cluster's workers. With dask's default
#: (trim at 64 KiB, which also freezes glibc's mmap threshold at 128 KiB)
#: every block-sized temporary is a fresh mmap that is page-faulted in and
#: zeroed again: the fit kernel ran 1.5x and ingestion 1.2x slower
#: (BENCHMARKS.md). Here heap memory up to one task's working set is kept for
#: the next task, and allocations up to 32 MiB (glibc's maximum) come from it.
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(128 * 2**20), "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}


def _worker_environ() -> dict:
    """dask's pre-spawn environment of worker processes with :data:`WORKER_MALLOC_ENV`.

    A trim threshold the user chose (in dask's config or in the environment;
    anything but dask's default and ours) is left alone, with their mmap
    threshold if any.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    ours = {_DASK_MALLOC_TRIM, int(WORKER_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"])}
    for where in (environ, os.environ):
        value = where.get("MALLOC_TRIM_THRESHOLD_")
        if value is not None and int(value) not in ours:
            return {**environ, **{k: where[k] for k in WORKER_MALLOC_ENV if where.get(k) is not None}}
    return {**environ, **WORKER_MALLOC_ENV}


@contextlib.contextmanager
def _worker_malloc() -> Iterator[None]:
    """Workers started inside the block get :func:`_worker_environ`'s malloc settings.

    The nanny gives values already in ``os.environ`` precedence over dask's
    config (and writes its own there when it spawns a worker), so both are
    set for the block and ``os.environ`` is restored after it.
    """
    environ = _worker_environ()
    saved = {k: os.environ.get(k) for k in WORKER_MALLOC_ENV}
    try:
        for key in WORKER_MALLOC_ENV:
            if environ.get(key) is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = str(environ[key])
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


#: distributed's default ``distributed.scheduler.worker-saturation``.
_DASK_SATURATION = 1.1
#: The embedded cluster scheduler's ``worker-saturation``: root tasks (an
#: ingestion block, a fit column) sent to a worker per thread before it asks
#: for more. dask's 1.1 gives a 1-thread worker two slots; each fit column is a
#: fused task plus the alias dask's fusion leaves under the output's name, and
#: with two slots the worker ran out of queued columns after every alias and
#: waited a scheduler round trip (1.0 s of a 1-worker ``hcp`` fit's 8.7 s;
#: 0.2 s with 3, BENCHMARKS.md). Queued tasks hold no data: their inputs are
#: read when they run.
WORKER_SATURATION = 3.0


def _scheduler_config() -> dict:
    """dask config for the embedded cluster's scheduler: :data:`WORKER_SATURATION`, unless
    the user configured a worker saturation of their own; and distributed's
    ``distributed.scheduler.no-workers-timeout`` from :func:`no_workers_timeout`
    (its tasks fail when no worker is left, also those not run by :func:`compute`),
    unless the user configured one."""
    config = {}
    value = dask.config.get("distributed.scheduler.worker-saturation", _DASK_SATURATION)
    if value in (_DASK_SATURATION, "1.1"):
        config["distributed.scheduler.worker-saturation"] = WORKER_SATURATION
    timeout = no_workers_timeout()
    if timeout is not None and dask.config.get("distributed.scheduler.no-workers-timeout", None) is None:
        config["distributed.scheduler.no-workers-timeout"] = timeout
    return config


#: dask config key: runs smaller than this (bytes of data, uncompressed) are
#: processed by an embedded cluster of threads in this process.
THREADS_BELOW_KEY = "daskglm.threads-below"
#: Default of :data:`THREADS_BELOW_KEY`. A FIAC-sized pair of runs (94 MB) is
#: done in a few seconds, of which worker processes would add several more
#: (spawning, importing daskglm, numba and zarr in each, shipping tasks);
#: HCP-sized runs (2 GB each) are worth processes: no GIL between the blocks.
DEFAULT_THREADS_BELOW = 512 * 2**20


def threads_below() -> int:
    """:data:`THREADS_BELOW_KEY` from dask's config (bytes; 0: always worker processes)."""
    value = dask.config.get(THREADS_BELOW_KEY, DEFAULT_THREADS_BELOW)
    try:
        number = dask.utils.parse_bytes(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not number >= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"dask config {THREADS_BELOW_KEY!r} must be a non-negative number of bytes "
                         f"(or a string such as '512 MiB'); got {value!r}") from None
    return int(number)


def _local_cluster_kwargs(n_workers: int | None, memory_limit: str | int | None,
                          work_bytes: int | None = None) -> dict:
    """``LocalCluster`` arguments: worker processes, or threads in this process for small work.

    Threads are used when ``work_bytes`` (the size of the data to process) is
    known and below :func:`threads_below`, and no ``memory_limit`` is asked
    for (a limit is enforced per worker process); ``n_workers`` is then the
    number of threads.
    """
    from dask.system import (
        CPU_COUNT,  # cores this process may use (affinity, cgroup quota)
    )

    if n_workers is not None and (not isinstance(n_workers, int) or isinstance(n_workers, bool)
                                  or n_workers < 1):
        raise ValueError(f"n_workers must be a positive integer or None; got {n_workers!r}")
    workers = n_workers or max(1, CPU_COUNT)
    if work_bytes is not None and memory_limit is None and work_bytes < threads_below():
        return {"n_workers": 1, "threads_per_worker": workers, "processes": False,
                "memory_limit": "auto", "dashboard_address": "127.0.0.1:0"}
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        # "auto": the memory available to this process, shared between the workers.
        "memory_limit": memory_limit if memory_limit is not None else "auto",
        "dashboard_address": "127.0.0.1:0",  # None still binds :8787; a free loopback port never clashes
    }


def n_workers_from_n_jobs(n_jobs: int) -> int:
    """The embedded cluster's number of workers for a joblib/nilearn-style ``n_jobs``.

    Parameters
    ----------
    n_jobs : int
        Positive: that many workers. Negative: counted back from the cores
        available to this process (affinity, cgroup quota), as joblib does:
        -1 all of them, -2 all but one, ...; at least one worker.

    Returns
    -------
    int
        A positive number of workers, for :func:`get_client`'s ``n_workers``.

    Raises
    ------
    ValueError
        ``n_jobs`` is 0 or not an integer (the message names the value).
    """
    from dask.system import CPU_COUNT

    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise ValueError(f"n_jobs must be a non-zero integer (positive: that many workers; "
                         f"-1: one per core, -2: all cores but one...); got {n_jobs!r}")
    n_jobs = int(n_jobs)
    if n_jobs > 0:
        return n_jobs
    return max(1, max(1, CPU_COUNT) + 1 + n_jobs)


def _looks_like_address(text: str) -> bool:
    return "://" in text or ":" in text


def _connect(target: str, origin: str) -> Any:
    """A new client of the scheduler at ``target`` (an address or a scheduler file)."""
    from distributed import Client

    is_file = not _looks_like_address(target) and os.path.isfile(target)
    if not is_file and not _looks_like_address(target):
        raise ValueError(
            f"{origin} {target!r} is neither a scheduler address like 'tcp://127.0.0.1:8786', "
            f"nor an existing scheduler file, nor one of {LOCAL_SCHEDULERS}"
        )
    timeout = connect_timeout()
    options = {"set_as_default": False, **({"timeout": timeout} if timeout is not None else {})}
    try:
        if is_file:
            return Client(scheduler_file=target, **options)
        return Client(target, **options)
    except (OSError, TimeoutError) as exc:
        within = f" within {timeout:g} s (dask config {CONNECT_TIMEOUT_KEY!r})" if timeout is not None else ""
        raise OSError(f"cannot connect to the Dask scheduler at {target!r} ({origin}){within}: {exc}") from exc


@contextlib.contextmanager
def get_client(
    client: Any = None,
    n_workers: int | None = None,
    memory_limit: str | int | None = None,
    work_bytes: int | None = None,
) -> Iterator[Any]:
    """Context manager yielding the client to run on (or ``None`` for a local scheduler).

    Parameters
    ----------
    client : distributed.Client, str or None
        A client; a local scheduler name (see :data:`LOCAL_SCHEDULERS`); a
        scheduler address or scheduler-file path; or ``None`` to use the
        active client, ``DASK_SCHEDULER_ADDRESS``, or an embedded
        ``LocalCluster`` in turn.
    n_workers : int, optional
        Workers of an embedded ``LocalCluster`` (default: one per core
        available to this process, one thread each); from a nilearn-style
        ``n_jobs``, :func:`n_workers_from_n_jobs`.
    memory_limit : str or int, optional
        Memory limit per worker of an embedded ``LocalCluster`` (``"4GiB"``,
        bytes, or ``"auto"``: the available memory split between the workers).
    work_bytes : int, optional
        Size of the data the embedded cluster will process (uncompressed
        bytes of the runs). Below the dask config ``daskglm.threads-below``
        (default 512 MiB) and without ``memory_limit``, the embedded cluster
        is one worker of ``n_workers`` threads in this process instead of
        worker processes: small analyses do not pay for starting processes.

    Yields
    ------
    distributed.Client or None
        ``None`` means "run on dask's local scheduler named by ``client``".
        A client found or made here is also the current client inside the
        block (``Client.current()``).

    Raises
    ------
    TypeError
        ``client`` of another type.
    ValueError
        A string that is neither a local scheduler name, an address nor a file.
    OSError
        The scheduler cannot be reached (the message names the address and
        where it came from).
    """
    from distributed import Client, LocalCluster

    if isinstance(client, Client):
        yield client
        return
    if isinstance(client, str) and client in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=client):
            yield None
        return
    if client is not None and not isinstance(client, (str, os.PathLike)):
        raise TypeError(
            f"client must be a distributed.Client, a scheduler address, one of "
            f"{LOCAL_SCHEDULERS} or None; got {type(client).__name__}: {client!r}"
        )
    target, origin = (os.fspath(client), "client") if client is not None else (None, "")
    if target is None and dask.config.get("scheduler", None) in LOCAL_SCHEDULERS:
        # Inside an outer get_client("threads") (or dask.config.set(scheduler=...)):
        # the caller chose a local scheduler; honour it.
        yield None
        return
    if target is None:
        active = _active_client()
        if active is not None:
            yield active
            return
        target = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        origin = "DASK_SCHEDULER_ADDRESS"
    if target is not None:
        remote = _connect(target, origin)
        try:
            with remote.as_current():
                yield remote
        finally:
            _close_client(remote)
        return
    kwargs = _local_cluster_kwargs(n_workers, memory_limit, work_bytes)
    with contextlib.ExitStack() as stack:
        if not kwargs["processes"]:
            # Threads of this process: one BLAS thread each, so threads x BLAS threads = cores
            # (worker processes get the same from dask's OPENBLAS/OMP/MKL_NUM_THREADS=1).
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        else:
            # For the cluster's whole life: the nannies also spawn the workers they restart.
            stack.enter_context(workers_skip_main())
        stack.enter_context(_worker_malloc())
        with dask.config.set(_scheduler_config()):  # read once, when the scheduler starts
            cluster = stack.enter_context(LocalCluster(**kwargs))
        local = stack.enter_context(Client(cluster, set_as_default=False))
        with local.as_current():
            yield local


_VERBOSE: contextvars.ContextVar[int] = contextvars.ContextVar("daskglm_verbose", default=0)


@contextlib.contextmanager
def verbosity(level: int | None):
    """Set the default ``verbose`` of :func:`compute` inside the block.

    Models set it from their ``verbose`` parameter around their work, so every
    computation they run shows (or hides) its progress bar.

    Parameters
    ----------
    level : int or None
        0: silent; 1 or more: progress bars for computations lasting longer
        than about a second. ``None`` leaves the current level.
    """
    if level is None:
        yield
        return
    if not isinstance(level, (int, np.integer)) or level < 0:  # a bool is 0 or 1, as nilearn reads it
        raise ValueError(f"verbose must be a non-negative integer or a bool; got {level!r}")
    token = _VERBOSE.set(int(level))
    try:
        yield
    finally:
        _VERBOSE.reset(token)


def _in_notebook_with_widgets() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None or not hasattr(shell, "kernel"):
            return False
        import ipywidgets  # noqa: F401  (dask's notebook bar needs it)
    except Exception:
        return False
    return True


#: Seconds a computation runs before its progress bar appears.
PROGRESS_AFTER = 1.0


#: Retries of a failed task on a distributed client when ``daskglm.retries`` is not set.
DEFAULT_RETRIES = 2


def task_retries() -> int:
    """How many times a task that raised is retried on a distributed client.

    The dask config key ``daskglm.retries`` (``dask.config.set({"daskglm.retries": 5})``,
    or ``DASK_DASKGLM__RETRIES=5`` in the environment), default :data:`DEFAULT_RETRIES`.

    Raises
    ------
    ValueError
        The configured value is not a non-negative integer.
    """
    value = dask.config.get("daskglm.retries", DEFAULT_RETRIES)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"dask config 'daskglm.retries' must be a non-negative integer; got {value!r}")
    return int(value)


# ------------------------------------------------------------------ a cluster lost mid-computation


class ClusterLostError(RuntimeError):
    """The Dask cluster of a computation went away before it was done: all its workers, or its scheduler.

    Attributes
    ----------
    address : str or None
        The scheduler's address.
    """

    def __init__(self, message: str, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class NoWorkersError(ClusterLostError):
    """The cluster has had no worker for longer than :func:`no_workers_timeout` during a computation.

    Attributes
    ----------
    address : str or None
        The scheduler's address.
    timeout : float or None
        The ``daskglm.no-workers-timeout`` that ran out (seconds).
    """

    def __init__(self, message: str, address: str | None = None, timeout: float | None = None) -> None:
        super().__init__(message, address)
        self.timeout = timeout


class SchedulerLostError(ClusterLostError):
    """The connection to the scheduler was lost during a computation (it stopped, or the network failed)."""


#: dask config key: how long a computation waits while the cluster has no worker.
NO_WORKERS_TIMEOUT_KEY = "daskglm.no-workers-timeout"
#: Default of :data:`NO_WORKERS_TIMEOUT_KEY`: a nanny restarting a worker takes seconds; a minute
#: without any worker means they are gone.
DEFAULT_NO_WORKERS_TIMEOUT = "60s"
#: Bounds of the period (seconds) at which a waiting computation looks at the cluster: a tenth of
#: the timeout, between these.
WATCH_PERIOD = (1.0, 5.0)


def _config_duration(key: str, default: Any, none_means: str) -> float | None:
    """A dask config duration in seconds (``None`` kept), validated with a message naming ``key``."""
    value = dask.config.get(key, default)
    if value is None:
        return None
    seconds = math.nan
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError, KeyError, AttributeError, OverflowError):
            seconds = float(dask.utils.parse_timedelta(value, default="s"))
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"dask config {key!r} must be a positive duration: seconds, or a "
                         f"string such as '60s' or '5 minutes' (None: {none_means}); got {value!r}")
    return seconds


def no_workers_timeout() -> float | None:
    """How long (seconds) :func:`compute` waits for results while the cluster has no worker.

    The dask config key ``daskglm.no-workers-timeout``
    (``dask.config.set({"daskglm.no-workers-timeout": "5 minutes"})``, or
    ``DASK_DASKGLM__NO_WORKERS_TIMEOUT=300`` in the environment): a number of
    seconds or a duration string that :func:`dask.utils.parse_timedelta`
    reads; default :data:`DEFAULT_NO_WORKERS_TIMEOUT`. ``None`` waits forever.

    Raises
    ------
    ValueError
        The configured value is not a positive, finite duration nor ``None``.
    """
    return _config_duration(NO_WORKERS_TIMEOUT_KEY, DEFAULT_NO_WORKERS_TIMEOUT, "wait for workers forever")


#: The dask config key of how long connecting to a scheduler may take.
CONNECT_TIMEOUT_KEY = "daskglm.connect-timeout"
#: Default of :data:`CONNECT_TIMEOUT_KEY` (distributed's own is 30 s).
DEFAULT_CONNECT_TIMEOUT = "5s"


def connect_timeout() -> float | None:
    """How long (seconds) connecting to a scheduler given by address or file may take before
    :func:`get_client` reports it unreachable.

    The dask config key ``daskglm.connect-timeout`` (``DASK_DASKGLM__CONNECT_TIMEOUT``),
    default :data:`DEFAULT_CONNECT_TIMEOUT`; ``None``: distributed's
    ``distributed.comm.timeouts.connect`` (30 s).

    Raises
    ------
    ValueError
        The configured value is not a positive, finite duration nor ``None``.
    """
    return _config_duration(CONNECT_TIMEOUT_KEY, DEFAULT_CONNECT_TIMEOUT, "distributed's connect timeout")


def _address(client: Any) -> str:
    return getattr(getattr(client, "scheduler", None), "address", None) or repr(client)


def _seconds(value: float) -> str:
    return f"{value:.3g} s"


def _no_workers(address: str, timeout: float | None, since: float | None = None) -> NoWorkersError:
    gone = _seconds(time.monotonic() - since) if since is not None else _seconds(timeout or 0)
    limit = f"{NO_WORKERS_TIMEOUT_KEY} = {_seconds(timeout)}" if timeout is not None else NO_WORKERS_TIMEOUT_KEY
    return NoWorkersError(
        f"the Dask cluster at {address} has no workers: all of them have been gone for {gone} "
        f"(dask config {limit}), so the computation was cancelled. Start workers for this scheduler, "
        f"or find out why they died (their logs, memory limits), and run again; raise "
        f"{NO_WORKERS_TIMEOUT_KEY!r} (DASK_DASKGLM__NO_WORKERS_TIMEOUT in the environment) to wait "
        f"longer for workers.", address, timeout)


def _scheduler_lost(address: str, what: str = "lost the connection to it") -> SchedulerLostError:
    return SchedulerLostError(
        f"the Dask scheduler at {address} is gone: {what} in the middle of a computation (the scheduler "
        f"stopped, or the network failed), so the computation is lost. Restart the scheduler and its "
        f"workers (or check the network) and run again.", address)


def _connection_lost(client: Any, exc: BaseException) -> bool:
    """Whether ``exc`` (raised while waiting for ``client``'s futures) means the scheduler is gone."""
    from concurrent.futures import CancelledError

    from distributed.comm import CommClosedError

    if getattr(client, "status", "running") != "running":
        return True
    if isinstance(exc, CancelledError):
        reasons = {getattr(exc, "reason", None)}
        reasons |= {getattr(group, "reason", None) for group in getattr(exc, "error_groups", ())}
        return "scheduler-connection-lost" in reasons
    return isinstance(exc, CommClosedError)


class _QuietClose(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _close_client(client: Any) -> None:
    """Close a client that :func:`get_client` connected.

    One whose scheduler is gone is closed without distributed's log lines
    (the traceback of its reconnection attempt, cancelled by the close): the
    error that ended the work has said what happened.
    """
    if client.status == "running":
        client.close()
        return
    log, quiet = logging.getLogger("distributed.client"), _QuietClose()
    log.addFilter(quiet)
    try:
        with contextlib.suppress(Exception):
            client.close(timeout=10)
    finally:
        log.removeFilter(quiet)


class _Progress:
    """dask's text progress bar, drawn from the client's event loop while this thread waits.

    distributed's ``progress`` blocks its caller until the work is done: a
    cluster lost mid-way would freeze it. Here the bar runs as a task of the
    client's loop and is stopped from this thread, whatever happens.
    """

    def __init__(self, client: Any, futures: list, address: str) -> None:
        from distributed.diagnostics.progressbar import TextProgressBar

        self.bar = TextProgressBar(futures, scheduler=address, start=False, loop=client.loop)
        self.stopped = threading.Event()
        self.failed = False
        self.task = asyncio.run_coroutine_threadsafe(self._run(), client.loop.asyncio_loop)

    async def _run(self) -> None:
        ended = False
        try:
            await self.bar.listen()  # returns once the work is done (the bar erased) or the scheduler gone
            ended = True
        finally:
            comm = getattr(self.bar, "comm", None)
            if comm is not None and not comm.closed():
                comm.abort()
            if not ended and hasattr(self.bar, "_last_response"):  # stopped while drawn
                with contextlib.suppress(ValueError, OSError):
                    if self.failed:
                        sys.stdout.write("\n")  # the bar stays as it was, the error goes below it
                        sys.stdout.flush()
                    else:
                        self.bar._draw_stop()
            self.stopped.set()

    def stop(self, done: bool) -> None:
        """End the bar: once it has drawn its end if the work is ``done`` (briefly), at once if not."""
        self.failed = not done
        if done:
            self.stopped.wait(0.5)  # the scheduler reports the end within the bar's 100 ms interval
        if not self.stopped.is_set():
            self.task.cancel()
            self.stopped.wait(1.0)


def _show_progress(client: Any, futures: list, address: str) -> _Progress | None:
    if _in_notebook_with_widgets():
        from distributed import progress

        progress(futures, notebook=True, scheduler=address)  # a widget: does not block
        return None
    return _Progress(client, futures, address)


def _count_workers(client: Any, timeout: float) -> int | None:
    """The scheduler's number of workers (one small request); ``None`` if it does not answer."""
    try:
        info = client.sync(client.scheduler.identity, n_workers=0, callback_timeout=timeout)
    except (OSError, TimeoutError):
        return None
    except TypeError:  # a scheduler older than identity(n_workers=...)
        try:
            info = client.sync(client.scheduler.identity, callback_timeout=timeout)
        except (OSError, TimeoutError):
            return None
    return int(info["n_workers"]) if "n_workers" in info else len(info.get("workers", ()))


def _wait(client: Any, futures: list, address: str, timeout: float | None, level: int,
          return_when: str = "ALL_COMPLETED") -> Any:
    """Wait until ``futures`` are done (or one of them: ``return_when="FIRST_COMPLETED"``) and
    return distributed's ``(done, not_done)``; :class:`ClusterLostError` if the cluster goes away first.

    The first wait is :data:`PROGRESS_AFTER` (the progress bar appears after
    it, when ``level`` > 0), then the cluster is looked at every
    :data:`WATCH_PERIOD` (a tenth of ``timeout``, between its bounds): its
    number of workers, one small request. A computation done sooner costs one
    wait, nothing else.
    """
    from distributed import TimeoutError as WaitTimeout
    from distributed import wait

    period = min(max((timeout or 0) / 10, WATCH_PERIOD[0]), WATCH_PERIOD[1])
    bar = None
    empty_since = silent_since = None
    done = False
    try:
        while True:
            try:
                with client.as_current():  # distributed's wait uses the current client
                    result = wait(futures, timeout=PROGRESS_AFTER if level > 0 else period,
                                  return_when=return_when)
                done = True
                return result
            except WaitTimeout:
                pass
            if level > 0:
                bar = _show_progress(client, futures, address)
                level = 0  # shown once (a notebook's widget is not stopped here: None)
            if client.status != "running":
                raise _scheduler_lost(address)
            if timeout is None:
                continue
            now = time.monotonic()
            count = _count_workers(client, min(timeout, 10.0))
            if count is None:
                silent_since = silent_since or now
                if now - silent_since > timeout:
                    raise _scheduler_lost(address, f"it has not answered for {_seconds(now - silent_since)}")
                continue
            silent_since = None
            if count > 0:
                empty_since = None
            elif empty_since is None:
                empty_since = now
            elif now - empty_since > timeout:
                raise _no_workers(address, timeout, empty_since)
    finally:
        if bar is not None:
            bar.stop(done)


def workers_in_this_process(client: Any = None) -> bool:
    """Whether the tasks of ``client`` (resolved as :func:`compute` does) run in this process:
    a local scheduler, or a cluster whose every worker is a thread of this process (what an
    in-process filesystem such as fsspec's ``memory://`` needs).
    """
    with get_client(client) as resolved:
        if resolved is None:
            return True
        return set(resolved.run(os.getpid).values()) <= {os.getpid()}


def wait_first(client: Any, futures: list) -> set:
    """The futures of ``futures`` done so far, waiting for one at least, on a distributed client.

    As :func:`compute` waits: if the cluster has had no worker for longer than
    :func:`no_workers_timeout`, or its scheduler is gone, :class:`ClusterLostError`
    (the futures are left to the caller to cancel).

    Parameters
    ----------
    client : distributed.Client
    futures : list of distributed.Future

    Returns
    -------
    set of distributed.Future
    """
    done, _ = _wait(client, futures, _address(client), no_workers_timeout(), 0, "FIRST_COMPLETED")
    return set(done)


def _cancel(client: Any, futures: list) -> None:
    """Cancel ``futures`` on the scheduler, if it is still connected (best effort)."""
    if client.status == "running":
        with contextlib.suppress(Exception):
            client.cancel(futures)


def compute(*collections: Any, client: Any = None, verbose: int | None = None) -> tuple:
    """Compute dask collections on ``client`` (resolved by :func:`get_client`).

    With a distributed client the graph is submitted with ``client.compute``
    (never ``dask.compute``, whose scheduler is whatever ``dask.config`` says),
    each task retried up to :func:`task_retries` times if it raises, and the
    results are gathered. Local schedulers do not retry.

    A cluster lost on the way never makes it wait forever: with no worker for
    longer than the dask config ``daskglm.no-workers-timeout`` (default
    ``"60s"``, see :func:`no_workers_timeout`) the work is cancelled and
    :class:`NoWorkersError` raised; a scheduler gone (stopped, or the
    connection lost) raises :class:`SchedulerLostError`. Both name the
    scheduler's address. On any error (and on Ctrl-C) the computation's
    futures are cancelled.

    Parameters
    ----------
    *collections
        Dask collections or ``dask.delayed`` objects.
    client : see :func:`get_client`
    verbose : int, optional
        > 0: dask's progress bar for the scheduler in use (distributed's
        text bar in a terminal, or its widget in a notebook with ipywidgets;
        ``dask.diagnostics.ProgressBar`` on local schedulers), shown once the
        work has lasted :data:`PROGRESS_AFTER` seconds. Default: the level set
        by :func:`verbosity` (0 outside of it).

    Returns
    -------
    tuple
        The computed values, in order.

    Raises
    ------
    NoWorkersError
        The cluster had no worker for longer than ``daskglm.no-workers-timeout``.
    SchedulerLostError
        The scheduler went away (or stopped answering for that long).
    ValueError
        ``daskglm.retries`` or ``daskglm.no-workers-timeout`` is not valid.
    """
    level = _VERBOSE.get() if verbose is None else verbose
    retries = task_retries()
    timeout = no_workers_timeout()
    with get_client(client) as resolved:
        if resolved is None:
            if level > 0:
                from dask.diagnostics import ProgressBar

                with ProgressBar(minimum=PROGRESS_AFTER):
                    return dask.compute(*collections)
            return dask.compute(*collections)
        return _compute_distributed(resolved, list(collections), retries, timeout, level)


def _compute_distributed(client: Any, collections: list, retries: int, timeout: float | None,
                         level: int) -> tuple:
    from distributed.scheduler import NoWorkerError

    address = _address(client)
    if client.status != "running":
        raise _scheduler_lost(address, "the client is not connected to it")
    futures: list = []
    try:
        futures = client.compute(collections, retries=retries)
        _wait(client, futures, address, timeout, level)
        return tuple(client.gather(futures))
    except ClusterLostError:
        _cancel(client, futures)
        raise
    except NoWorkerError as exc:  # the scheduler's own distributed.scheduler.no-workers-timeout
        _cancel(client, futures)
        raise _no_workers(address, getattr(exc, "timeout", None)) from exc
    except BaseException as exc:
        if isinstance(exc, Exception) and _connection_lost(client, exc):
            raise _scheduler_lost(address) from exc
        _cancel(client, futures)
        raise
