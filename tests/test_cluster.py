"""Client resolution: explicit client, local schedulers, active client, address, embedded cluster."""

from __future__ import annotations

import dask
import pytest
from distributed import Client

from daskglm.cluster import compute, get_client


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


def test_bad_client_type_is_named():
    with pytest.raises(TypeError, match="client must be.*int: 42"):
        with get_client(42):
            pass
