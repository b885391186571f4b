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

Retries: on a distributed client a task that raises an error that may be
transient (see :func:`is_transient`: an ``OSError`` such as a read error or a
timeout from object storage, a lost connection, but not a missing file, a
denied permission, a full disk or a bad gzip stream) is retried up to
:func:`task_retries` times (dask config key ``daskglm.retries``, default 2;
``DASK_DASKGLM__RETRIES`` in the environment), so a transient read error costs
a retry, not the run. Every other error (a bad input: ``ValueError``,
``TypeError``, ``KeyError``, a damaged store...) runs once: it would fail
again, so it is raised at once, the rest of the computation cancelled. The
retries are the client's (``Client.retry`` of the failed results and the
failed tasks under them), not the scheduler's ``retries=``, which retries
every error. Every daskglm task may run twice: each one rewrites whole chunks
of its own. (A worker that dies, e.g. killed by its nanny for exceeding its
memory limit, is a different matter: the scheduler reruns its tasks
elsewhere, up to ``distributed.scheduler.allowed-failures`` times.) dask's
local schedulers (``"sync"``, ``"threads"``, ``"processes"``) have no
retries: there an error is raised at once.

The embedded cluster's workers do not log the "Compute Failed" report (with
its traceback) of a task that raised: the error is raised by :func:`compute`
in this process, where the caller reports it (the command line in one line).
Workers of a cluster daskglm did not start log as their owner set them up.

Progress: see :mod:`daskglm.runtime.progress` (one labelled bar per
computation in a terminal, plain lines otherwise; :func:`phase` labels them).

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

import contextlib
import contextvars
import errno
import gzip
import io
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import dask
import numpy as np

from .compat import release_free_heap, retry_futures, workers_skip_main
from .config import config_bytes, config_seconds
from .progress import (
    Display,
    DistributedProgress,
    current_phase,
    local_progress,
    phase,
    progress_after,
)

__all__ = ["LOCAL_SCHEDULERS", "ClusterLostError", "NoWorkersError", "SchedulerLostError", "compute",
           "connect_timeout", "get_client", "is_transient", "n_workers_from_n_jobs", "no_workers_timeout",
           "phase", "task_retries", "total_threads", "verbosity", "wait_first", "workers_in_this_process"]

logger = logging.getLogger(__name__)

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
#: zeroed again, which slowed the fit kernel and ingestion (BENCHMARKS.md,
#: "Figures from code comments"). Here heap memory up to one task's working set is kept for
#: the next task, and allocations up to 32 MiB (glibc's maximum) come from it.
#: One arena: a worker computes in one thread, but its event loop and comm
#: threads would each get an arena of their own (up to 8 per core), and each
#: arena keeps its own freed memory up to the trim threshold.
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(128 * 2**20), "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                     "MALLOC_ARENA_MAX": "1"}


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
    with _environ({key: environ.get(key) for key in WORKER_MALLOC_ENV}):
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield


@contextlib.contextmanager
def _environ(values: dict[str, Any]) -> Iterator[None]:
    """``os.environ`` with ``values`` inside the block (``None``: unset), as it was after it."""
    saved = {key: os.environ.get(key) for key in values}

    def put(items: dict[str, Any]) -> None:
        for key, value in items.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = str(value)

    put(values)
    try:
        yield
    finally:
        put(saved)


#: Whether this process started multiprocessing's forkserver for its embedded clusters
#: (:func:`start_worker_forkserver`).
_forkserver_started = False


