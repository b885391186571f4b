"""What daskglm relies on in other libraries' internals, in one place.

Worker processes that never import the user's ``__main__``
-----------------------------------------------------------

distributed's :class:`~distributed.Nanny` starts its worker process with
multiprocessing's ``spawn`` method (``distributed.worker.multiprocessing-method``).
A spawned child is told by its parent how to recreate the parent's
``__main__`` (``multiprocessing.spawn.get_preparation_data`` adds
``init_main_from_path`` for ``python script.py``, ``init_main_from_name`` for
``python -m package.module``), and it re-runs that module's top-level code
before it becomes a worker. A script without an ``if __name__ ==
"__main__":`` guard, as every nilearn example is written, then starts a
second analysis inside each worker, which fails with multiprocessing's
"bootstrapping phase" error and ``RuntimeError: Nanny failed to start``.

:func:`workers_skip_main` wraps ``get_preparation_data`` so that, while the
block runs, processes with the name distributed's Nanny gives its worker
process (:data:`NANNY_WORKER_PROCESS_NAME`) are spawned without those two
entries: the worker never sees the user's script, as a ``dask worker``
started on another machine never does. Tasks need nothing from it: dask
ships functions defined in ``__main__`` by value (cloudpickle). The wrapper
is installed once and left installed; the filter is active only while at
least one block is open, so that daskglm's embedded cluster is covered for
its whole life, including the workers its nannies restart later (after a
memory-limit kill or a crash), and clusters the user makes outside of
daskglm are not affected. Other processes (any other name) are untouched.

Failing safe: if distributed renames its worker process, if multiprocessing
renames its keys or its function, or if anything in the filter raises, the
preparation data is passed on unchanged, which is distributed's behaviour
without daskglm.

Retrying the failed tasks of a computation
------------------------------------------

:func:`retry_futures` is distributed's ``Client.retry`` without its
``KeyError`` for a failed task that is no future of the client (a block
read under a run's result): it calls the scheduler's ``retry`` handler and
the client's future states (``client.scheduler``, ``client.futures``), which
are distributed's internals.

Returning a large task's freed memory
-------------------------------------

The embedded cluster's workers keep up to 128 MiB of freed heap for the next
task (``MALLOC_TRIM_THRESHOLD_``, :data:`daskglm.runtime.cluster.WORKER_MALLOC_ENV`):
the right trade for the per-column tasks, which allocate the same sizes
again and again. A task that runs once per run and allocates far more than
a column's tasks (``"arma11"``'s smoothing of a run's lag correlations, about
100 bytes a voxel of the run) would leave that much resident on its worker
for the rest of the computation, and ``"arma11"``'s two passes over every
column leave freed memory scattered through the heap (its refit tasks give it
back every few columns, :mod:`daskglm.glm.fit`).
:func:`release_free_heap` calls glibc's ``malloc_trim(0)``, as
distributed's documentation does for "unmanaged memory" with ``client.run``;
elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["NANNY_WORKER_PROCESS_NAME", "MAIN_MODULE_KEYS", "install_main_filter",
           "main_filter_installed", "release_free_heap", "retry_futures", "workers_skip_main"]

#: The ``name`` of the ``multiprocessing.Process`` that distributed's
#: ``WorkerProcess.start`` (distributed/nanny.py) creates for the worker.
NANNY_WORKER_PROCESS_NAME = "Dask Worker process (from Nanny)"
#: Entries of ``multiprocessing.spawn.get_preparation_data`` that make a
#: spawned child import the parent's ``__main__`` (as ``__mp_main__``).
MAIN_MODULE_KEYS = ("init_main_from_path", "init_main_from_name")

_lock = threading.Lock()
_active = 0  # open workers_skip_main blocks (process-wide: nannies spawn from their own threads)
_wrapper: Callable[..., Any] | None = None


def _filter(name: Any, data: Any) -> Any:
    """``data`` without :data:`MAIN_MODULE_KEYS` for a Nanny's worker while a block is open."""
    try:
        if _active > 0 and name == NANNY_WORKER_PROCESS_NAME and isinstance(data, dict):
            return {key: value for key, value in data.items() if key not in MAIN_MODULE_KEYS}
    except Exception:  # fail safe: as without daskglm
        pass
    return data


def _make_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_preparation_data(*args: Any, **kwargs: Any) -> Any:
        data = original(*args, **kwargs)
        return _filter(args[0] if args else kwargs.get("name"), data)

    return get_preparation_data


def main_filter_installed() -> bool:
    """Whether ``multiprocessing.spawn.get_preparation_data`` is (or wraps) daskglm's filter."""
    import multiprocessing.spawn as spawn

    function = getattr(spawn, "get_preparation_data", None)
    seen = 0
    while function is not None and seen < 100:  # other libraries may have wrapped ours
        if _wrapper is not None and function is _wrapper:
            return True
        function = getattr(function, "__wrapped__", None)
        seen += 1
    return False


def install_main_filter() -> bool:
    """Wrap ``multiprocessing.spawn.get_preparation_data`` with the filter, once.

    Idempotent and thread-safe: a second call leaves the first wrapper in
    place (also when another library wrapped it since, with
    ``functools.wraps``).

    Returns
    -------
    bool
        Whether the filter is installed (``False`` when multiprocessing has
        no ``get_preparation_data`` any more: workers behave as without
        daskglm).
    """
    global _wrapper
    import multiprocessing.spawn as spawn

    with _lock:
        if main_filter_installed():
            return True
        original = getattr(spawn, "get_preparation_data", None)
        if not callable(original):
            return False
        _wrapper = _make_wrapper(original)
        spawn.get_preparation_data = _wrapper
        return True


@contextlib.contextmanager
def workers_skip_main() -> Iterator[bool]:
    """Inside the block, Nanny worker processes spawned by this process skip ``__main__``.

    Installs the filter if needed (:func:`install_main_filter`). Blocks may
    nest and overlap across threads; the filter is active until the last one
    is closed.

    Yields
    ------
    bool
        Whether the filter is installed.
    """
    global _active
    installed = install_main_filter()
    with _lock:
        _active += 1
    try:
        yield installed
    finally:
        with _lock:
            _active -= 1


def retry_futures(client: Any, futures: list) -> None:
    """``client.retry(futures)``, also when the failed task is one under the futures.

    distributed's ``Client.retry`` asks the scheduler to retry the keys (it
    retries their failed dependencies too) and then looks every key it
    retried up in the client's futures: a failed task that is not a future of
    this client (a block read under a run's result) raises ``KeyError`` there,
    after the scheduler has retried it, with the futures left "error" on the
    client. The same two steps, skipping keys that are no future of ours.
    """
    async def retry() -> None:
        keys = list({future.key for future in futures})
        retried = await client.scheduler.retry(keys=keys, client=client.id)
        for key in retried:
            state = client.futures.get(key)
            if state is not None:
                state.retry()

    client.sync(retry)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Give the process's free heap memory back to the system (glibc's ``malloc_trim(0)``).

    Returns
    -------
    bool
        Whether glibc's ``malloc_trim`` was there to call.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
