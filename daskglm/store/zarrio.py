"""The zarr side of a run store: its location, format and layout, created, checked and opened.

Everything here reads or writes a store's zarr group (a local path or an
fsspec URL; one ``storage_options`` serves every URL of a call) and nothing
reads a NIfTI run. :mod:`daskglm.store.ingest` ingests runs into the layout that
:func:`_create_store` makes (described in :mod:`daskglm.store.ingest`) and
:mod:`daskglm.glm.fitstore` writes fits into the stores; both open them with
these helpers. Before a store is made at a location, :func:`_check_replaceable`
refuses (never deletes) anything there but a daskglm store; a store of another
:data:`STORE_FORMAT` is rebuilt (:func:`_same_store`). :func:`open_run` opens a
complete store lazily as xarray.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ..io.grid import Grid
from ..io.nifti import RunInfo
from ..io.remote import is_url, url_options, url_to_fs
from ..runtime import plan as _plan

__all__ = ["open_run", "StoreIncompleteError", "STORE_FORMAT"]

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

    # Its public home, named by tracebacks and pickles: daskglm.store.ingest re-exports it.
    __module__ = "daskglm.store.ingest"


# --------------------------------------------------------------------------- locations


def _url(store: str | os.PathLike) -> str:
    return os.fspath(store)


def _local_path(store: str) -> str:
    """The filesystem path of a local store (``file://`` and ``local://`` prefixes removed)."""
    return store.split("://", 1)[1] if "://" in store else store


def _fsspec_kwargs(location: str, storage_options: dict | None) -> dict:
    """``{"storage_options": ...}`` for a remote location; ``{}`` for a local path.

    One ``storage_options`` serves every remote location of a call (store and
    input URLs); zarr and xarray refuse options for a local path, so they are
    dropped there. The same keyword suits :func:`daskglm.io.nifti.read_volumes` and
    :func:`daskglm.io.nifti.build_gzip_index`.
    """
    options = url_options(location, storage_options)
    return {"storage_options": options} if options else {}


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
    fs, path = url_to_fs(store, storage_options)
    fs.invalidate_cache(path)  # another process may have written there since we last listed
    if fs.exists(path):
        fs.rm(path, recursive=True)


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


# --------------------------------------------------------------------------- creating


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
        # Runs resampled onto the grid (nilearn's masker rules, see daskglm.io.grid):
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


def _json_value(value: Any) -> Any:
    """An attribute value as JSON (numpy scalars and arrays to Python, containers walked)."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def _create_group_like(store: str, dataset: xr.Dataset, storage_options: dict | None) -> dict[str, zarr.Array]:
    """Create the zarr group at ``store`` (replacing whatever is there) in the layout
    ``xr.open_zarr`` reads back as ``dataset``; return its arrays, open for writing.

    Each data variable becomes an array of its dims, shape and dtype, chunked
    as its dask chunks (the first of each axis) or whole, with the
    ``compressors`` of its encoding (zarr's default when unset) and the
    variable's attributes; NaN fills unwritten float chunks, 0 the others.
    Numpy variables are written; dask ones are left for their tasks to write.
    Coordinates are not stored, ``dataset.attrs`` become the group's.

    What ``dataset.to_zarr(store, mode="w", compute=False)`` makes, without
    the store graph xarray builds (and here would discard) for every dask
    variable: creating the two fit groups of the ``fiac`` runs took 38 ms
    instead of 52 (BENCHMARKS.md, fifth round). Attribute values may be
    numpy scalars or arrays, as ``to_zarr`` accepts them (zarr's JSON does not).
    """
    try:
        group = _open_group(store, "w", storage_options)
    except Exception as exc:
        raise OSError(f"cannot create the group at {store!r}: {exc}") from exc
    arrays = {}
    for key, var in dataset.data_vars.items():
        chunks = tuple(int(c[0]) if c else 0 for c in var.chunks) if var.chunks else var.shape
        floating = np.issubdtype(var.dtype, np.floating)
        arrays[str(key)] = array = group.create_array(
            str(key), shape=var.shape, chunks=tuple(max(1, c) for c in chunks), dtype=var.dtype,
            dimension_names=var.dims, compressors=var.encoding.get("compressors", "auto"),
            fill_value=np.nan if floating else 0, attributes=_json_value(dict(var.attrs)),
        )
        if not var.chunks and var.size:
            array[...] = np.asarray(var.values)
    group.attrs.update(_json_value(dict(dataset.attrs)))
    return arrays


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
    fs, path = url_to_fs(store, storage_options)
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


def _stored_mask(group: zarr.Group, shape: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[group["i"][:], group["j"][:], group["k"][:]] = True
    return mask
