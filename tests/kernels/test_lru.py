"""daskglm.kernels.lru.LRUCache: least-recently-used eviction within a budget, safe under threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from daskglm.kernels.lru import LRUCache


def test_keeps_the_most_recently_used_within_the_budget():
    cache: LRUCache[str] = LRUCache(2)
    calls = []

    def make(k):
        return lambda: calls.append(k) or k.upper()

    assert cache.get("a", make("a")) == "A" and cache.get("b", make("b")) == "B"
    assert cache.get("a", make("a")) == "A"  # a used again: b is now the least recently used
    assert cache.get("c", make("c")) == "C"
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    assert calls == ["a", "b", "c"]  # a hit computes nothing


def test_byte_budget_and_an_oversized_entry_is_kept_alone():
    cache: LRUCache[np.ndarray] = LRUCache(100, size_of=lambda a: a.nbytes)
    cache.get(1, lambda: np.zeros(5))  # 40 bytes
    cache.get(2, lambda: np.zeros(5))  # 80
    assert cache.size == 80
    cache.get(3, lambda: np.zeros(5))  # 120 > 100: 1 evicted
    assert 1 not in cache and cache.size == 80
    big = cache.get(4, lambda: np.zeros(50))  # 400 bytes alone
    assert len(cache) == 1 and 4 in cache and cache.size == big.nbytes
    cache.clear()
    assert len(cache) == 0 and cache.size == 0
    with pytest.raises(ValueError, match="max_size"):
        LRUCache(0)


def test_peek_finds_without_computing_and_counts_as_a_use():
    cache: LRUCache[str] = LRUCache(2)
    assert cache.peek("a") is None and len(cache) == 0  # a miss keeps nothing
    cache.get("a", lambda: "A")
    cache.get("b", lambda: "B")
    assert cache.peek("a") == "A"  # a used again: b is now the least recently used
    cache.get("c", lambda: "C")
    assert "a" in cache and "b" not in cache and cache.peek("b") is None


def test_none_is_a_value():
    cache: LRUCache[None] = LRUCache(2)
    calls = []
    assert cache.get("k", lambda: calls.append(1)) is None
    assert cache.get("k", lambda: calls.append(1)) is None
    assert calls == [1]


def test_threads_evicting_together_never_fail_and_stay_in_budget():
    """The dicts these replace raised KeyError when two threads evicted at once (``pop(next(iter(d)))``)."""
    cache: LRUCache[np.ndarray] = LRUCache(1000, size_of=lambda a: a.nbytes)
    barrier = threading.Barrier(8)

    def work(seed: int) -> int:
        barrier.wait()
        rng = np.random.default_rng(seed)
        wrong = 0
        for _ in range(3000):
            key = int(rng.integers(0, 40))
            value = cache.get(key, lambda key=key: np.full(10, key, dtype=np.float64))  # 80 bytes
            wrong += int(value[0] != key)
            assert cache.size <= 1000 or len(cache) == 1
        return wrong

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(work, range(8))) == 0
    assert cache.size == 80 * len(cache) <= 1000
