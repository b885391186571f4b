"""One pass over a run without a store: its mean image and value range, and its seek index.

What ingestion (:mod:`daskglm.store.ingest`) needs to know of a run before it plans the
store: the mean volume from which ``compute_epi_mask`` finds a mask when none is
given, the value range that nilearn's ``resample_img(clip=True)`` clips to when
the run is resampled, and the seek index of a ``.nii.gz`` run. Each is a lazy
graph of block tasks that read the run themselves (a path or URL travels, not
the data), merged as chunk -> combine.
"""

from __future__ import annotations

from typing import Any

import dask
import nibabel as nib
import numpy as np

from ..io.cifti import as_volumes
from ..io.nifti import RunInfo, build_gzip_index, inspect_run, nifti_image, read_volumes
from ..runtime import plan as _plan
from ..runtime.cluster import compute, get_client, phase
from .zarrio import fsspec_kwargs

__all__ = ["mean_image"]


def graph_constant(value: Any) -> Any:
    """A constant many tasks use, as one graph key (``None`` stays ``None``)."""
    return None if value is None else dask.delayed(value, traverse=False)


def in_memory_blocks(run: Any, bounds: list[tuple[int, int]]) -> list[np.ndarray]:
    """Views of an in-memory run's volumes ``a:b`` for each bound, shape (x, y, z, b - a)."""
    data = np.asanyarray(run.dataobj)
    if isinstance(run, nib.Cifti2Image):
        data = as_volumes(data)
    return [data[..., a:b] for a, b in bounds]


def _block_summary(source: str | np.ndarray, start: int, stop: int, gzip_index: bytes | None,
                   storage_options: dict | None = None, *, want_sum: bool = True
                   ) -> tuple[np.ndarray | None, float, float]:
    """Task: float64 sum of volumes ``start:stop`` (non-finite as 0), shape (x, y, z), or
    None; and their ``nanmin`` / ``nanmax``."""
    volumes = (read_volumes(source, start, stop, gzip_index, **fsspec_kwargs(source, storage_options))
               if isinstance(source, str) else source)
    total = np.zeros(volumes.shape[:3]) if want_sum else None
    low, high = np.inf, -np.inf
    for t in range(volumes.shape[3]):
        volume = np.asarray(volumes[..., t], dtype=float)
        finite = np.isfinite(volume)
        if total is not None:
            total += np.where(finite, volume, 0.0)
        if not np.isnan(volume).all():
            low, high = min(low, float(np.nanmin(volume))), max(high, float(np.nanmax(volume)))
    return total, low, high


def _combine_summaries(parts: list[tuple[np.ndarray | None, float, float]]
                       ) -> tuple[np.ndarray | None, float, float]:
    sums = [p[0] for p in parts if p[0] is not None]
    return (sum(sums) if sums else None, min(p[1] for p in parts), max(p[2] for p in parts))


def gzip_index_task(info: RunInfo, storage_options: dict | None) -> Any:
    """Delayed seek index of a ``.nii.gz`` run (one decompression pass), or None."""
    if info.path is None or not info.compressed:
        return None
    return dask.delayed(build_gzip_index)(info.path, info.data_bytes,
                                          **fsspec_kwargs(info.path, storage_options))


def _gzip_index(info: RunInfo, client: Any, storage_options: dict | None) -> bytes | None:
    """The seek index of a ``.nii.gz`` run, computed now, or None."""
    task = gzip_index_task(info, storage_options)
    with phase("gzip index", within=True):
        return None if task is None else compute(task, client=client)[0]


def mean_image(run_img: Any, client: Any = None, storage_options: dict | None = None) -> Any:
    """Mean over time of a 4D run, computed out of core (one pass of block sums).

    Non-finite values count as 0, as nilearn's maskers see them.

    Parameters
    ----------
    run_img : path, fsspec URL or nibabel image
        The 4D run; a file is read in blocks of volumes by the tasks
        themselves, an in-memory image is sliced into blocks.
    client : distributed.Client, str or None, optional
        Where the pass runs, resolved by
        :func:`daskglm.runtime.cluster.get_client`: a client, a local
        scheduler name, a scheduler address or file, or ``None`` for the
        active client, ``DASK_SCHEDULER_ADDRESS`` or an embedded ``LocalCluster``.
    storage_options : dict, optional
        fsspec options for a URL ``run_img`` (ignored for a local path).

    Returns
    -------
    nibabel.Nifti1Image
        3D float64, on the run's grid.
    """

    info = inspect_run(run_img, storage_options)
    with get_client(client) as resolved, phase("mean of the run", default=True):
        index = _gzip_index(info, resolved, storage_options)
        mean = run_summary(run_img, info, index, resolved, storage_options)[0]
    return nifti_image(mean, info.affine)


def run_summary(run_img: Any, info: RunInfo, gzip_index: bytes | None, client: Any,
                storage_options: dict | None = None, want_mean: bool = True
                ) -> tuple[np.ndarray | None, float, float]:
    """One lazy pass over the run: its mean volume (x, y, z) if wanted, and its value range.

    The range is what nilearn's ``resample_img(clip=True)`` clips to (see
    :mod:`daskglm.io.grid`); the mean is what ``compute_epi_mask`` needs.
    """
    volume_size = int(np.prod(info.volume_shape))
    # A task holds its volumes as read plus float64 copies of one: budgeted like a row buffer.
    block = _plan.plan_chunks(info.n_scans, volume_size, volume_size).t_chunk
    bounds = _plan.block_bounds(info.n_scans, block)
    if info.path is not None:
        index_key = graph_constant(gzip_index)
        parts = [dask.delayed(_block_summary)(info.path, a, b, index_key, storage_options,
                                              want_sum=want_mean) for a, b in bounds]
    else:
        parts = [dask.delayed(_block_summary)(blk, 0, blk.shape[3], None, want_sum=want_mean)
                 for blk in in_memory_blocks(run_img, bounds)]
    total, low, high = compute(dask.delayed(_combine_summaries)(parts), client=client)[0]
    return (None if total is None else total / info.n_scans), low, high
