"""runtime.compat: other libraries' internals daskglm relies on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

_FRAGMENTED_HEAP = textwrap.dedent("""
    import numpy as np, psutil
    from daskglm.runtime.compat import release_free_heap

    def rss():
        return psutil.Process().memory_info().rss

    blocks = [np.ones(256 * 1024 // 8) for _ in range(600)]  # 150 MiB of heap blocks, touched
    kept = blocks[7::8]  # every eighth stays: the heap's top cannot shrink on its own
    del blocks
    before = rss()
    called = release_free_heap()
    after = rss()
    print(called, before, after, len(kept))
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_heap_gives_freed_heap_back():
    """Freed blocks under a live one stay resident with a high trim threshold (the embedded
    cluster's); release_free_heap gives them back: RSS falls by most of the freed 131 MiB."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    called, before, after = out[0] == "True", int(out[1]), int(out[2])
    assert called
    assert before - after > 100 * 2**20, (before, after)


def test_release_free_heap_without_glibc(monkeypatch):
    """Where there is no malloc_trim (musl, macOS, Windows) it does nothing and says so."""
    from daskglm.runtime import compat

    monkeypatch.setattr(compat, "_malloc_trim", lambda: None)
    assert compat.release_free_heap() is False
