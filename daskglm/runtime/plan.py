"""Chunk planning: pure arithmetic, no I/O.

A run is stored as ``bold(time, voxel)`` with chunks ``(t_chunk, v_chunk)``.
Ingestion writes whole rows of ``t_chunk`` volumes (one task per row of
chunks, reading ``volumes_per_read`` volumes at a time into a row buffer); the
fit reads whole columns of ``v_chunk`` voxels over all time points. The plan
keeps both working sets under a memory budget, makes chunks large (zarr costs
about a millisecond per chunk read, whatever its size) and keeps the number of
tasks small for small data.

Working sets, in bytes, with ``V`` mask voxels and ``S`` voxels per volume:

* ingestion task: ``4 * t_chunk * V`` (float32 row buffer) plus
  ``12 * volumes_per_read * S`` (volumes as read, their float32 crop, the
  masked rows);
* fit task: ``FIT_BYTES_PER_VALUE * n_scans * v_chunk`` (float32 column,
  its float64 scaled copy, residuals, whitened data and one temporary).
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["ChunkPlan", "plan_chunks", "volumes_per_read", "block_bounds", "compiled_smoothing_pays", "check_positive"]

MiB = 2**20
#: Working-set budget per task, in bytes, used when none is given.
DEFAULT_TASK_BYTES = 128 * MiB
#: Fewer voxels than this per fit block is rarely worth a task.
MIN_V_CHUNK = 1024
#: Bytes the fit kernel holds per value of its column (see the module notes).
FIT_BYTES_PER_VALUE = 40
#: Bytes an ingestion task holds per voxel of each volume it has read.
READ_BYTES_PER_VOXEL = 12
#: Smoothed voxels (crop voxels x volumes) of a run from which the compiled
#: filter pays for loading numba in each worker (a fixed cost per worker against
#: a saving per voxel and volume, even at about 2e7; BENCHMARKS.md, "Many ordinary
#: subjects"), with a margin for numba's memory: FIAC-sized runs (2e7) stay on
#: scipy; a 3 mm fMRIPrep run of 240 scans (7e7) and HCP-sized runs (9e8) do not.
COMPILED_SMOOTHING_MIN_VOXELS = 3 * 10**7


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


def check_positive(name: str, value: int | None) -> None:
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
        Voxels in one full volume (x * y * z) as read. Not used by the plan
        itself since ingestion reads a few volumes at a time (see
        `volumes_per_read`); validated for the callers' sake.
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
        check_positive(name, value)
    check_positive("t_chunk", t_chunk)
    check_positive("v_chunk", v_chunk)
    if task_bytes < 1:
        raise ValueError(f"task_bytes must be positive; got {task_bytes!r}")

    if t_chunk is None:
        # Three quarters of the budget for the float32 row buffer, the rest for
        # the volumes being read (see volumes_per_read).
        by_budget = max(1, (3 * task_bytes // 4) // (4 * n_voxels))
        # At least ~4 tasks when the run allows, so ingestion runs in parallel.
        by_parallelism = max(1, math.ceil(n_scans / 4))
        t_chunk = int(min(by_budget, by_parallelism, n_scans))
    if v_chunk is None:
        by_budget = max(MIN_V_CHUNK, task_bytes // (FIT_BYTES_PER_VALUE * n_scans))
        # Small data: few tasks. Aim for at least 2 blocks so both cores work.
        v_chunk = int(min(by_budget, max(MIN_V_CHUNK, math.ceil(n_voxels / 2))))
    return ChunkPlan(int(min(t_chunk, n_scans)), int(min(v_chunk, n_voxels)))


def volumes_per_read(volume_size: int, t_chunk: int, task_bytes: int = DEFAULT_TASK_BYTES) -> int:
    """How many volumes an ingestion task reads, smooths and masks at a time.

    Parameters
    ----------
    volume_size : int
        Voxels in one full volume as read (x * y * z).
    t_chunk : int
        Volumes of the task's row of chunks.
    task_bytes : int
        Working-set budget of one task; a quarter of it goes to the volumes
        being read (the rest is the row buffer, see `plan_chunks`).

    Returns
    -------
    int
        ``1 <= step <= t_chunk``.
    """
    check_positive("volume_size", volume_size)
    check_positive("t_chunk", t_chunk)
    return int(max(1, min(t_chunk, (task_bytes // 4) // (READ_BYTES_PER_VOXEL * volume_size))))


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
    check_positive("chunk", chunk)
    return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]


def compiled_smoothing_pays(crop_voxels: int, n_scans: int) -> bool:
    """Whether a run is large enough for the compiled smoothing filter to pay off.

    Parameters
    ----------
    crop_voxels : int
        Voxels of the smoothing crop of one volume.
    n_scans : int
        Volumes of the run.

    Returns
    -------
    bool
        ``crop_voxels * n_scans >= COMPILED_SMOOTHING_MIN_VOXELS``.
    """
    return int(crop_voxels) * int(n_scans) >= COMPILED_SMOOTHING_MIN_VOXELS
