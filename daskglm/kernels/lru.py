"""One thread-safe least-recently-used cache for the kernels' per-process caches.

Every block of a run has the same design, mask crop and AR labels, so the
kernels keep what they derive from them (smoothing plans, whitened
pseudo-inverses, moment designs) per process. Workers run tasks on several
threads (the embedded in-process cluster, ``client="threads"``), so the
caches are shared between threads: :class:`LRUCache` holds a lock around
every look-up and update, and computes a missing value outside of it (two
threads missing the same key both compute it; values are pure functions of
their key, so either is right).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

V = TypeVar("V")


class LRUCache(Generic[V]):
    """A least-recently-used cache bounded by a total size, safe to share between threads.

    Parameters
    ----------
    max_size : int
        The budget, in the units of ``size_of`` (default: a number of entries).
        The entry just added is kept even when it alone exceeds the budget.
    size_of : callable, optional
        ``size_of(value) -> int``, e.g. ``lambda a: a.nbytes`` for a byte budget.
    """

    def __init__(self, max_size: int, size_of: Callable[[V], int] | None = None) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1; got {max_size}")
        self.max_size = int(max_size)
        self._size_of = size_of or (lambda value: 1)
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value of ``key``, computed by ``compute()`` (outside the lock) and kept if missing."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]
        value = compute()
        size = int(self._size_of(value))
        with self._lock:
            if key in self._entries:  # another thread computed it meanwhile: keep one
                self._entries.move_to_end(key)
                return self._entries[key][0]
            self._entries[key] = (value, size)
            self._size += size
            while self._size > self.max_size and len(self._entries) > 1:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._size -= dropped
        return value

    def peek(self, key: Hashable) -> V | None:
        """The value of ``key`` if it is kept (it becomes the most recently used), else None."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]
        return None

    @property
    def size(self) -> int:
        """The total size of the entries kept (in ``size_of`` units)."""
        with self._lock:
            return self._size

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._size = 0
