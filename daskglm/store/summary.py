"""One pass over a run without a store: its mean image and value range, and its seek index.

What ingestion (:mod:`daskglm.store.ingest`) needs to know of a run before it plans the
store: the mean volume from which ``compute_epi_mask`` finds a mask when none is
given, the value range that nilearn's ``resample_img(clip=True)`` clips to when
the run is resampled, and the seek index of a ``.nii.gz`` run. Each is a lazy
graph of block tasks that read the run themselves (a path or URL travels, not
the data), merged as chunk -> combine.
"""

from __future__ import annotations

import json
from typing import Any

import dask
import nibabel as nib
import numpy as np

from ..io.cifti import as_volumes
from ..io.nifti import RunInfo, build_gzip_index, inspect_run, kept_open, nifti_image, read_volumes
from ..kernels.lru import LRUCache
from ..runtime import plan as _plan
from ..runtime.cluster import compute, get_client, phase, total_threads
from .zarrio import fsspec_kwargs

__all__ = ["gzip_indexes", "indexes_pay", "mean_image", "mean_images", "run_summary"]


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
    return _summarise(volumes, want_sum)


def _summarise(volumes: np.ndarray, want_sum: bool = True) -> tuple[np.ndarray | None, float, float]:
    """Float64 sum of a block of volumes (x, y, z, t) over time (non-finite as 0), or None; and
    their ``nanmin`` / ``nanmax`` (``inf``, ``-inf`` when all are NaN)."""
    if volumes.dtype.kind in "iub":  # every value finite, every float64 sum of them exact
        total = volumes.sum(axis=3, dtype=np.float64) if want_sum else None
        return total, float(volumes.min()), float(volumes.max())
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


def _sequential_summary(path: str, bounds: list[tuple[int, int]], storage_options: dict | None = None,
                        want_sum: bool = True) -> tuple[np.ndarray | None, float, float]:
    """Task: the block tasks' combined summary of a compressed run without seek index, its blocks
    read in order through one open stream (the same numbers)."""
    with kept_open(path, None, **fsspec_kwargs(path, storage_options)):
        return _combine_summaries([_block_summary(path, a, b, None, storage_options, want_sum=want_sum)
                                   for a, b in bounds])


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


#: The seek indexes of ``.nii.gz`` runs this process has had built, by the run's identity (its
#: provenance: path, size and mtime; URL, size and ETag): the mean pass of a computed mask and the
#: ingestion of the same run share one decompression pass. At most 32 MiB (an index holds at most
#: 256 seek points of 32 KiB).
_GZIP_INDEXES: LRUCache[bytes] = LRUCache(32 * 2**20, size_of=len)


def _index_key(info: RunInfo) -> str | None:
    """The run's key in :data:`_GZIP_INDEXES`; None for a run that has no seek index."""
    return None if info.path is None or not info.compressed else json.dumps(info.provenance, sort_keys=True)


def _cached_index(info: RunInfo) -> bytes | None:
    key = _index_key(info)
    return None if key is None else _GZIP_INDEXES.peek(key)


def indexes_pay(infos: list[RunInfo], client: Any) -> bool:
    """Whether the ``.nii.gz`` runs among ``infos`` are worth seek indexes on ``client``.

    An index costs a decompression pass of its own (and holds Python's GIL
    while it is built, so the builds of an in-process cluster's threads do not
    overlap); it lets tasks read blocks of one run in parallel. With at least
    as many compressed runs as the client runs tasks at once, the runs
    themselves keep every thread busy: each run is then read by one task from
    start to end, in one decompression (BENCHMARKS.md, "Many ordinary subjects").
    """
    compressed = sum(_index_key(info) is not None for info in infos)
    return 0 < compressed < total_threads(client)


