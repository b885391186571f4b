"""The zarr edge: ingest a NIfTI run into a zarr store and open it as xarray.

Store layout (a zarr v3 group, local path or fsspec URL)::

    bold(time, voxel)        float32, chunks (t_chunk, v_chunk), smoothed and masked
    i, j, k (voxel,)         int32 voxel indices in the volume (coordinates of bold)
    ingest_done (block,)     uint8, one flag per ingestion block, set after its write: t_chunk
                             volumes, or v_chunk grayordinates of a CIFTI dense time series
    gzip_index (byte,)       uint8, indexed_gzip seek index of a .nii.gz source (maybe empty)
    glm-<fit key>/           the fits (see daskglm.glm.fitstore)
    attrs                    daskglm_store_format, fingerprint, affine, volume_shape,
                             n_scans, t_r, smoothing_fwhm, source, mask, chunks,
                             complete and integrity (written last, together)

Every chunk carries a crc32c checksum (zarr's ``crc32c`` codec), verified on each read.

Remote locations: a store, a run or a mask may be an fsspec URL
(``s3://bucket/stores/run-1.zarr``); one ``storage_options`` dict serves every
URL of a call and is ignored for local paths. Tasks receive the URL and the
options and open the store (or the run) themselves: no array travels from the
client to the workers.

Hygiene: the ``fingerprint`` attribute is the identity of the source (path,
size, mtime; URL, size, ETag; or a content hash) and of every parameter that
shapes the data.
A complete store with the same fingerprint is reused without reading the run,
once its layout is checked against the digests recorded when it was completed
(``integrity``: array metadata, voxel indices, attributes) and every ``bold``
chunk is found: a damaged store is an error (:class:`StoreDamagedError`), never
read, rebuilt by ``overwrite=True``. An incomplete one with the same
fingerprint is resumed (blocks whose ``ingest_done`` flag is set are kept); any
other daskglm store at that location is emptied and rebuilt, with a warning. A
store is recognised as daskglm's by the ``daskglm_store_format`` attribute of
its root metadata, the first thing written (in one write); a location holding
anything else (a folder of other files, hidden ones included, another zarr
group, a file) is refused, never deleted. All attributes are written in one
write once the arrays exist, ``complete`` only after every block is written.
A rebuild first rewrites the root metadata without fingerprint (nothing left
behind can be taken for complete or resumable), then deletes the store's own
members, never the folder: a symlinked store is rebuilt in its target.

Crash safety and concurrency: every chunk write is atomic (zarr writes a
``.partial`` file and renames it; an object store stores each chunk in one
request), a block's ``ingest_done`` flag is written after its rows and the
store's ``complete`` flag after every block, so a process killed at any point
leaves a store that is either complete or resumed by the next run (only the
unflagged blocks are ingested again; ``.partial`` debris is swept before
``complete``). Two processes ingesting into the same local store are serialised
by :func:`store_lock` (see :mod:`daskglm.store.locks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from typing import Any, NamedTuple

import dask
import numpy as np
import xarray as xr

from ..io.cifti import is_cifti, read_cifti_columns
from ..io.grid import Grid, analysis_grid, check_target, resample_volumes, same_grid
from ..io.nifti import (
    RunInfo,
    content_sha1,
    inspect_run,
    is_url,
    kept_open,
    load_mask,
    mask_from_mean,
    read_volumes,
    url_identity,
)
from ..kernels import smoothing as _smoothing
from ..kernels import volume as _volume
from ..runtime import plan as _plan
from ..runtime.cluster import compute, phase, workers_in_this_process
from .cache import enforce_cache_cap
from .locks import store_lock
from .summary import (
    graph_constant,
    gzip_indexes,
    in_memory_blocks,
    indexes_pay,
    mean_image,
    run_summary,
)
from .zarrio import (
    STORE_FORMAT,
    StoreDamagedError,
    StoreIncompleteError,
    check_protocol,
    check_replaceable,
    chunk_record,
    create_store,
    fsspec_kwargs,
    layout_digests,
    open_group,
    open_run,
    read_attrs,
    rebuild_reason,
    resolve_compressor,
    same_store,
    store_url,
    stored_mask,
    sweep_partials,
)

__all__ = ["mean_image", "ingest_run", "ingest_runs", "parameters_key", "open_run", "read_bytes", "store_lock",
           "StoreDamagedError", "StoreIncompleteError", "STORE_FORMAT"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- tasks


class BlockWork(NamedTuple):
    """What every ingestion task of one run shares (small values; the crop and the gzip index,
    which can be large, are graph constants of their own, sent once)."""

    store: str
    storage_options: dict | None
    #: Gaussian standard deviation per axis, in voxels of the working grid.
    sigma: np.ndarray
    #: ``(run_affine, grid_affine, grid_shape, vmin, vmax)`` when volumes go onto another grid
    #: first (see :mod:`daskglm.io.grid`), else None.
    resample: tuple | None
    #: Volumes read at a time (None: the whole block at once).
    step: int | None
    #: The smoothing filter (see :func:`daskglm.kernels.volume.smooth_and_mask`; same numbers either way).
    compiled: bool | None
    #: Where in each volume to read (the crop's slices: a file on the working grid), or None: whole volumes.
    box: tuple[slice, slice, slice] | None = None


def _ingest_block(work: BlockWork, crop: _volume.Crop, gzip_index: bytes | None, source: str | np.ndarray,
                  blocks: list[tuple[int, int, int]]) -> list[int]:
    """Task: for each ``(block, start, stop)`` of ``blocks``, in order, read volumes ``start:stop``
    of ``source`` (a path, or the block's array), (resample,) smooth, mask, write the rows of block
    ``block``, flag it.

    One block per task, or every block of a compressed run without seek index
    (read from start to end through one stream: see :func:`_Ingestion.tasks`).
    Volumes are read ``work.step`` at a time into one float32 row buffer,
    written to the store in a single call. With ``work.box`` only the crop is
    read (see :func:`daskglm.io.nifti.read_volumes`): a small mask reads a slab
    of each volume.
    """
    store, storage_options, sigma, resample, step, compiled, box = work
    plan = _volume.mask_plan(crop, sigma)  # once per task, not once per read
    read_crop = crop if box is None else _volume.Crop((slice(None),) * 3, crop.mask)
    options = fsspec_kwargs(source, storage_options) if isinstance(source, str) else {}
    group = open_group(store, "r+", storage_options)
    # The file opened once for the task's reads, which continue one another (see kept_open).
    with kept_open(source, gzip_index, **options) if isinstance(source, str) else contextlib.nullcontext():
        for block, start, stop in blocks:
            rows = np.empty((stop - start, plan.index.size), dtype=np.float32)
            per_read = step or (stop - start)
            for a in range(start, stop, per_read):
                b = min(a + per_read, stop)
                if isinstance(source, str):
                    volumes = read_volumes(source, a, b, gzip_index, **options, box=box)
                else:
                    volumes = source[..., a - start:b - start]
                if resample is not None:
                    volumes = resample_volumes(volumes, *resample)
                _volume.smooth_and_mask(volumes, read_crop, sigma, out=rows[a - start:b - start], plan=plan,
                                        compiled=compiled)
                del volumes
            _bold_for_writing(group)[start:stop, :] = rows
            group["ingest_done"][block] = 1
            del rows
    return [block for block, _, _ in blocks]


def _ingest_columns(store: str, storage_options: dict | None, source: str, grayordinates: np.ndarray,
                    block: int, start: int, stop: int) -> int:
    """Task: every scan of voxels ``start:stop`` of a CIFTI run's store (its ``grayordinates``), written
    as whole column chunks of ``bold``; flag ``block``.

    A dense time series holds each grayordinate's time series contiguously: a
    block of columns is one read of the file, where a block of rows reads all of
    it (see :func:`daskglm.io.cifti.read_cifti_volumes`). As
    :func:`daskglm.kernels.volume.smooth_and_mask` with no smoothing: float32,
    non-finite values set to 0.
    """
    try:
        values = read_cifti_columns(source, grayordinates)
    except Exception as exc:
        raise ValueError(f"{source!r}: cannot read grayordinates {grayordinates[0]}..{grayordinates[-1]}: "
                         f"{exc}") from exc
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, then 0 below
        columns = np.asarray(values, dtype=np.float32)
    if values.dtype.kind not in "iub" and not np.isfinite(columns).all():
        columns = np.where(np.isfinite(columns), columns, np.float32(0))
    group = open_group(store, "r+", storage_options)
    _bold_for_writing(group)[:, start:stop] = columns
    group["ingest_done"][block] = 1
    return block


def _bold_for_writing(group: Any) -> Any:
    """The store's ``bold`` array, set to write every chunk."""
    bold = group["bold"]
    if hasattr(bold, "with_config"):  # zarr >= 3.1.4
        # Every chunk is written: zarr's default first compares each with the fill value to skip
        # empty ones (a pass over the block; an absent chunk reads as the same zeros anyway).
        bold = bold.with_config({"write_empty_chunks": True})
    return bold



# --------------------------------------------------------------------------- ingestion




def _parameters(fwhm: float | None, mask_id: Any, t_chunk: Any, v_chunk: Any,
                target: tuple[Any, Any] = (None, None)) -> dict:
    """The ingestion parameters that shape a store's data, as JSON values (fingerprints, store names)."""
    target_affine, target_shape = target
    return {
        "smoothing_fwhm": None if fwhm is None else np.asarray(fwhm, dtype=float).tolist(),
        "mask": mask_id,
        "target_affine": None if target_affine is None else np.round(target_affine, 6).tolist(),
        "target_shape": None if target_shape is None else list(target_shape),
        "t_chunk": t_chunk,
        "v_chunk": v_chunk,
    }


def _fingerprint(info: RunInfo, fwhm: float | None, mask_id: Any, t_chunk: Any, v_chunk: Any,
                 compressor: str | None, target: tuple[Any, Any] = (None, None), by_columns: bool = False) -> str:
    # by_columns: ``ingest_done`` flags blocks of columns, not of rows; a store of the other kind,
    # interrupted, must not be resumed with its flags read the wrong way (volume fingerprints unchanged).
    return json.dumps(
        {"format": STORE_FORMAT, "source": info.provenance, "compressor": compressor,
         **_parameters(fwhm, mask_id, t_chunk, v_chunk, target), **({"blocks": "columns"} if by_columns else {})},
        sort_keys=True,
    )


def _mask_identity(mask_img: Any, storage_options: dict | None = None) -> Any:
    """What identifies the mask *argument* (before loading it) in the fingerprint."""
    if mask_img is None:
        return "compute_epi_mask"
    if is_url(mask_img):
        try:
            return url_identity(mask_img, storage_options)
        except OSError:  # missing: load_mask says so
            return {"url": mask_img}
    if isinstance(mask_img, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(mask_img))
        try:
            stat = os.stat(path)
        except OSError:
            return {"path": path}
        return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {
        "sha1": content_sha1(mask_img),
        "affine": np.asarray(mask_img.affine).round(6).tolist(),
    }


def parameters_key(mask_img: Any, smoothing_fwhm: float | None, target_affine: Any = None,
                   target_shape: Any = None, t_chunk: int | None = None, v_chunk: int | None = None,
                   storage_options: dict | None = None) -> str:
    """A short key of the ingestion parameters that shape a run's store.

    Models name each run's store after its source *and* this key, so that
    analyses of one run with other masks or smoothing keep one store each:
    switching back to earlier parameters reuses what was built.

    Parameters
    ----------
    mask_img, smoothing_fwhm, target_affine, target_shape, t_chunk, v_chunk, storage_options
        As :func:`ingest_run`.

    Returns
    -------
    str
        16 hexadecimal digits.
    """
    target = (target_affine, None if target_shape is None else [int(n) for n in target_shape])
    text = json.dumps(_parameters(smoothing_fwhm, _mask_identity(mask_img, storage_options), t_chunk, v_chunk,
                                  target), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def read_bytes(infos: list[RunInfo], mask_img: Any, smoothing_fwhm: float | None = None, target_affine: Any = None,
               target_shape: Any = None, storage_options: dict | None = None) -> int:
    """The bytes ingestion reads from some runs: what an embedded cluster is sized by.

    An uncompressed file on the mask's grid is read within the mask's crop
    (its bounding box grown by the smoothing kernel's radius; see
    :func:`_ingest_block`): a region of interest reads a slab of each volume.
    Anything else is read whole: a ``.nii.gz`` (decompressed from its start),
    an in-memory image, a run resampled onto another grid, or a run whose mask
    is computed from its mean.

    Parameters
    ----------
    infos : list of RunInfo
        :func:`daskglm.io.nifti.inspect_run` of each run.
    mask_img, smoothing_fwhm, target_affine, target_shape, storage_options
        As :func:`ingest_run`.

    Returns
    -------
    int
        Uncompressed bytes, over all the runs.
    """
    whole = [mask_img is None or info.compressed or info.path is None or is_cifti(info.path)
             or target_affine is not None or target_shape is not None for info in infos]
    total = sum(int(info.data_bytes) for info, read_whole in zip(infos, whole) if read_whole)
    if all(whole):
        return total
    mask, mask_affine, _ = load_mask(mask_img, storage_options)  # once for every run
    for info in (info for info, read_whole in zip(infos, whole) if not read_whole):
        if not mask.any() or not same_grid(mask_affine, mask.shape, info.affine, info.volume_shape):
            total += int(info.data_bytes)
            continue
        crop = _volume.smoothing_crop(mask, _volume.fwhm_to_sigma(smoothing_fwhm, info.affine))
        total += int(info.data_bytes * crop.mask.size // int(np.prod(info.volume_shape)))
    return total


def ingest_run(
    run_img: Any,
    store: str | os.PathLike,
    mask_img: Any = None,
    smoothing_fwhm: float | None = None,
    t_chunk: int | None = None,
    v_chunk: int | None = None,
    client: Any = None,
    storage_options: dict | None = None,
    compressor: str | None = "auto",
    overwrite: bool = False,
    target_affine: Any = None,
    target_shape: Any = None,
) -> xr.Dataset:
    """Convert one 4D run into a zarr store of smoothed, masked voxel time series.

    Volumes are read in blocks of ``t_chunk`` straight from the file, smoothed
    as nilearn's maskers do (see :mod:`daskglm.kernels.volume`), masked, and written as
    rows of ``bold(time, voxel)``, each block as one Dask task on ``client``
    (see :func:`daskglm.runtime.cluster.get_client`).

    Parameters
    ----------
    run_img : path, fsspec URL or nibabel image
        A 4D run, ``.nii`` or ``.nii.gz``.
    store : str or path
        Where the zarr store goes: a local path or an fsspec URL.
    mask_img : path, fsspec URL or nibabel image, optional
        Binary mask. ``None``: nilearn's ``compute_epi_mask`` on the run's mean
        volume (one extra pass over the run); for a CIFTI-2 dense time series,
        every grayordinate. A mask on another grid than the
        run is handled as nilearn's masker does: the run is resampled onto
        the mask's cropped grid, with nilearn's warning (see :mod:`daskglm.io.grid`).
    smoothing_fwhm : float, optional
        Gaussian smoothing FWHM in mm, as nilearn's ``smoothing_fwhm``.
    t_chunk, v_chunk : int, optional
        Chunk sizes along time and voxel; chosen from the data size when omitted.
    client : distributed.Client, str or None, optional
        Where the ingestion runs, resolved by
        :func:`daskglm.runtime.cluster.get_client`: a client, a local
        scheduler name, a scheduler address or file, or ``None`` for the
        active client, ``DASK_SCHEDULER_ADDRESS`` or an embedded ``LocalCluster``.
    storage_options : dict, optional
        fsspec options for every remote location of the call: a URL ``store``,
        a URL ``run_img`` or ``mask_img`` (ignored for local paths).
    compressor : {"auto", "lz4", "zstd", None}
        Blosc codec of the ``bold`` chunks of a new store (lossless; every
        chunk also carries a crc32c checksum). ``"auto"``: ``"lz4"``,
        bit-shuffled (see docs/cache.md for the sizes); ``"zstd"``: hardly
        smaller, slower to write; ``None``: uncompressed. An existing store is
        reused whatever its codec (``overwrite=True`` rebuilds it with this one).
    overwrite : bool, default=False
        Rebuild the store even if it is complete and up to date.
    target_affine, target_shape : optional
        As nilearn's ``FirstLevelModel``: the mask goes onto this grid
        (nearest neighbour) and each block of volumes is resampled onto its
        bounding box (continuous interpolation) before smoothing.

    Returns
    -------
    xarray.Dataset
        The store opened lazily (see :func:`open_run`): ``bold`` of shape
        ``(n_scans, n_voxels)``.
    """
    return ingest_runs(
        [run_img], [store], mask_img=mask_img, smoothing_fwhm=smoothing_fwhm, t_chunk=t_chunk,
        v_chunk=v_chunk, client=client, storage_options=storage_options, compressor=compressor,
        overwrite=overwrite, target_affine=target_affine, target_shape=target_shape,
    )[0]


def ingest_runs(
    run_imgs: list,
    stores: list,
    mask_img: Any = None,
    smoothing_fwhm: float | None = None,
    t_chunk: int | None = None,
    v_chunk: int | None = None,
    client: Any = None,
    storage_options: dict | None = None,
    compressor: str | None = "auto",
    overwrite: bool = False,
    target_affine: Any = None,
    target_shape: Any = None,
    columns: bool = False,
) -> list[xr.Dataset]:
    """:func:`ingest_run` for several runs at once, one store each.

    Every run is checked before any store is touched; then the stores are
    locked (in sorted order), complete ones reused, and the blocks of all the
    other runs go into one computation (as do the ``.nii.gz`` seek indexes),
    so small runs keep every worker busy instead of waiting for each other.

    Parameters
    ----------
    run_imgs : list of path, fsspec URL or nibabel image
        The 4D runs, ``.nii`` or ``.nii.gz``.
    stores : list of str or path
        One distinct store per run.
    mask_img, smoothing_fwhm, t_chunk, v_chunk, client, storage_options, compressor, overwrite
        As :func:`ingest_run`, for every run (``mask_img=None``: each run's own
        ``compute_epi_mask``).
    target_affine, target_shape
        As :func:`ingest_run`.
    columns : bool, default=False
        Open the stores in whole voxel columns (see :func:`open_run`).

    Returns
    -------
    list of xarray.Dataset
        The stores opened lazily, in the order of ``run_imgs``.
    """
    if len(run_imgs) != len(stores):
        raise ValueError(f"got {len(run_imgs)} runs but {len(stores)} stores: give one store per run")
    urls = [store_url(store) for store in stores]
    shared = sorted({u for u in urls if urls.count(u) > 1})
    if shared:
        raise ValueError(f"two runs cannot share a store; {shared[0]!r} is given more than once")
    _check_in_process_locations([*urls, *(run for run in run_imgs if isinstance(run, str)),
                                 *([mask_img] if isinstance(mask_img, str) else [])], client)
    jobs = [
        _Ingestion(run, url, mask_img=mask_img, smoothing_fwhm=smoothing_fwhm, t_chunk=t_chunk,
                   v_chunk=v_chunk, storage_options=storage_options, compressor=compressor,
                   target=check_target(target_affine, target_shape))
        for run, url in zip(run_imgs, urls)
    ]
    # One ingestion of a local store at a time: a second process waits here, then
    # finds the store complete (reused) or interrupted (resumed).
    with contextlib.ExitStack() as locks:
        for url in sorted(urls):
            locks.enter_context(store_lock(url))
        results: list[xr.Dataset | None] = [job.reuse(overwrite, columns) for job in jobs]
        todo = [job for job, done in zip(jobs, results) if done is None]
        new = [job for job in todo if not job.resume]  # a resumed store holds its run's index, if any
        runs = _which_runs([jobs.index(job) for job in todo], len(jobs))  # the progress's label
        infos = [job.info for job in new]
        indexes = dict(zip(map(id, new), gzip_indexes(infos, client, storage_options, f"gzip index of {runs}",
                                                      within=False, build=indexes_pay(infos, client))))
        for job in todo:
            with phase(f"ingesting {_which_runs([jobs.index(job)], len(jobs))}: first pass (mean, value range)"):
                job.prepare(indexes.get(id(job)), client)
        tasks = [task for job in todo for task in job.tasks()]
        if tasks:
            with phase(f"ingesting {runs}"):
                compute(*tasks, client=client)
        opened = [done if done is not None else job.finish(columns) for job, done in zip(jobs, results)]
        if todo:  # new stores in the default cache: keep it under daskglm.cache-max-size, if set
            enforce_cache_cap([job.store for job in todo], keep=urls)
        return opened


def _which_runs(indexes: list[int], n: int) -> str:
    """``run 2/3``, ``3 runs`` (all of them), ``runs 1, 3 of 3``: for the progress's labels."""
    if len(indexes) == 1:
        return f"run {indexes[0] + 1}/{n}"
    if len(indexes) == n:
        return f"{n} runs"
    return f"runs {', '.join(str(i + 1) for i in indexes)} of {n}"


def _check_in_process_locations(locations: list[str], client: Any) -> None:
    """Refuse, before any work, an fsspec ``memory://`` location when the tasks run in other
    processes (each would see an empty filesystem of its own)."""
    memory = [loc for loc in locations if str(loc).lower().startswith("memory://")]
    if memory and not workers_in_this_process(client):
        raise ValueError(f"{memory[0]!r}: a memory:// location lives in this process, and the Dask workers are "
                         "other processes: use a local path or an object store URL, or client='threads'")


def _resumable(store: str, storage_options: dict | None) -> bool:
    """Whether every array of an interrupted store is there to resume into (else it is rebuilt)."""
    try:
        group = open_group(store, "r", storage_options)
        return all(name in group for name in ("bold", "i", "j", "k", "ingest_done", "gzip_index"))
    except Exception:
        return False


class _Ingestion:
    """One run's ingestion, in the steps :func:`ingest_runs` interleaves across runs."""

    def __init__(self, run_img: Any, store: str, *, mask_img: Any, smoothing_fwhm: Any, t_chunk: Any,
                 v_chunk: Any, storage_options: dict | None, compressor: Any, target: tuple) -> None:
        self.run_img, self.store, self.mask_img = run_img, store, mask_img
        self.fwhm, self.t_chunk, self.v_chunk = smoothing_fwhm, t_chunk, v_chunk
        self.storage_options, self.target = storage_options, target
        self.info = inspect_run(run_img, storage_options)
        _volume.check_smoothing_fwhm(smoothing_fwhm, self.info.affine, self.info.volume_shape)  # validates it early
        self.compressor = resolve_compressor(compressor, store)
        _plan.check_positive("t_chunk", t_chunk)
        _plan.check_positive("v_chunk", v_chunk)
        check_protocol(store)
        # A local CIFTI dense time series, unsmoothed and not resampled, is ingested in blocks of
        # columns, the file's own order (see _ingest_columns); every other run in blocks of volumes.
        path = self.info.path
        self.by_columns = (path is not None and is_cifti(path) and not is_url(path) and smoothing_fwhm is None
                           and target == (None, None))
        self.fingerprint = _fingerprint(self.info, smoothing_fwhm, _mask_identity(mask_img, storage_options),
                                        t_chunk, v_chunk, self.compressor, target, self.by_columns)
        self.resume = False

    def reuse(self, overwrite: bool, columns: bool = False) -> xr.Dataset | None:
        """The store opened if it is complete and up to date; else None (resume or rebuild).

        Raises
        ------
        FileExistsError
            Something that is not a daskglm store is at the location (checked before any work).
        StoreDamagedError
            The store is complete and up to date but damaged (``overwrite=True`` rebuilds it).
        """
        existing = None if overwrite else read_attrs(self.store, self.storage_options)
        self.existing = existing
        self.resume = same_store(existing, self.fingerprint) and _resumable(self.store, self.storage_options)
        if self.resume and existing.get("complete"):
            logger.info("reusing complete store %s", self.store)
            return open_run(self.store, self.storage_options, columns=columns)
        check_replaceable(self.store, self.storage_options)
        if existing and existing.get("fingerprint") is not None and not self.resume:
            warnings.warn(f"the store at {self.store!r} {rebuild_reason(existing)}: rebuilding it",
                          UserWarning, stacklevel=4)
        return None

    def prepare(self, gzip_index: bytes | None, client: Any) -> None:
        """Resume the store (blocks already flagged done are skipped) or create it afresh."""
        info, store, storage_options = self.info, self.store, self.storage_options
        if self.resume:
            existing = self.existing
            group = open_group(store, "r", storage_options)
            shape = tuple(int(n) for n in existing["volume_shape"])
            resampled = existing.get("resampled_from") or {}
            crop, value_range = resampled.get("crop"), resampled.get("value_range")
            grid = Grid(np.asarray(existing["affine"], dtype=np.float64), shape, stored_mask(group, shape),
                        None if not crop else tuple(slice(a, b) for a, b in crop))
            gzip_index = bytes(group["gzip_index"][:]) or None
            plan = _plan.ChunkPlan(group["bold"].chunks[0], group["bold"].chunks[1])
            done = np.asarray(group["ingest_done"][:], dtype=bool)
            logger.info("resuming store %s: %d of %d blocks done", store, done.sum(), done.size)
        else:
            value_range = None
            if self.mask_img is None and is_cifti(self.run_img):  # grayordinates: every one is in the brain
                mask, mask_affine = np.ones(tuple(info.volume_shape), bool), np.asarray(info.affine)
                mask_provenance = {"source": "every grayordinate"}
                name = "every grayordinate of the CIFTI run"
            elif self.mask_img is None:
                mean, *value_range = run_summary(self.run_img, info, gzip_index, client, storage_options)
                mask, mask_affine = mask_from_mean(mean, info.affine, *self.target)
                mask_provenance = {"source": "compute_epi_mask"}
                name = "the mask computed from the run (compute_epi_mask)"
            else:
                mask, mask_affine, mask_provenance = load_mask(self.mask_img, storage_options)
                name = f"mask {mask_provenance['source']!r}"
            grid = analysis_grid(mask, mask_affine, info.affine, info.volume_shape, *self.target, name=name)
            if grid.resample and value_range is None:
                value_range = run_summary(self.run_img, info, gzip_index, client, storage_options, False)[1:]
            volume_size = max(int(np.prod(info.volume_shape)), int(np.prod(grid.shape)))
            plan = _plan.plan_chunks(info.n_scans, int(grid.mask.sum()), volume_size, self.t_chunk, self.v_chunk)
            n_blocks = len(_plan.block_bounds(*((int(grid.mask.sum()), plan.v_chunk) if self._columns(grid)
                                                 else (info.n_scans, plan.t_chunk))))
            create_store(store, storage_options, info, grid, mask_provenance, plan, n_blocks,
                          gzip_index, self.fwhm, self.fingerprint, self.compressor, value_range)
            done = np.zeros(n_blocks, dtype=bool)
        self.grid, self.plan, self.done = grid, plan, done
        self.gzip_index, self.value_range = gzip_index, value_range

    def _columns(self, grid: Grid) -> bool:
        """Whether the run is ingested in blocks of columns (a mask on another grid is resampled: rows)."""
        return self.by_columns and not grid.resample

    def tasks(self) -> list:
        """One delayed ``_ingest_block`` (or ``_ingest_columns``) per block not yet flagged done."""
        info, grid, plan = self.info, self.grid, self.plan
        if self._columns(grid):
            # The grid of a CIFTI run is (n, 1, 1): a mask voxel's flat index is its grayordinate.
            grayordinates = np.flatnonzero(grid.mask.reshape(-1))
            return [
                dask.delayed(_ingest_columns, pure=False)(self.store, self.storage_options, info.path,
                                                          grayordinates[start:stop], b, start, stop)
                for b, (start, stop) in enumerate(_plan.block_bounds(grayordinates.size, plan.v_chunk))
                if not self.done[b]
            ]
        bounds = _plan.block_bounds(info.n_scans, plan.t_chunk)
        work_affine, crop_shape, work_mask = grid.working_grid()  # where volumes are smoothed and masked
        sigma = _volume.fwhm_to_sigma(self.fwhm, work_affine)
        crop = _volume.smoothing_crop(work_mask, sigma)
        resample = (info.affine, work_affine, crop_shape, *self.value_range) if grid.resample else None
        blocks = ([info.path] * len(bounds) if info.path is not None
                  else in_memory_blocks(self.run_img, bounds))
        # Large constants are graph keys of their own, sent once (not once per task).
        crop_key, index_key = graph_constant(crop), graph_constant(self.gzip_index)
        # A file on the working grid is read within the crop, anything else whole.
        box = crop.slices if info.path is not None and resample is None else None
        read_size = crop.mask.size if box is not None else max(int(np.prod(info.volume_shape)),
                                                                int(np.prod(crop_shape)))
        step = _plan.volumes_per_read(read_size, plan.t_chunk)
        compiled = _smoothing.AVAILABLE and _plan.compiled_smoothing_pays(crop.mask.size, info.n_scans)
        work = BlockWork(self.store, self.storage_options, sigma, resample, step, compiled, box)
        todo = [(b, start, stop) for b, (start, stop) in enumerate(bounds) if not self.done[b]]
        if info.path is not None and info.compressed and self.gzip_index is None:
            # No seek index (see daskglm.store.summary.indexes_pay): one task reads the run from start to end.
            return [dask.delayed(_ingest_block, pure=False)(work, crop_key, None, info.path, todo)] if todo else []
        return [dask.delayed(_ingest_block, pure=False)(work, crop_key, index_key, blocks[b], [(b, start, stop)])
                for b, start, stop in todo]

    def finish(self, columns: bool = False) -> xr.Dataset:
        """Check every block is flagged, then mark the store complete (last) and open it."""
        group = open_group(self.store, "r+", self.storage_options)
        if not np.asarray(group["ingest_done"][:], dtype=bool).all():
            raise StoreIncompleteError(f"ingestion into {self.store!r} did not write every block")
        sweep_partials(self.store)
        # Last, in one write with the layout's digests: only now is the store usable.
        integrity = {**layout_digests(group),
                     "bold_chunks": chunk_record(self.store, "bold", group["bold"], self.storage_options)[0]}
        group.attrs.put({**group.attrs.asdict(), "complete": True, "integrity": integrity})
        return open_run(self.store, self.storage_options, columns=columns)