def start_worker_forkserver(preload: Sequence[str]) -> bool:
    """Start multiprocessing's forkserver with ``preload`` imported; embedded clusters then fork their workers from it.

    distributed's nanny starts a worker with multiprocessing's ``spawn``
    method by default: a new interpreter that imports daskglm, nilearn,
    scikit-learn, pandas... again, 2-3 s of CPU per worker, all workers at
    once on the cores the work needs. A forkserver imports them once, in the
    background while this process goes on, and each worker is a fork of it,
    already warm (distributed's ``distributed.worker.multiprocessing-method``).

    A worker forked from the server has the server's environment, not this
    process's at the time of the fork, and C libraries (BLAS thread pools,
    glibc's malloc) that were set up with it. So this is for a process whose
    environment is settled, at its start (the ``daskglm`` command): the server
    starts with the environment daskglm's worker processes get (dask's
    ``distributed.nanny.pre-spawn-environ``: one BLAS thread; and
    :data:`WORKER_MALLOC_ENV`), and only the embedded clusters of a process
    that called this use it; others spawn their workers as before. Workers a
    nanny restarts after the cluster has started are spawned.

    Parameters
    ----------
    preload : sequence of str
        Modules the server imports (one that fails to import is skipped, as
        multiprocessing does).

    Returns
    -------
    bool
        Whether the server is running (``False`` where multiprocessing has no
        forkserver, e.g. Windows: workers are spawned).
    """
    import multiprocessing
    from multiprocessing import forkserver

    global _forkserver_started
    if _forkserver_started:
        return True
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    with _environ(_worker_environ()):
        multiprocessing.get_context("forkserver").set_forkserver_preload(list(preload))
        forkserver.ensure_running()
    _forkserver_started = True
    return True


#: distributed's default ``distributed.scheduler.worker-saturation``.
_DASK_SATURATION = 1.1
#: The embedded cluster scheduler's ``worker-saturation``: root tasks (an
#: ingestion block, a fit column) sent to a worker per thread before it asks
#: for more. dask's 1.1 gives a 1-thread worker two slots; each fit column is a
#: fused task plus the alias dask's fusion leaves under the output's name, and
#: with two slots the worker ran out of queued columns after every alias and
#: waited a scheduler round trip each time (BENCHMARKS.md, "Sixth round",
#: 213666f). Queued tasks hold no data: their inputs are
#: read when they run.
WORKER_SATURATION = 3.0


def _scheduler_config() -> dict:
    """dask config for the embedded cluster's scheduler: :data:`WORKER_SATURATION`, unless
    the user configured a worker saturation other than distributed's default 1.1 (a 1.1 the
    user set cannot be told from the default, and is replaced too); and distributed's
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
#: Default of :data:`THREADS_BELOW_KEY`. A FIAC-sized pair of runs (94 MB of
#: data) is done in a few seconds, to which worker processes would add more
#: (spawning, importing daskglm, numba and zarr in each, shipping tasks;
#: BENCHMARKS.md, "First round"); HCP-sized runs (2 GB each) are worth
#: processes: no GIL between the blocks.
DEFAULT_THREADS_BELOW = 512 * 2**20


def threads_below() -> int:
    """:data:`THREADS_BELOW_KEY` from dask's config (bytes; 0: always worker processes)."""
    return config_bytes(THREADS_BELOW_KEY, DEFAULT_THREADS_BELOW)


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
        Size of the data the embedded cluster will process (the uncompressed
        bytes ingestion reads of the runs: ``daskglm.store.read_bytes``).
        Below the dask config ``daskglm.threads-below`` (default 512 MiB)
        and without ``memory_limit``, the embedded cluster
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
        from .workerlog import QuietTaskErrors, quiet_progress_feeds

        stack.enter_context(quiet_progress_feeds())  # until the scheduler (in this process) has closed
        config = _scheduler_config()
        if kwargs["processes"] and _forkserver_started:
            config["distributed.worker.multiprocessing-method"] = "forkserver"
        with dask.config.set(config):  # read once, when the scheduler and its workers start
            cluster = stack.enter_context(LocalCluster(**kwargs))
        local = stack.enter_context(Client(cluster, set_as_default=False))
        local.register_plugin(QuietTaskErrors())  # its workers' "Compute Failed" reports: not on the user's stderr
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
        0: silent; 1 or more: the progress of computations lasting longer
        than ``daskglm.progress-after`` (1 s; see :mod:`daskglm.runtime.progress`),
        under the label of their :func:`phase`. ``None`` leaves the current level.

    Yields
    ------
    None
        Nothing: the level applies until the block ends, then the previous
        one is back.

    Raises
    ------
    ValueError
        ``level`` is neither ``None`` nor a non-negative integer (or bool).
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