def gzip_indexes(infos: list[RunInfo], client: Any, storage_options: dict | None = None,
                 label: str = "gzip index", within: bool = True, build: bool = True) -> list[bytes | None]:
    """The seek index of each ``.nii.gz`` run (None for any other run).

    Indexes this process has had built before are reused; the others are built
    in one computation (one task per run) and kept, or, with ``build=False``,
    left None.

    Parameters
    ----------
    infos : list of RunInfo
    client : distributed.Client, str or None
        As :func:`daskglm.runtime.cluster.compute`.
    storage_options : dict, optional
        fsspec options for URLs.
    label, within : str, bool
        The progress phase, when something is built (see :func:`daskglm.runtime.progress.phase`).
    build : bool
        Whether missing indexes are built (see :func:`indexes_pay`).

    Returns
    -------
    list of bytes or None
        In the order of ``infos``.
    """
    found = [_cached_index(info) for info in infos]
    missing = [i for i, (info, index) in enumerate(zip(infos, found)) if index is None and _index_key(info)]
    if missing and build:
        with phase(label, within=within):
            built = compute(*(gzip_index_task(infos[i], storage_options) for i in missing), client=client)
        for i, index in zip(missing, built):
            found[i] = _GZIP_INDEXES.get(_index_key(infos[i]), lambda index=index: index)
    return found


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
    return mean_images([run_img], client, storage_options)[0]


def mean_images(run_imgs: list, client: Any = None, storage_options: dict | None = None) -> list:
    """:func:`mean_image` of several runs, their passes in one computation.

    ``.nii.gz`` runs get seek indexes first when :func:`indexes_pay` (kept for
    the runs' ingestion, see :func:`gzip_indexes`); otherwise each is read by
    one task from start to end.

    Parameters
    ----------
    run_imgs : list of path, fsspec URL or nibabel image
        The 4D runs.
    client, storage_options
        As :func:`mean_image`.

    Returns
    -------
    list of nibabel.Nifti1Image
        3D float64, each on its run's grid, in the order of ``run_imgs``.
    """
    infos = [inspect_run(run, storage_options) for run in run_imgs]
    with get_client(client) as resolved, phase("mean of the run" if len(infos) == 1
                                               else f"mean of {len(infos)} runs", default=True):
        indexes = gzip_indexes(infos, resolved, storage_options, build=indexes_pay(infos, resolved))
        passes = [_summary_pass(run, info, index, storage_options)
                  for run, info, index in zip(run_imgs, infos, indexes)]
        summaries = compute(*passes, client=resolved)
    return [nifti_image(total / info.n_scans, info.affine) for (total, _, _), info in zip(summaries, infos)]


def run_summary(run_img: Any, info: RunInfo, gzip_index: bytes | None, client: Any,
                storage_options: dict | None = None, want_mean: bool = True
                ) -> tuple[np.ndarray | None, float, float]:
    """One pass over the run: its mean volume (x, y, z) if wanted, and its value range.

    The range is what nilearn's ``resample_img(clip=True)`` clips to (see
    :mod:`daskglm.io.grid`); the mean is what ``compute_epi_mask`` needs.
    """
    total, low, high = compute(_summary_pass(run_img, info, gzip_index, storage_options, want_mean),
                               client=client)[0]
    return (None if total is None else total / info.n_scans), low, high


def _summary_pass(run_img: Any, info: RunInfo, gzip_index: bytes | None, storage_options: dict | None = None,
                  want_mean: bool = True) -> Any:
    """The lazy pass of :func:`run_summary`: delayed ``(sum of the volumes or None, min, max)``."""
    bounds = _plan.block_bounds(info.n_scans, _summary_block(info))
    if info.path is not None and info.compressed and gzip_index is None:  # one task, one decompression
        return dask.delayed(_sequential_summary)(info.path, bounds, storage_options, want_mean)
    if info.path is not None:
        index_key = graph_constant(gzip_index)
        parts = [dask.delayed(_block_summary)(info.path, a, b, index_key, storage_options,
                                              want_sum=want_mean) for a, b in bounds]
    else:
        parts = [dask.delayed(_block_summary)(blk, 0, blk.shape[3], None, want_sum=want_mean)
                 for blk in in_memory_blocks(run_img, bounds)]
    return dask.delayed(_combine_summaries)(parts)


def _summary_block(info: RunInfo) -> int:
    """Volumes per block of a run's summary pass: a task holds its volumes as read plus float64
    copies of one, budgeted like a row buffer."""
    volume_size = int(np.prod(info.volume_shape))
    return _plan.plan_chunks(info.n_scans, volume_size, volume_size).t_chunk
