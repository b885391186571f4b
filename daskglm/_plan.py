"""Chunk planning: pure arithmetic, no I/O.

A run is stored as ``bold(time, voxel)`` with chunks ``(t_chunk, v_chunk)``.
Ingestion writes whole rows of ``t_chunk`` volumes; the fit reads whole columns
of ``v_chunk`` voxels over all time points. The plan keeps both the ingestion
working set (``t_chunk`` full volumes) and the fit working set (all scans of a
column, in float64) under a memory budget, and keeps the number of tasks small
for small data.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["ChunkPlan", "plan_chunks", "block_bounds"]

MiB = 2**20
#: Working-set budget per task, in bytes, used when none is given.
DEFAULT_TASK_BYTES = 128 * MiB
#: Fewer voxels than this per fit block is rarely worth a task.
MIN_V_CHUNK = 1024


class ChunkPlan(NamedTuple):
    """Chunk sizes of a ``bold(time, voxel)`` store.

    Attributes
    ----------
    t_chunk : int
        Volumes per chunk along time (= volumes per ingestion task).
    v_chunk : int
        Voxels per chunk along voxel (= voxels per fit task).
    """

    t_chunk: int
    v_chunk: int


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int | float) or int(value) != value or value < 1):
        raise ValueError(f"{name} must be a positive integer or None; got {value!r}")


def plan_chunks(
    n_scans: int,
    n_voxels: int,
    volume_size: int,
    t_chunk: int | None = None,
    v_chunk: int | None = None,
    task_bytes: int = DEFAULT_TASK_BYTES,
) -> ChunkPlan:
    """Choose ``(t_chunk, v_chunk)`` for a run.

    Parameters
    ----------
    n_scans : int
        Number of volumes in the run.
    n_voxels : int
        Number of voxels in the mask.
    volume_size : int
        Voxels in one full volume (x * y * z): what ingestion holds per volume.
    t_chunk, v_chunk : int or None
        Explicit sizes; ``None`` lets the plan choose. Explicit sizes larger
        than the data are clipped to it.
    task_bytes : int
        Working-set budget of one task in bytes.

    Returns
    -------
    ChunkPlan
        ``1 <= t_chunk <= n_scans`` and ``1 <= v_chunk <= n_voxels``.
    """
    for name, value in (("n_scans", n_scans), ("n_voxels", n_voxels), ("volume_size", volume_size)):
        _check_positive(name, value)
    _check_positive("t_chunk", t_chunk)
    _check_positive("v_chunk", v_chunk)
    if task_bytes < 1:
        raise ValueError(f"task_bytes must be positive; got {task_bytes!r}")

    if t_chunk is None:
        # Ingestion holds a block of full volumes in the input dtype and a
        # float32 crop of it: about 8 bytes per voxel per volume.
        by_budget = max(1, task_bytes // (8 * volume_size))
        # At least ~4 tasks when the run allows, so ingestion runs in parallel.
        by_parallelism = max(1, math.ceil(n_scans / 4))
        t_chunk = int(min(by_budget, by_parallelism, n_scans))
    if v_chunk is None:
        # The fit holds a column in float64 plus a few copies of that size.
        by_budget = max(MIN_V_CHUNK, task_bytes // (32 * n_scans))
        # Small data: few tasks. Aim for at least 2 blocks so both cores work.
        v_chunk = int(min(by_budget, max(MIN_V_CHUNK, math.ceil(n_voxels / 2))))
    return ChunkPlan(int(min(t_chunk, n_scans)), int(min(v_chunk, n_voxels)))


def block_bounds(length: int, chunk: int) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` bounds of consecutive chunks covering ``length``.

    Parameters
    ----------
    length : int
    chunk : int

    Returns
    -------
    list of (int, int)
        ``ceil(length / chunk)`` pairs; the last may be shorter.
    """
    _check_positive("chunk", chunk)
    return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]