#: Retries of a failed task on a distributed client when ``daskglm.retries`` is not set.
DEFAULT_RETRIES = 2


def task_retries() -> int:
    """How many times a task that raised a transient error is retried on a distributed client.

    The dask config key ``daskglm.retries`` (``dask.config.set({"daskglm.retries": 5})``,
    or ``DASK_DASKGLM__RETRIES=5`` in the environment), default :data:`DEFAULT_RETRIES`.
    Only errors :func:`is_transient` says may be transient are retried (a read
    error from object storage, a lost connection); any other error (a bad input)
    is raised the first time.

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


#: ``OSError`` subclasses that running the task again would raise again.
PERMANENT_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
    gzip.BadGzipFile, io.UnsupportedOperation,
)
#: ``errno`` values of an ``OSError`` that running the task again would raise again.
PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.EDQUOT, errno.EINVAL,
                              errno.ENOEXEC, errno.ELOOP})


def is_transient(exc: BaseException) -> bool:
    """Whether a task that raised ``exc`` may succeed if run again (then :func:`compute` retries it).

    ``OSError`` and its subclasses (``ConnectionError``, ``TimeoutError``: a read
    error or a timeout from object storage, a lost connection), except those
    that say the input or the place itself is wrong (:data:`PERMANENT_OS_ERRORS`:
    a missing file, a denied permission, a folder for a file, a bad gzip
    stream; :data:`PERMANENT_ERRNOS`: a full disk or quota, a read-only file
    system). Every other exception is a property of the input or the code and
    would be raised again: ``ValueError`` (a truncated run, a chunk failing its
    checksum), ``TypeError``, ``KeyError``, ``IndexError``, ``NotImplementedError``,
    ``EOFError``, daskglm's ``StoreDamagedError``; ``MemoryError`` too (a task
    asking for more memory than there is would ask for it again; a worker
    killed by its nanny for its memory limit is rerun by the scheduler, see
    :mod:`daskglm.runtime.cluster`).

    Parameters
    ----------
    exc : BaseException
        The error a task raised.

    Returns
    -------
    bool
        ``True`` for an ``OSError`` that is not permanent, else ``False``.
    """
    if not isinstance(exc, OSError):
        return False
    return not isinstance(exc, PERMANENT_OS_ERRORS) and getattr(exc, "errno", None) not in PERMANENT_ERRNOS


# ------------------------------------------------------------------ a cluster lost mid-computation


class ClusterLostError(RuntimeError):
    """The Dask cluster of a computation went away before it was done: all its workers, or its scheduler.

    Parameters
    ----------
    message : str
        The error message.
    address : str or None, default=None
        The scheduler's address, kept as ``address``.

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

    Parameters
    ----------
    message : str
        The error message.
    address : str or None, default=None
        The scheduler's address, kept as ``address``.
    timeout : float or None, default=None
        The ``daskglm.no-workers-timeout`` that ran out (seconds), kept as
        ``timeout``.

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
    """The connection to the scheduler was lost during a computation (it stopped, or the network failed).

    Parameters
    ----------
    message : str
        The error message.
    address : str or None, default=None
        The scheduler's address, kept as ``address``.

    Attributes
    ----------
    address : str or None
        The scheduler's address.
    """


#: dask config key: how long a computation waits while the cluster has no worker.
NO_WORKERS_TIMEOUT_KEY = "daskglm.no-workers-timeout"
#: Default of :data:`NO_WORKERS_TIMEOUT_KEY`: a nanny restarting a worker takes seconds; a minute
#: without any worker means they are gone.
DEFAULT_NO_WORKERS_TIMEOUT = "60s"
#: Bounds of the period (seconds) at which a waiting computation looks at the cluster: a tenth of
#: the timeout, between these.
WATCH_PERIOD = (1.0, 5.0)


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
    return config_seconds(NO_WORKERS_TIMEOUT_KEY, DEFAULT_NO_WORKERS_TIMEOUT, none_means="wait for workers forever")


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
    return config_seconds(CONNECT_TIMEOUT_KEY, DEFAULT_CONNECT_TIMEOUT, none_means="distributed's connect timeout")


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


