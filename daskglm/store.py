"""The zarr edge: ingest a NIfTI run into a zarr store and open it as xarray.

Store layout (a zarr v3 group, local path or fsspec URL)::

    bold(time, voxel)        float32, chunks (t_chunk, v_chunk), smoothed and masked
    i, j, k (voxel,)         int32 voxel indices in the volume (coordinates of bold)
    ingest_done (block,)     uint8, one flag per block of t_chunk volumes, set after its write
    gzip_index (byte,)       uint8, indexed_gzip seek index of a .nii.gz source (maybe empty)
    attrs                    daskglm_store_format, fingerprint, affine, volume_shape,
                             n_scans, t_r, smoothing_fwhm, source, mask, chunks,
                             complete (written last)

Remote locations: a store, a run or a mask may be an fsspec URL
(``s3://bucket/stores/run-1.zarr``); one ``storage_options`` dict serves every
URL of a call and is ignored for local paths. Tasks receive the URL and the
options and open the store (or the run) themselves: no array travels from the
client to the workers.

Hygiene: the ``fingerprint`` attribute is the identity of the source (path,
size, mtime; URL, size, ETag; or a content hash) and of every parameter that
shapes the data.
A complete store with the same fingerprint is reused without reading the run;
an incomplete one with the same fingerprint is resumed (blocks whose
``ingest_done`` flag is set are kept); any other store at that location (or
one of another store format) is deleted and rebuilt, with a warning; a
location holding anything but a daskglm store (a folder of other files, a
file) is refused, never deleted. ``complete`` is set only after every block
is written.

Crash safety and concurrency: every chunk write is atomic (zarr writes a
``.partial`` file and renames it; an object store stores each chunk in one
request), a block's ``ingest_done`` flag is written after its rows and the
store's ``complete`` flag after every block, so a process killed at any point
leaves a store that is either complete or resumed by the next run (only the
unflagged blocks are ingested again; ``.partial`` debris is swept before
``complete``). Two processes ingesting into the same *local* store are
serialised by a lock: an exclusive ``flock`` on ``<store>.lock``, a file next
to the store that records the holder (pid, host, time) and is removed on
release. The second process waits, then finds the store complete and reuses
it (or resumes it if the first one failed). The kernel releases the lock when
its holder dies, even by SIGKILL, so a lock is never stale: a leftover file
is taken over. :func:`save_fit` takes the same lock. On a filesystem without
``flock`` support (some FUSE or Lustre mounts without ``-o flock``) a warning
says so and the work goes on unlocked. Stores at fsspec URLs (object
storage) are not locked: do not ingest one run into one remote store from
two processes at once (one store per source, as :class:`FirstLevelModel`
makes, never clashes across subjects).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
import xarray as xr
import zarr

try:
    import fcntl
except ImportError:  # not POSIX: no store locks
    fcntl = None  # type: ignore[assignment]

from . import _plan, _smoothing, _volume
from .cluster import compute, get_client
from .grid import Grid, analysis_grid, check_target, resample_volumes
from .nifti import (
    RunInfo,
    build_gzip_index,
    content_sha1,
    inspect_run,
    is_url,
    load_mask,
    mask_from_mean,
    read_volumes,
    url_identity,
)

__all__ = ["mean_image", "ingest_run", "ingest_runs", "open_run", "save_fit", "save_fits", "open_fit", "store_lock",
           "StoreIncompleteError", "STORE_FORMAT"]

logger = logging.getLogger(__name__)

#: Bumped whenever the layout changes; stores of another format are rebuilt.
STORE_FORMAT = 1
_INTERNAL_VARS = ["ingest_done", "gzip_index"]
_COMPRESSORS = ("lz4", "zstd", None)
#: ``compressor="auto"``: uncompressed chunks on a local disk (reading a column
#: of an HCP-sized run took 8 ms uncompressed vs 15 ms with lz4, writing 79 vs
#: 123 ms, for 1.37x less space; BENCHMARKS.md), lz4 on remote stores where
#: bytes cost more than decoding.
_AUTO_COMPRESSOR = {"local": None, "remote": "lz4"}


class StoreIncompleteError(RuntimeError):
    """A store exists but was not marked complete (interrupted ingestion)."""


# --------------------------------------------------------------------------- zarr helpers


def _url(store: str | os.PathLike) -> str:
    return os.fspath(store)


def _fsspec_kwargs(location: str, storage_options: dict | None) -> dict:
    """``{"storage_options": ...}`` for a remote location; ``{}`` for a local path.

    One ``storage_options`` serves every remote location of a call (store and
    input URLs); zarr and xarray refuse options for a local path, so they are
    dropped there. The same keyword suits :func:`read_volumes` and
    :func:`build_gzip_index`.
    """
    return {"storage_options": storage_options} if storage_options and is_url(location) else {}


def _open_group(store: str, mode: str, storage_options: dict | None) -> zarr.Group:
    return zarr.open_group(store, mode=mode, zarr_format=3, **_fsspec_kwargs(store, storage_options))


def _read_attrs(store: str, storage_options: dict | None) -> dict | None:
    """Attributes of an existing daskglm store, ``None`` if there is none."""
    try:
        return dict(_open_group(store, "r", storage_options).attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return None
    except Exception:  # something unreadable at that location: treat as foreign
        return {}


def _remove(store: str, storage_options: dict | None) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(store, **(storage_options if is_url(store) and storage_options else {}))
    fs.invalidate_cache(path)  # another process may have written there since we last listed
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _shared(value: Any) -> Any:
    """A constant many tasks use, as one graph key (``None`` stays ``None``)."""
    return None if value is None else dask.delayed(value, traverse=False)


def _sweep_partials(store: str) -> None:
    """Remove the ``*.partial`` files a killed writer left in a local store.

    zarr writes a chunk to ``<key>.<uuid>.partial`` and renames it; a process
    killed in between leaves that file. The chunk itself is then rewritten
    whole by the retried task, so the leftover is debris, never data.
    """
    if is_url(store):
        return  # object stores write each chunk in one request: nothing to sweep
    for root, _, files in os.walk(_local_path(store)):
        for name in files:
            if name.endswith(".partial"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(root, name))


def _local_path(store: str) -> str:
    """The filesystem path of a local store (``file://`` and ``local://`` prefixes removed)."""
    return store.split("://", 1)[1] if "://" in store else store


#: errno values of a filesystem that does not support flock.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextlib.contextmanager
def store_lock(store: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of a local store for the duration of the block.

    The lock is an ``flock`` on ``<store>.lock`` (next to the store, so it
    exists before the store does). The file holds the holder's pid, host and
    start time, shown to a process that has to wait, and is removed on
    release. The kernel drops the lock when its holder dies, whatever the
    signal: a file left by a killed process is simply taken over. A no-op for
    fsspec URLs and where ``fcntl`` does not exist. Not re-entrant: a second
    ``store_lock`` of the same store inside the block waits forever.

    Parameters
    ----------
    store : str or path
        The store (local path, ``file://`` URL, or any fsspec URL).

    Raises
    ------
    OSError
        The folder of the store cannot be created (the message names the store).
    """
    store = os.fspath(store)
    if is_url(store) or fcntl is None:
        yield
        return
    folder, name = os.path.split(os.path.abspath(_local_path(store)).rstrip(os.sep))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the store at {store!r}: {exc}") from exc
    # One lock per folder, however it is reached (relative paths, symlinked parents).
    path = os.path.join(os.path.realpath(folder), f"{name}.lock")
    fd = _acquire(path, store)
    try:
        yield
    finally:
        if fd is not None:
            # Unlinked while still held: a process that opened this file meanwhile
            # sees, once it holds the lock, that the path no longer names it, and retries.
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)


def _acquire(path: str, store: str) -> int | None:
    """An open descriptor of ``path`` holding its exclusive flock (None: flock unsupported)."""
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


def _resolve_compressor(compressor: str | None, store: str) -> str | None:
    if compressor == "auto":
        return _AUTO_COMPRESSOR["remote" if is_url(store) else "local"]
    _codec(compressor)
    return compressor


def _codec(compressor: str | None) -> Any:
    if compressor not in _COMPRESSORS:
        raise ValueError(f"compressor must be one of {('auto', *_COMPRESSORS)}; got {compressor!r}")
    if compressor is None:
        return None
    return zarr.codecs.BloscCodec(cname=compressor, clevel=3, shuffle="shuffle")


# --------------------------------------------------------------------------- tasks


def _ingest_block(
    store: str,
    storage_options: dict | None,
    source: str | np.ndarray,
    block: int,
    start: int,
    stop: int,
    crop: _volume.Crop,
    sigma: np.ndarray,
    gzip_index: bytes | None,
    resample: tuple | None = None,
    step: int | None = None,
    compiled: bool | None = None,
) -> int:
    """Task: read volumes ``start:stop``, (resample,) smooth, mask, write rows, flag the block.

    Volumes are read ``step`` at a time (default: all at once) into one
    float32 row buffer, written to the store in a single call.
    ``resample`` is ``(run_affine, grid_affine, grid_shape, vmin, vmax)``
    when the volumes go onto another grid first (see :mod:`daskglm.grid`).
    ``compiled`` chooses the smoothing filter (see
    :func:`daskglm._volume.smooth_and_mask`; the same numbers either way).
    """
    step = step or (stop - start)
    plan = _volume.mask_plan(crop, sigma)  # once per task, not once per read
    rows = np.empty((stop - start, plan.index.size), dtype=np.float32)
    for a in range(start, stop, step):
        b = min(a + step, stop)
        if isinstance(source, str):
            volumes = read_volumes(source, a, b, gzip_index, **_fsspec_kwargs(source, storage_options))
        else:
            volumes = source[..., a - start:b - start]
        if resample is not None:
            volumes = resample_volumes(volumes, *resample)
        _volume.smooth_and_mask(volumes, crop, sigma, out=rows[a - start:b - start], plan=plan,
                                compiled=compiled)
        del volumes
    group = _open_group(store, "r+", storage_options)
    group["bold"][start:stop, :] = rows
    group["ingest_done"][block] = 1
    return block


def _block_summary(source: str | np.ndarray, start: int, stop: int, gzip_index: bytes | None,
                   storage_options: dict | None = None, *, want_sum: bool = True
                   ) -> tuple[np.ndarray | None, float, float]:
    """Task: float64 sum of volumes ``start:stop`` (non-finite as 0), shape (x, y, z), or
    None; and their ``nanmin`` / ``nanmax``."""
    volumes = (read_volumes(source, start, stop, gzip_index, **_fsspec_kwargs(source, storage_options))
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


# --------------------------------------------------------------------------- ingestion


def _in_memory_blocks(run: Any, bounds: list[tuple[int, int]]) -> list[np.ndarray]:
    data = np.asanyarray(run.dataobj)
    return [data[..., a:b] for a, b in bounds]


def _fingerprint(info: RunInfo, fwhm: float | None, mask_id: Any, t_chunk: Any, v_chunk: Any,
                 compressor: str | None, target: tuple[Any, Any] = (None, None)) -> str:
    target_affine, target_shape = target
    return json.dumps(
        {
            "format": STORE_FORMAT,
            "source": info.provenance,
            "smoothing_fwhm": None if fwhm is None else np.asarray(fwhm, dtype=float).tolist(),
            "mask": mask_id,
            "target_affine": None if target_affine is None else np.round(target_affine, 6).tolist(),
            "target_shape": None if target_shape is None else list(target_shape),
            "t_chunk": t_chunk,
            "v_chunk": v_chunk,
            "compressor": compressor,
        },
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


def _create_store(
    store: str,
    storage_options: dict | None,
    info: RunInfo,
    grid: Grid,
    mask_provenance: dict,
    plan: _plan.ChunkPlan,
    n_blocks: int,
    gzip_index: bytes | None,
    fwhm: float | None,
    fingerprint: str,
    compressor: str | None,
    value_range: Any = None,
) -> None:
    attrs = {
        "daskglm_store_format": STORE_FORMAT,
        "fingerprint": fingerprint,
        "complete": False,
        "affine": np.asarray(grid.affine).tolist(),
        "volume_shape": list(grid.shape),
        # Runs resampled onto the grid (nilearn's masker rules, see daskglm.grid):
        "resampled_from": {"affine": info.affine.tolist(), "volume_shape": list(info.volume_shape),
                           "crop": [[sl.start, sl.stop] for sl in grid.crop],
                           "value_range": list(value_range)}
        if grid.resample else None,
        "n_scans": info.n_scans,
        "t_r": info.t_r,
        "smoothing_fwhm": None if fwhm is None else np.asarray(fwhm, dtype=float).tolist(),
        "source": info.provenance,
        "mask": mask_provenance,
        "chunks": {"time": plan.t_chunk, "voxel": plan.v_chunk},
    }
    _check_replaceable(store, storage_options)
    try:
        _remove(store, storage_options)
        group = _open_group(store, "w", storage_options)
    except Exception as exc:
        raise OSError(f"cannot create the store at {store!r}: {exc}") from exc
    mask = grid.mask
    n_voxels = int(mask.sum())
    group.create_array(
        "bold",
        shape=(info.n_scans, n_voxels),
        chunks=(plan.t_chunk, plan.v_chunk),
        dtype="float32",
        dimension_names=("time", "voxel"),
        compressors=_codec(compressor),
        fill_value=0.0,
        attributes={"coordinates": "i j k", "long_name": "BOLD signal, smoothed and masked"},
    )
    for axis, name in enumerate("ijk"):
        arr = group.create_array(
            name, shape=(n_voxels,), chunks=(n_voxels,), dtype="int32", dimension_names=("voxel",)
        )
        arr[:] = np.nonzero(mask)[axis].astype(np.int32)
    group.create_array(
        "ingest_done", shape=(n_blocks,), chunks=(1,), dtype="uint8",
        dimension_names=("block",), fill_value=0,
    )
    index = np.frombuffer(gzip_index or b"", dtype=np.uint8)
    gz = group.create_array(
        "gzip_index", shape=(index.size,), chunks=(max(index.size, 1),), dtype="uint8",
        dimension_names=("byte",), fill_value=0,
    )
    if index.size:
        gz[:] = index
    group.attrs.update(attrs)


#: What the root of a daskglm store holds (a store interrupted before its attributes were written too).
_STORE_ENTRIES = {"zarr.json", "bold", "i", "j", "k", "ingest_done", "gzip_index", "glm"}


def _check_protocol(store: str) -> None:
    """Refuse a store URL whose protocol fsspec does not know, before any work."""
    import fsspec

    for part in store.split("::"):  # fsspec chains: simplecache::s3://...
        if "://" not in part:
            continue
        protocol = part.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError as exc:
            raise ValueError(f"store {store!r}: unknown protocol {protocol!r} ({exc})") from None
        except ImportError as exc:
            raise ImportError(f"store {store!r}: protocol {protocol!r} needs a package that is not "
                              f"installed: {exc}") from exc


def _same_store(existing: dict | None, fingerprint: str) -> bool:
    """Whether the store's attributes say: this daskglm's format, same source and parameters."""
    return (bool(existing) and existing.get("daskglm_store_format") == STORE_FORMAT
            and existing.get("fingerprint") == fingerprint)


def _rebuild_reason(existing: dict) -> str:
    """Why a store that is there is not reused (for the warning)."""
    found = existing.get("daskglm_store_format")
    if not existing:
        return "holds no daskglm store attributes (unreadable, or its creation was interrupted)"
    if found != STORE_FORMAT:
        return f"has daskglm store format {found!r} while this daskglm writes format {STORE_FORMAT}"
    return "was made from another source or with other parameters"


def _check_replaceable(store: str, storage_options: dict | None) -> None:
    """Refuse to delete a location that holds anything but a daskglm store.

    Creating a store removes what is at its location first; a folder of other
    files (or a file) given as the store by mistake must survive that.
    Hidden entries (``.DS_Store``...) and ``.partial`` debris are ignored.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(store, **(storage_options if is_url(store) and storage_options else {}))
    try:
        fs.invalidate_cache(path)
        if not fs.exists(path):
            return
        entries = (None if fs.isfile(path) else
                   sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}))
    except OSError:
        return  # unreachable or unreadable: creating the store reports it
    if entries is not None:
        # hidden files, and .partial debris of a writer killed mid-rename (zarr.json.<uuid>.partial)
        entries = [name for name in entries if not name.startswith(".") and not name.endswith(".partial")]
        attrs = _read_attrs(store, storage_options) if entries else None
        if not entries or set(entries) <= _STORE_ENTRIES or (attrs and "daskglm_store_format" in attrs):
            return
    what = "a file" if entries is None else (f"a folder holding {entries[:5]}"
                                             f"{' and more' if len(entries) > 5 else ''}")
    raise FileExistsError(f"the store location {store!r} is {what}, not a daskglm store: refusing to "
                          "delete it to make a store there; give another store path")


def _stored_mask(group: zarr.Group, shape: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[group["i"][:], group["j"][:], group["k"][:]] = True
    return mask


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
    as nilearn's maskers do (see :mod:`daskglm._volume`), masked, and written as
    rows of ``bold(time, voxel)``, each block as one Dask task on the active
    client (see :func:`daskglm.cluster.get_client`).

    Parameters
    ----------
    run_img : path, fsspec URL or nibabel image
        A 4D run, ``.nii`` or ``.nii.gz``.
    store : str or path
        Where the zarr store goes: a local path or an fsspec URL.
    mask_img : path, fsspec URL or nibabel image, optional
        Binary mask. ``None``: nilearn's ``compute_epi_mask`` on the run's mean
        volume (one extra pass over the run). A mask on another grid than the
        run is handled as nilearn's masker does: the run is resampled onto
        the mask's cropped grid, with nilearn's warning (see :mod:`daskglm.grid`).
    smoothing_fwhm : float, optional
        Gaussian smoothing FWHM in mm, as nilearn's ``smoothing_fwhm``.
    t_chunk, v_chunk : int, optional
        Chunk sizes along time and voxel; chosen from the data size when omitted.
    client : see :func:`daskglm.cluster.get_client`
    storage_options : dict, optional
        fsspec options for every remote location of the call: a URL ``store``,
        a URL ``run_img`` or ``mask_img`` (ignored for local paths).
    compressor : {"auto", "lz4", "zstd", None}
        Blosc codec of the ``bold`` chunks. ``"auto"``: none for a local
        store (faster to write and read), lz4 for a URL store.
    overwrite : bool
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
    stores : list of str or path
        One distinct store per run.
    mask_img, smoothing_fwhm, t_chunk, v_chunk, client, storage_options, compressor, overwrite, target_affine, target_shape
        As :func:`ingest_run`, for every run (``mask_img=None``: each run's own
        ``compute_epi_mask``).
    columns : bool
        Open the stores in whole voxel columns (see :func:`open_run`).

    Returns
    -------
    list of xarray.Dataset
        The stores opened lazily, in the order of ``run_imgs``.
    """
    if len(run_imgs) != len(stores):
        raise ValueError(f"got {len(run_imgs)} runs but {len(stores)} stores: give one store per run")
    urls = [_url(store) for store in stores]
    shared = sorted({u for u in urls if urls.count(u) > 1})
    if shared:
        raise ValueError(f"two runs cannot share a store; {shared[0]!r} is given more than once")
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
        index_tasks = {id(job): _gzip_index_task(job.info, job.storage_options)
                       for job in todo if not job.resume}
        index_tasks = {key: task for key, task in index_tasks.items() if task is not None}
        indexes = (dict(zip(index_tasks, compute(*index_tasks.values(), client=client)))
                   if index_tasks else {})
        for job in todo:
            job.prepare(indexes.get(id(job)), client)
        tasks = [task for job in todo for task in job.tasks()]
        if tasks:
            compute(*tasks, client=client)
        return [done if done is not None else job.finish(columns) for job, done in zip(jobs, results)]


class _Ingestion:
    """One run's ingestion, in the steps :func:`ingest_runs` interleaves across runs."""

    def __init__(self, run_img: Any, store: str, *, mask_img: Any, smoothing_fwhm: Any, t_chunk: Any,
                 v_chunk: Any, storage_options: dict | None, compressor: Any, target: tuple) -> None:
        self.run_img, self.store, self.mask_img = run_img, store, mask_img
        self.fwhm, self.t_chunk, self.v_chunk = smoothing_fwhm, t_chunk, v_chunk
        self.storage_options, self.target = storage_options, target
        self.info = inspect_run(run_img, storage_options)
        _volume.fwhm_to_sigma(smoothing_fwhm, self.info.affine)  # validates smoothing_fwhm early
        self.compressor = _resolve_compressor(compressor, store)
        _plan._check_positive("t_chunk", t_chunk)
        _plan._check_positive("v_chunk", v_chunk)
        _check_protocol(store)
        self.fingerprint = _fingerprint(self.info, smoothing_fwhm, _mask_identity(mask_img, storage_options),
                                        t_chunk, v_chunk, self.compressor, target)
        self.resume = False

    def reuse(self, overwrite: bool, columns: bool = False) -> xr.Dataset | None:
        """The store opened if it is complete and up to date; else None (resume or rebuild)."""
        existing = None if overwrite else _read_attrs(self.store, self.storage_options)
        self.existing = existing
        self.resume = _same_store(existing, self.fingerprint)
        if self.resume and existing.get("complete"):
            logger.info("reusing complete store %s", self.store)
            return open_run(self.store, self.storage_options, columns=columns)
        if existing is not None and not self.resume and not overwrite:
            warnings.warn(f"the store at {self.store!r} {_rebuild_reason(existing)}: rebuilding it",
                          UserWarning, stacklevel=4)
        return None

    def prepare(self, gzip_index: bytes | None, client: Any) -> None:
        """Resume the store (blocks already flagged done are skipped) or create it afresh."""
        info, store, storage_options = self.info, self.store, self.storage_options
        if self.resume:
            existing = self.existing
            group = _open_group(store, "r", storage_options)
            shape = tuple(int(n) for n in existing["volume_shape"])
            resampled = existing.get("resampled_from") or {}
            crop, value_range = resampled.get("crop"), resampled.get("value_range")
            grid = Grid(np.asarray(existing["affine"], dtype=np.float64), shape, _stored_mask(group, shape),
                        None if not crop else tuple(slice(a, b) for a, b in crop))
            gzip_index = bytes(group["gzip_index"][:]) or None
            plan = _plan.ChunkPlan(group["bold"].chunks[0], group["bold"].chunks[1])
            done = np.asarray(group["ingest_done"][:], dtype=bool)
            logger.info("resuming store %s: %d of %d blocks done", store, done.sum(), done.size)
        else:
            value_range = None
            if self.mask_img is None:
                mean, *value_range = _run_summary(self.run_img, info, gzip_index, client, storage_options)
                mask, mask_affine = mask_from_mean(mean, info.affine, *self.target)
                mask_provenance = {"source": "compute_epi_mask"}
                name = "the mask computed from the run (compute_epi_mask)"
            else:
                mask, mask_affine, mask_provenance = load_mask(self.mask_img, storage_options)
                name = f"mask {mask_provenance['source']!r}"
            grid = analysis_grid(mask, mask_affine, info.affine, info.volume_shape, *self.target, name=name)
            if grid.resample and value_range is None:
                value_range = _run_summary(self.run_img, info, gzip_index, client, storage_options, False)[1:]
            volume_size = max(int(np.prod(info.volume_shape)), int(np.prod(grid.shape)))
            plan = _plan.plan_chunks(info.n_scans, int(grid.mask.sum()), volume_size, self.t_chunk, self.v_chunk)
            n_blocks = len(_plan.block_bounds(info.n_scans, plan.t_chunk))
            _create_store(store, storage_options, info, grid, mask_provenance, plan, n_blocks,
                          gzip_index, self.fwhm, self.fingerprint, self.compressor, value_range)
            done = np.zeros(n_blocks, dtype=bool)
        self.grid, self.plan, self.done = grid, plan, done
        self.gzip_index, self.value_range = gzip_index, value_range

    def tasks(self) -> list:
        """One delayed ``_ingest_block`` per block not yet flagged done."""
        info, grid, plan = self.info, self.grid, self.plan
        bounds = _plan.block_bounds(info.n_scans, plan.t_chunk)
        work_affine, crop_shape, work_mask = grid.working_grid()  # where volumes are smoothed and masked
        sigma = _volume.fwhm_to_sigma(self.fwhm, work_affine)
        crop = _volume.smoothing_crop(work_mask, sigma)
        resample = (info.affine, work_affine, crop_shape, *self.value_range) if grid.resample else None
        blocks = ([info.path] * len(bounds) if info.path is not None
                  else _in_memory_blocks(self.run_img, bounds))
        # Large constants are graph keys of their own, sent once (not once per task).
        crop_key, index_key = _shared(crop), _shared(self.gzip_index)
        step = _plan.volumes_per_read(max(int(np.prod(info.volume_shape)), int(np.prod(crop_shape))),
                                      plan.t_chunk)
        compiled = _smoothing.AVAILABLE and _plan.compiled_smoothing_pays(crop.mask.size, info.n_scans)
        return [
            dask.delayed(_ingest_block, pure=False)(
                self.store, self.storage_options, blocks[b], b, start, stop, crop_key, sigma, index_key,
                resample, step, compiled,
            )
            for b, (start, stop) in enumerate(bounds)
            if not self.done[b]
        ]

    def finish(self, columns: bool = False) -> xr.Dataset:
        """Check every block is flagged, then mark the store complete (last) and open it."""
        group = _open_group(self.store, "r+", self.storage_options)
        if not np.asarray(group["ingest_done"][:], dtype=bool).all():
            raise StoreIncompleteError(f"ingestion into {self.store!r} did not write every block")
        _sweep_partials(self.store)
        group.attrs["complete"] = True  # last: only now is the store usable
        return open_run(self.store, self.storage_options, columns=columns)


def _gzip_index_task(info: RunInfo, storage_options: dict | None) -> Any:
    """Delayed seek index of a ``.nii.gz`` run (one decompression pass), or None."""
    if info.path is None or not info.compressed:
        return None
    return dask.delayed(build_gzip_index)(info.path, info.data_bytes,
                                          **_fsspec_kwargs(info.path, storage_options))


def _gzip_index(info: RunInfo, client: Any, storage_options: dict | None) -> bytes | None:
    """The seek index of a ``.nii.gz`` run, computed now, or None."""
    task = _gzip_index_task(info, storage_options)
    return None if task is None else compute(task, client=client)[0]


def mean_image(run_img: Any, client: Any = None, storage_options: dict | None = None) -> Any:
    """Mean over time of a 4D run, computed out of core (one pass of block sums).

    Non-finite values count as 0, as nilearn's maskers see them.

    Parameters
    ----------
    run_img : path, fsspec URL or nibabel image
    client : see :func:`daskglm.cluster.get_client`
    storage_options : dict, optional

    Returns
    -------
    nibabel.Nifti1Image
        3D float64, on the run's grid.
    """
    import nibabel as nib

    info = inspect_run(run_img, storage_options)
    with get_client(client) as resolved:
        index = _gzip_index(info, resolved, storage_options)
        mean = _run_summary(run_img, info, index, resolved, storage_options)[0]
    return nib.Nifti1Image(mean, info.affine)


def _run_summary(run_img: Any, info: RunInfo, gzip_index: bytes | None, client: Any,
                 storage_options: dict | None = None, want_mean: bool = True
                 ) -> tuple[np.ndarray | None, float, float]:
    """One lazy pass over the run: its mean volume (x, y, z) if wanted, and its value range.

    The range is what nilearn's ``resample_img(clip=True)`` clips to (see
    :mod:`daskglm.grid`); the mean is what ``compute_epi_mask`` needs.
    """
    volume_size = int(np.prod(info.volume_shape))
    # A task holds its volumes as read plus float64 copies of one: budgeted like a row buffer.
    block = _plan.plan_chunks(info.n_scans, volume_size, volume_size).t_chunk
    bounds = _plan.block_bounds(info.n_scans, block)
    if info.path is not None:
        index_key = _shared(gzip_index)
        parts = [dask.delayed(_block_summary)(info.path, a, b, index_key, storage_options,
                                              want_sum=want_mean) for a, b in bounds]
    else:
        parts = [dask.delayed(_block_summary)(blk, 0, blk.shape[3], None, want_sum=want_mean)
                 for blk in _in_memory_blocks(run_img, bounds)]
    total, low, high = compute(dask.delayed(_combine_summaries)(parts), client=client)[0]
    return (None if total is None else total / info.n_scans), low, high


# --------------------------------------------------------------------------- opening


def open_run(store: str | os.PathLike, storage_options: dict | None = None, *,
             columns: bool = False) -> xr.Dataset:
    """Open a complete run store lazily.

    Parameters
    ----------
    store : str or path
    storage_options : dict, optional
    columns : bool
        ``True``: dask chunks of whole voxel columns (all scans by ``v_chunk``
        voxels), the fit's access pattern: one read task per column, so the
        graph of a long run stays small. ``False``: the store's chunks.

    Returns
    -------
    xarray.Dataset
        ``bold(time, voxel)`` float32 backed by dask with the store's chunks,
        coordinates ``i, j, k (voxel)``, and the store's attributes (affine,
        volume_shape, t_r, smoothing_fwhm, source, mask, chunks).

    Raises
    ------
    FileNotFoundError
        No store there.
    StoreIncompleteError
        The store was not marked complete.
    """
    store = _url(store)
    attrs = _read_attrs(store, storage_options)
    if attrs is None:
        raise FileNotFoundError(f"no daskglm store at {store!r}")
    if attrs.get("daskglm_store_format") != STORE_FORMAT:
        raise ValueError(
            f"{store!r} is not a daskglm run store of format {STORE_FORMAT} "
            f"(found format {attrs.get('daskglm_store_format')!r})"
        )
    if not attrs.get("complete"):
        raise StoreIncompleteError(
            f"the store at {store!r} is incomplete (interrupted ingestion?): rerun ingest_run"
        )
    ds = xr.open_zarr(
        store,
        consolidated=False,
        zarr_format=3,
        chunks={"time": -1} if columns else {},
        drop_variables=_INTERNAL_VARS,
        **_fsspec_kwargs(store, storage_options),
    )
    ds.attrs["store"] = store
    # Voxel indices are small and needed by every unmasking: hold them in memory,
    # read straight from zarr (a dask .load() would compute on a local scheduler).
    group = _open_group(store, "r", storage_options)
    return ds.assign_coords({name: ds[name].copy(data=group[name][:]) for name in "ijk"})


# --------------------------------------------------------------------------- fit results


# Fit persistence (``save_fits``, ``save_fit``, ``open_fit``...) lives in daskglm/_fitstore.py,
# which uses the helpers above; re-exported here.
from ._fitstore import (  # noqa: F401
    FIT_MEMORY_KEY,
    fit_memory_bytes,
    open_fit,
    reopen_fit,
    save_fit,
    save_fits,
)
