"""Where daskglm's graphs run: one way to get a Dask client.

Resolution order of :func:`get_client`:

1. a :class:`distributed.Client` given explicitly;
2. a dask *local* scheduler name (``"threads"``, ``"sync"``, ``"processes"``),
   given or already set in ``dask.config`` (e.g. by an outer ``get_client``):
   no distributed client, dask's own scheduler (tests, debugging);
3. a scheduler address given explicitly (``"tcp://127.0.0.1:8786"``);
4. the active client (``Client.current()``, e.g. made in a notebook);
5. ``DASK_SCHEDULER_ADDRESS`` from the environment;
6. an embedded :class:`distributed.LocalCluster` of processes sized to the
   machine, closed when the work is done.

A client that :func:`get_client` created is closed on exit; one it found is
left alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import dask

__all__ = ["get_client", "compute", "LOCAL_SCHEDULERS"]

LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", "single-threaded", "processes")


def _active_client() -> Any | None:
    from distributed import Client

    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


def _local_cluster_kwargs(n_workers: int | None, memory_limit: str | int | None) -> dict:
    n_cpu = os.cpu_count() or 1
    return {
        "n_workers": n_workers or n_cpu,
        "threads_per_worker": 1,
        "processes": True,
        "memory_limit": memory_limit if memory_limit is not None else "auto",
        "dashboard_address": None,
    }


@contextlib.contextmanager
def get_client(
    client: Any = None,
    n_workers: int | None = None,
    memory_limit: str | int | None = None,
) -> Iterator[Any]:
    """Context manager yielding the client to run on (or ``None`` for a local scheduler).

    Parameters
    ----------
    client : distributed.Client, str or None
        A client; a local scheduler name (see :data:`LOCAL_SCHEDULERS`); a
        scheduler address; or ``None`` to use the active client,
        ``DASK_SCHEDULER_ADDRESS``, or an embedded ``LocalCluster`` in turn.
    n_workers : int, optional
        Workers of an embedded ``LocalCluster`` (default: one per core, one
        thread each).
    memory_limit : str or int, optional
        Memory limit per worker of an embedded ``LocalCluster``.

    Yields
    ------
    distributed.Client or None
        ``None`` means "run on dask's local scheduler named by ``client``".
    """
    from distributed import Client, LocalCluster

    if isinstance(client, Client):
        yield client
        return
    if isinstance(client, str) and client in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=client):
            yield None
        return
    if client is not None and not isinstance(client, str):
        raise TypeError(
            f"client must be a distributed.Client, a scheduler address, one of "
            f"{LOCAL_SCHEDULERS} or None; got {type(client).__name__}: {client!r}"
        )
    address = client
    if address is None and dask.config.get("scheduler", None) in LOCAL_SCHEDULERS:
        # Inside an outer get_client("threads") (or dask.config.set(scheduler=...)):
        # the caller chose a local scheduler; honour it.
        yield None
        return
    if address is None:
        active = _active_client()
        if active is not None:
            yield active
            return
        address = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address is not None:
        with Client(address, set_as_default=False) as remote:
            with remote.as_current():
                yield remote
        return
    with LocalCluster(**_local_cluster_kwargs(n_workers, memory_limit)) as cluster:
        with Client(cluster, set_as_default=False) as local:
            with local.as_current():
                yield local


def compute(*collections: Any, client: Any = None) -> tuple:
    """Compute dask collections on ``client`` (resolved by :func:`get_client`).

    Parameters
    ----------
    *collections
        Dask collections or ``dask.delayed`` objects.
    client : see :func:`get_client`

    Returns
    -------
    tuple
        The computed values, in order.
    """
    with get_client(client) as resolved:
        if resolved is None:
            return dask.compute(*collections)
        return tuple(resolved.gather(resolved.compute(list(collections))))