class _Shown:
    """The progress of one :func:`compute` on a distributed client, shown by :meth:`show` (once the
    work has lasted :func:`~daskglm.runtime.progress.progress_after`): distributed's widget in a
    notebook with ipywidgets, else a :class:`~daskglm.runtime.progress.Display` under ``label``."""

    def __init__(self, client: Any, address: str, label: str, started: float) -> None:
        self.client, self.address, self.label, self.started = client, address, label, started
        self.progress: DistributedProgress | None = None
        self.widget = False

    def show(self, futures: list) -> None:
        if self.progress is not None or self.widget:
            return
        if _in_notebook_with_widgets():
            from distributed import progress

            progress(futures, notebook=True, scheduler=self.address)  # a widget: does not block
            self.widget = True
            return
        self.progress = DistributedProgress(self.client, futures, self.address, Display(self.label, self.started))

    def retried(self, futures: list) -> None:
        """Some of ``futures`` were retried: listen to the scheduler again (it ended at the error)."""
        if self.progress is not None:
            self.progress.restart(futures)

    def stop(self, outcome: str) -> None:
        """``"done"``, ``"failed"`` or ``"stopped"`` (a notebook's widget ends by itself)."""
        if self.progress is not None:
            self.progress.stop(outcome)


class _Settled:
    """Set once every one of ``futures`` is done, or as soon as one of them has failed or was cancelled.

    Fed by the futures' done callbacks (distributed's ``wait`` has no
    "first exception"): a computation that fails is reported (or retried) when
    its first error comes, not after everything else has run.
    """

    def __init__(self, futures: list) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._left = len(futures)
        if not futures:
            self._event.set()
        for future in futures:
            future.add_done_callback(self._one)

    def _one(self, future: Any) -> None:
        with self._lock:
            self._left -= 1
            if self._left <= 0 or future.status != "finished":
                self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


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


def _wait(client: Any, futures: list, address: str, timeout: float | None, show: Any = None,
          return_when: str = "ALL_COMPLETED", after: float = 0.0) -> tuple[set, set]:
    """Wait until ``futures`` are done (or one of them: ``return_when="FIRST_COMPLETED"``) and
    return ``(done, not_done)``; :class:`ClusterLostError` if the cluster goes away first.

    Waiting for all of them, it returns as soon as one has failed (its error
    is in ``done``); a cancelled future raises distributed's
    ``FuturesCancelledError``, as distributed's ``wait`` does.

    ``show``: called once when the work has lasted ``after`` seconds (at once
    for 0): its progress appears. Then the cluster is looked at every
    :data:`WATCH_PERIOD` (a tenth of ``timeout``, between its bounds): its
    number of workers, one small request. A computation done sooner costs one
    wait, nothing else.
    """
    from distributed import TimeoutError as WaitTimeout
    from distributed import futures_of, wait

    futures = futures_of(futures)
    period = min(max((timeout or 0) / 10, WATCH_PERIOD[0]), WATCH_PERIOD[1])
    if return_when == "ALL_COMPLETED":
        settle = _Settled(futures).wait
    else:
        def settle(seconds: float) -> bool:
            try:
                with client.as_current():  # distributed's wait uses the current client
                    wait(futures, timeout=seconds, return_when=return_when)
            except WaitTimeout:
                return False
            return True
    if show is not None and after <= 0:
        show()
        show = None
    empty_since = silent_since = None
    first = after if show is not None else period
    while not settle(first):
        first = period
        if show is not None:
            show()
            show = None  # shown once
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
    cancelled = [future for future in futures if future.status == "cancelled"]
    if cancelled:
        with client.as_current():
            wait(cancelled)  # raises FuturesCancelledError, with the reason (e.g. the connection lost)
    done = {future for future in futures if future.status != "pending"}
    return done, {future for future in futures if future not in done}


