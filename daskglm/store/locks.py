"""The lock of a local run store: one ingestion (or fit write) of a store at a time.

Two processes ingesting into the same *local* store are serialised by a lock:
an exclusive ``flock`` on ``<store>.lock``, a file next to the store that
records the holder (pid, host, time) and is removed on release. The second
process waits, then finds the store complete and reuses it (or resumes it if
the first one failed). The kernel releases the lock when its holder dies, even
by SIGKILL, so a lock is never stale: a leftover file is taken over.
Ingestion (:func:`daskglm.store.ingest.ingest_runs`) takes it, and so does
:func:`daskglm.store.ingest.save_fit`.
On a filesystem without ``flock`` support (some FUSE or Lustre mounts without
``-o flock``) a warning says so and the work goes on unlocked. Stores at
fsspec URLs (object storage) are not locked: do not ingest one run into one
remote store from two processes at once (one store per source, as
:class:`~daskglm.models.first_level.FirstLevelModel` makes, never clashes across subjects).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no store locks
    fcntl = None  # type: ignore[assignment]

from ..io.nifti import is_url
from .zarrio import local_path

__all__ = ["store_lock", "StoreLockedError"]

# The store's logger: waiting for a store's lock is part of what its ingestion reports.
logger = logging.getLogger("daskglm.store.ingest")


#: errno values of a filesystem that does not support flock.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

#: The locks this process's threads hold: (lock file path, thread) -> [descriptor or None, depth].
_HELD: dict[tuple[str, int], list] = {}
_HELD_LOCK = threading.Lock()


class StoreLockedError(BlockingIOError):
    """The lock of a store is held (by another process, or already in this one) and the caller would not wait.

    ``holder`` says who holds it, as its lock file records it (or ``"this process"``).
    """

    def __init__(self, store: str, holder: str) -> None:
        super().__init__(errno.EWOULDBLOCK, f"the store {store!r} is in use ({holder or 'holder unknown'})")
        self.store, self.holder = store, holder or "holder unknown"


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, *, wait: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of a local store for the duration of the block.

    The lock is an ``flock`` on ``<store>.lock`` (next to the store, so it
    exists before the store does). The file holds the holder's pid, host and
    start time, shown to a process that has to wait, and is removed on
    release. The kernel drops the lock when its holder dies, whatever the
    signal: a file left by a killed process is simply taken over. A no-op for
    fsspec URLs and where ``fcntl`` does not exist. Re-entrant within a
    thread (a model holds its stores' locks from ingestion through its fits'
    last write and read, and the steps inside take them again); other threads
    and processes wait.

    Parameters
    ----------
    store : str or path
        The store (local path, ``file://`` URL, or any fsspec URL).
    wait : bool, default=True
        True: wait as long as the lock is held elsewhere (the holder is
        logged). False: never wait; a lock held elsewhere, or already held in this
        process (any thread: what removes a store must not remove one in
        use here), raises :class:`StoreLockedError`.

    Raises
    ------
    StoreLockedError
        ``wait=False`` and the lock is held.
    OSError
        The folder of the store cannot be created (the message names the store).

    Yields
    ------
    None
        Nothing: the lock is held until the block ends (released, and its
        file removed, by the outermost block of the thread).
    """
    store = os.fspath(store)
    if is_url(store) or fcntl is None:
        yield
        return
    folder, name = os.path.split(os.path.abspath(local_path(store)).rstrip(os.sep))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the store at {store!r}: {exc}") from exc
    # One lock per folder, however it is reached (relative paths, symlinked parents).
    path = os.path.join(os.path.realpath(folder), f"{name}.lock")
    key = (path, threading.get_ident())
    with _HELD_LOCK:
        if not wait and any(lock == path for lock, _ in _HELD):
            raise StoreLockedError(store, "this process")
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is None:
        fd = _acquire(path, store, wait)
        with _HELD_LOCK:
            _HELD[key] = held = [fd, 1]
    try:
        yield
    finally:
        with _HELD_LOCK:
            held[1] -= 1
            last = held[1] == 0
            if last:
                del _HELD[key]
        if last and held[0] is not None:
            # Unlinked while still held: a process that opened this file meanwhile
            # sees, once it holds the lock, that the path no longer names it, and retries.
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(held[0])


def _acquire(path: str, store: str, wait: bool = True) -> int | None:
    """An open descriptor of ``path`` holding its exclusive flock (None: flock unsupported).

    Raises :class:`StoreLockedError` if it is held and not ``wait``.
    """
    waited = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OSError(f"cannot create the store at {store!r}: cannot open its lock file "
                          f"{path!r}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:  # closed below, as any error of the flock
                    raise StoreLockedError(store, _holder(fd)) from None
                if not waited:
                    holder = _holder(fd)
                    logger.warning("the store %s is being written by another process (%s): waiting "
                                   "for it to finish", store, holder or "holder unknown")
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_FLOCK:
                raise
            warnings.warn(f"cannot lock the store at {store!r} ({exc.strerror}: the filesystem "
                          "does not support flock): concurrent ingestions into it are not "
                          "protected", UserWarning, stacklevel=4)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        try:
            current = os.stat(path)
            held = os.fstat(fd)
            same = (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev)
        except FileNotFoundError:
            same = False
        if same:
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            if waited:
                logger.info("got the lock of the store %s", store)
            return fd
        os.close(fd)  # the previous holder removed that file: lock the new one


def _holder(fd: int) -> str:
    """Who holds a lock file, as it says ("pid 12 on host x since ...") or ''."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {record['pid']} on host {record['host']} since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""
