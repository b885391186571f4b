"""The lock of a local store (``daskglm.store.locks``, re-exported as ``daskglm.store.ingest.store_lock``).

Two processes ingesting one store at once, and a holder killed by SIGKILL, are
tested end to end in ``tests/system/test_crash_safety.py``; ``save_fits`` waiting for
the lock in ``tests/glm/test_fit.py``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import pytest

import daskglm.store.ingest
from daskglm.store.locks import store_lock


def test_store_lock_is_public_in_daskglm_store():
    """The public name is ``daskglm.store.ingest.store_lock``: the same function, in ``__all__``."""
    assert daskglm.store.ingest.store_lock is store_lock and "store_lock" in daskglm.store.ingest.__all__


def test_store_lock_waits_records_its_holder_and_cleans_up(tmp_path, caplog):
    """In-process: a second holder waits for the first; the lock file names the holder
    while held and is gone after; a file left by a dead holder is taken over at once."""
    store = tmp_path / "sub" / "run.zarr"
    lock = tmp_path / "sub" / "run.zarr.lock"
    events: list[str] = []
    with store_lock(store):
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()

        def second() -> None:
            with store_lock(str(store)):
                events.append("second got it")

        with caplog.at_level(logging.WARNING, logger="daskglm.store.ingest"):
            thread = threading.Thread(target=second)
            thread.start()
            time.sleep(0.5)
            assert events == [] and thread.is_alive()  # waiting
            events.append("first releases")
        assert f"pid {os.getpid()} on host" in caplog.text and "waiting" in caplog.text
        assert {r.name for r in caplog.records if "waiting" in r.getMessage()} == {"daskglm.store.ingest"}
    thread.join(timeout=10)
    assert events == ["first releases", "second got it"]
    assert not lock.exists() and not store.exists()
    lock.write_text('{"pid": 999999999, "host": "gone", "since": "yesterday"}')  # a dead holder's
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskglm.store.ingest"), store_lock(store):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "waiting" not in caplog.text and not lock.exists()  # taken over at once, not waited for
    with store_lock("s3://bucket/run.zarr"):  # object storage: no lock (documented)
        pass


def test_without_waiting_a_held_lock_raises_naming_its_holder(tmp_path):
    from daskglm.store.locks import StoreLockedError

    store = tmp_path / "run.zarr"
    with store_lock(store):
        with pytest.raises(StoreLockedError, match="in use \\(this process\\)"):
            with store_lock(store, wait=False):
                pass  # pragma: no cover
        errors = []

        def other_thread() -> None:
            try:
                with store_lock(store, wait=False):
                    pass  # pragma: no cover
            except StoreLockedError as exc:
                errors.append(exc.holder)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(10)
        assert errors == ["this process"]
    with store_lock(store, wait=False):  # free again: taken at once
        assert (tmp_path / "run.zarr.lock").exists()
    assert not (tmp_path / "run.zarr.lock").exists()