def workers_in_this_process(client: Any = None) -> bool:
    """Whether the tasks of ``client`` (resolved as :func:`compute` does) run in this process:
    a local scheduler, or a cluster whose every worker is a thread of this process (what an
    in-process filesystem such as fsspec's ``memory://`` needs).
    """
    with get_client(client) as resolved:
        if resolved is None:
            return True
        return set(resolved.run(os.getpid).values()) <= {os.getpid()}


def total_threads(client: Any = None) -> int:
    """How many tasks ``client`` (as :func:`compute` takes it) runs at once, without starting anything.

    A distributed client: its workers' threads (at least 1). A local scheduler:
    1 for ``"sync"``, else the cores. ``None``: the active client's, or the
    local scheduler dask is set to, or the embedded cluster's (one thread or
    worker per core).
    """
    from dask.system import CPU_COUNT
    from distributed import Client

    if client is None:
        client = _active_client() or dask.config.get("scheduler", None)
    if isinstance(client, Client):
        return max(1, sum(client.nthreads().values()))
    if client in ("sync", "synchronous", "single-threaded"):
        return 1
    return max(1, CPU_COUNT)


def wait_first(client: Any, futures: list) -> set:
    """The futures of ``futures`` done so far, waiting for one at least, on a distributed client.

    As :func:`compute` waits: if the cluster has had no worker for longer than
    :func:`no_workers_timeout`, or its scheduler is gone, :class:`ClusterLostError`
    (the futures are left to the caller to cancel).

    Parameters
    ----------
    client : distributed.Client
        The client the futures belong to (a connected, distributed one).
    futures : list of distributed.Future
        The futures to wait for.

    Returns
    -------
    set of distributed.Future
        Those of ``futures`` no longer pending (finished or erred): one at
        least. A cancelled one raises distributed's ``FuturesCancelledError``.
    """
    done, _ = _wait(client, futures, _address(client), no_workers_timeout(), None, "FIRST_COMPLETED")
    return set(done)


def _cancel(client: Any, futures: list) -> None:
    """Cancel ``futures`` on the scheduler, if it is still connected (best effort)."""
    if client.status == "running":
        with contextlib.suppress(Exception):
            client.cancel(futures)


def compute(*collections: Any, client: Any = None, verbose: int | None = None,
            release_heap: bool = False) -> tuple:
    """Compute dask collections on ``client`` (resolved by :func:`get_client`).

    With a distributed client the graph is submitted with ``client.compute``
    (never ``dask.compute``, whose scheduler is whatever ``dask.config`` says)
    and the results are gathered. A task that raises an error that may be
    transient (:func:`is_transient`: an ``OSError`` such as a read error from
    object storage) is retried, with the tasks that failed under it, up to
    :func:`task_retries` times (``daskglm.retries``, default 2), while the rest
    of the work goes on. Any other error (a bad input, a damaged store) is
    raised as soon as it happens, the task run once: the rest of the
    computation is cancelled. Local schedulers do not retry.

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
    client : distributed.Client, str or None, optional
        Where the graph runs, resolved by :func:`get_client`: a client, a local
        scheduler name (:data:`LOCAL_SCHEDULERS`), a scheduler address or
        scheduler-file path, or ``None`` for the active client,
        ``DASK_SCHEDULER_ADDRESS`` or an embedded ``LocalCluster``.
    verbose : int, optional
        > 0: the computation's progress, once it has lasted
        :func:`~daskglm.runtime.progress.progress_after` seconds (dask config
        ``daskglm.progress-after``, default 1), labelled with the innermost
        :func:`phase`: a bar in a terminal, plain lines when stdout is not one
        (a file, a pipe), distributed's widget in a notebook with ipywidgets
        (see :mod:`daskglm.runtime.progress`). Default: the level set by
        :func:`verbosity` (0 outside of it).
    release_heap : bool, default=False
        When a distributed computation has finished, every worker gives its
        free heap back to the system (:func:`daskglm.runtime.compat.release_free_heap`)
        before the results are gathered, and again once they have been: for a
        large computation (a fit) whose buffers the workers would otherwise keep
        (up to ``MALLOC_TRIM_THRESHOLD_`` each on the embedded cluster) while
        this process gathers the results and goes on with them. Local
        schedulers: nothing.

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
        ``daskglm.retries``, ``daskglm.no-workers-timeout`` or
        ``daskglm.progress-after`` is not valid.
    """
    level = _VERBOSE.get() if verbose is None else verbose
    retries = task_retries()
    timeout = no_workers_timeout()
    after = progress_after() if level > 0 else 0.0
    label = current_phase()
    with get_client(client) as resolved:
        if resolved is None:
            if level <= 0:
                return dask.compute(*collections)
            bar = local_progress(label, after)
            try:
                with bar:
                    return dask.compute(*collections)
            finally:
                bar.close("stopped")  # interrupted before dask's own end of the computation (else a no-op)
        trim = partial(_release_heap, resolved) if release_heap else None
        values = _compute_distributed(resolved, list(collections), retries, timeout, level, label, after, trim)
        if trim is not None:  # the results' buffers, released with their futures
            trim()
        return values


def _release_heap(client: Any) -> None:
    """Every worker of ``client`` gives its free heap back (one that cannot, gone or not glibc, keeps it)."""
    client.run(release_free_heap, on_error="ignore")


def _retry(client: Any, erred: list, attempts: dict, retries: int) -> bool:
    """Retry the ``erred`` futures if each error may be transient and each future has retries left
    (``attempts`` counts them per key); ``False`` if not (the error is to be raised)."""
    if retries <= 0 or any(attempts.get(future.key, 0) >= retries for future in erred):
        return False
    errors = [future.exception() for future in erred]
    if not all(is_transient(error) for error in errors):
        return False
    for future in erred:
        attempts[future.key] = attempts.get(future.key, 0) + 1
    logger.info("retrying %d task(s) after %s: %s", len(erred), type(errors[0]).__name__, errors[0])
    retry_futures(client, erred)
    return True


def _compute_distributed(client: Any, collections: list, retries: int, timeout: float | None,
                         level: int, label: str = "computing", after: float = 0.0,
                         before_gather: Any = None) -> tuple:
    """:func:`compute` on a distributed client; ``before_gather()`` is called once every result
    is computed, before they are gathered (the workers still hold them)."""
    from distributed import futures_of
    from distributed.scheduler import NoWorkerError

    address = _address(client)
    if client.status != "running":
        raise _scheduler_lost(address, "the client is not connected to it")
    shown = _Shown(client, address, label, time.monotonic()) if level > 0 else None
    futures: list = []
    try:
        outcome = "stopped"
        try:
            # No scheduler retries (they retry every error): transient ones are retried below.
            with warnings.catch_warnings():
                # Large constants (a .nii.gz's seek index, a design) are one key of the graph each,
                # sent once whatever the number of tasks: dask's hint to avoid repeating them is moot.
                warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
                results = client.compute(collections, retries=0)  # futures, or values that were no collection
            futures = futures_of(results)
            attempts: dict = {}
            while True:
                _wait(client, futures, address, timeout,
                      None if shown is None else partial(shown.show, futures), after=after)
                erred = [future for future in futures if future.status == "error"]
                if not erred or not _retry(client, erred, attempts, retries):
                    break
                if shown is not None:
                    shown.retried(futures)
            if before_gather is not None and not erred:
                before_gather()
            values = tuple(client.gather(results))  # raises the first error, if any
            outcome = "done"
        except Exception as exc:
            lost = isinstance(exc, (ClusterLostError, NoWorkerError)) or _connection_lost(client, exc)
            outcome = "stopped" if lost else "failed"
            raise
        finally:
            if shown is not None:  # before the futures are cancelled, and the error reported below the bar
                shown.stop(outcome)
        return values
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
