"""The zarr side of a run store: its location, format and layout, created, checked and opened.

Everything here reads or writes a store's zarr group (a local path or an
fsspec URL; one ``storage_options`` serves every URL of a call) and nothing
reads a NIfTI run. :mod:`daskglm.store.ingest` ingests runs into the layout that
:func:`create_store` makes (described in :mod:`daskglm.store.ingest`) and
:mod:`daskglm.glm.fitstore` writes fits into the stores; both open them with
these helpers. Before a store is made at a location, :func:`check_replaceable`
refuses (never deletes) anything there but a daskglm store (recognised by its
marker attribute, never by member names); a store of another
:data:`STORE_FORMAT` is rebuilt (:func:`same_store`) after :func:`clear_store`
empties it in an order a kill cannot turn into a trusted store. :func:`open_run`
opens a complete store lazily as xarray, after :func:`verify_store`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ..io.grid import Grid
from ..io.nifti import RunInfo
from ..io.remote import is_url, url_options, url_to_fs
from ..runtime import plan as _plan

__all__ = ["open_run", "StoreDamagedError", "StoreIncompleteError", "STORE_FORMAT", "array_codecs", "check_chunks",
           "chunk_record", "create_group_like", "damaged_error", "fsspec_kwargs", "layout_digests", "open_group",
           "store_url", "sweep_partials", "verify_store", "zarr_location", "check_protocol", "check_replaceable",
           "clear_store", "create_store", "local_path", "read_attrs", "rebuild_reason", "resolve_compressor",
           "same_store", "store_entries", "stored_mask"]

#: Bumped whenever the layout changes; stores of another format are rebuilt.
#: 2: every chunk carries a crc32c checksum, the layout digest ``integrity`` is recorded.
STORE_FORMAT = 2
_INTERNAL_VARS = ["ingest_done", "gzip_index"]
#: The arrays of a run store (its members besides ``zarr.json``; fit groups are named ``glm*``).
_STORE_ARRAYS = ("bold", "i", "j", "k", "ingest_done", "gzip_index")
#: zarr's atomic-write debris of a local store's metadata: ``zarr.json`` is written to
#: ``zarr.<uuid hex>.partial`` and renamed (a writer killed in between leaves it).
_METADATA_DEBRIS = re.compile(r"^zarr\.[0-9a-f]{32}\.partial$")
_COMPRESSORS = ("lz4", "zstd", None)
#: The blosc settings of each compressor. ``"lz4"``, bit-shuffled (each float32's bits
#: grouped by position: sign, exponent and high mantissa bits compress, the noisy low ones
#: do not): much smaller stores than uncompressed ones, smoothed or not, for about the same
#: CPU to ingest and a little more to read; smaller than byte-shuffled lz4 (what ``"lz4"``
#: was before) at the same CPU. ``"zstd"`` (byte-shuffled, unchanged): hardly smaller than
#: lz4, for several times its CPU to write (BENCHMARKS.md, "Store codec").
_BLOSC = {"lz4": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
          "zstd": {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"}}
#: ``compressor="auto"``: lz4 on a local disk as on remote stores. (Local stores were
#: uncompressed before: such a store is reused as it is, see :func:`same_store`.)
_AUTO_COMPRESSOR = {"local": "lz4", "remote": "lz4"}


class StoreIncompleteError(RuntimeError):
    """A store exists but was not marked complete (interrupted ingestion)."""

    # Its public home, named by tracebacks and pickles: daskglm.store.ingest re-exports it.
    __module__ = "daskglm.store.ingest"


class StoreDamagedError(RuntimeError):
    """A complete store whose contents no longer match what was written (a chunk missing or
    corrupt, metadata edited): never read, rebuilt only when asked (``overwrite=True``)."""

    __module__ = "daskglm.store.ingest"


def damaged_error(store: str, what: str) -> StoreDamagedError:
    return StoreDamagedError(
        f"the store at {store!r} is damaged ({what}): delete that folder (it holds only what daskglm "
        "derived from the run; the next fit rebuilds it), or rebuild it: FirstLevelModel(overwrite=True), "
        "ingest_run(..., overwrite=True), daskglm fit/convert --overwrite")


# --------------------------------------------------------------------------- locations


def store_url(store: str | os.PathLike) -> str:
    """A store's location as daskglm keeps it: a URL, or a local path (``file://`` removed)."""
    text = os.fspath(store)
    return local_path(text) if not is_url(text) else text


def zarr_location(store: str, read_only: bool = False) -> Any:
    """What zarr and xarray open: a URL or local path as it is, a local path holding ``::`` as a
    ``LocalStore`` (so that a folder named ``a::b.zarr`` is not read as an fsspec URL chain)."""
    if is_url(store) or "::" not in store:
        return store
    return zarr.storage.LocalStore(local_path(store), read_only=read_only)


def local_path(store: str) -> str:
    """The filesystem path of a local store (``file://`` and ``local://`` prefixes removed)."""
    return store.split("://", 1)[1] if "://" in store else store


def fsspec_kwargs(location: str, storage_options: dict | None) -> dict:
    """``{"storage_options": ...}`` for a remote location; ``{}`` for a local path.

    One ``storage_options`` serves every remote location of a call (store and
    input URLs); zarr and xarray refuse options for a local path, so they are
    dropped there. The same keyword suits :func:`daskglm.io.nifti.read_volumes` and
    :func:`daskglm.io.nifti.build_gzip_index`.
    """
    options = url_options(location, storage_options)
    return {"storage_options": options} if options else {}


def open_group(store: str, mode: str, storage_options: dict | None) -> zarr.Group:
    return zarr.open_group(zarr_location(store, mode == "r"), mode=mode, zarr_format=3,
                           **fsspec_kwargs(store, storage_options))


def read_attrs(store: str, storage_options: dict | None) -> dict | None:
    """Attributes of an existing daskglm store, ``None`` if there is none."""
    try:
        return dict(open_group(store, "r", storage_options).attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return None
    except Exception:  # something unreadable at that location: treat as foreign
        return {}


def store_entries(store: str, storage_options: dict | None) -> list[str] | None:
    """The names in a store's folder (hidden ones too); ``[]`` if absent or empty, None if a file."""
    fs, path = url_to_fs(store, storage_options)
    fs.invalidate_cache(path)  # another process may have written there since we last listed
    if not fs.exists(path):
        return []
    if fs.isfile(path):
        return None
    return sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)})


def clear_store(store: str, storage_options: dict | None) -> None:
    """Empty a daskglm store for a rebuild, so that a kill at any point leaves a store that
    is still recognised as daskglm's and never taken for complete or resumable.

    First the root metadata is rewritten in one write without fingerprint or ``complete``
    (whatever follows, no rerun trusts what is left), then the store's own members are
    deleted (its arrays, ``glm*`` fit groups, write debris); ``zarr.json`` stays, and so does
    anything daskglm did not make. The folder itself is kept: a symlinked store is emptied
    in its target, the link stays.
    """
    group = open_group(store, "r+", storage_options)
    found = group.attrs.get("daskglm_store_format")
    group.attrs.put({"daskglm_store_format": found, "complete": False, "fingerprint": None})
    fs, path = url_to_fs(store, storage_options)
    for name in store_entries(store, storage_options) or []:
        if name in _STORE_ARRAYS or name.startswith("glm") or _METADATA_DEBRIS.match(name):
            fs.rm(f"{path.rstrip('/')}/{name}", recursive=True)


def sweep_partials(store: str) -> None:
    """Remove the ``*.partial`` files a killed writer left in a local store.

    zarr writes a chunk to ``<key>.<uuid>.partial`` and renames it; a process
    killed in between leaves that file. The chunk itself is then rewritten
    whole by the retried task, so the leftover is debris, never data.
    """
    if is_url(store):
        return  # object stores write each chunk in one request: nothing to sweep
    for root, _, files in os.walk(local_path(store)):
        for name in files:
            if name.endswith(".partial"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(root, name))


# --------------------------------------------------------------------------- creating


def resolve_compressor(compressor: str | None, store: str) -> str | None:
    if compressor == "auto":
        return _AUTO_COMPRESSOR["remote" if is_url(store) else "local"]
    _codec(compressor)
    return compressor


def _codec(compressor: str | None) -> Any:
    if compressor not in _COMPRESSORS:
        raise ValueError(f"compressor must be one of {('auto', *_COMPRESSORS)}; got {compressor!r}")
    if compressor is None:
        return None
    return zarr.codecs.BloscCodec(**_BLOSC[compressor])


def array_codecs(compressor: str | None) -> list:
    """The bytes codecs of a store array: the compressor, then a crc32c checksum of every
    chunk (verified by zarr on each read: a damaged chunk is an error, never numbers)."""
    codec = _codec(compressor)
    return [*([codec] if codec is not None else []), zarr.codecs.Crc32cCodec()]


def create_store(
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
    try:
        if check_replaceable(store, storage_options):
            clear_store(store, storage_options)
        # Recognised as daskglm's (and never resumed: no fingerprint) from its first write on.
        marker = {"daskglm_store_format": STORE_FORMAT, "complete": False, "fingerprint": None}
        group = zarr.open_group(zarr_location(store), mode="a", zarr_format=3, attributes=dict(marker),
                                **fsspec_kwargs(store, storage_options))
        # An emptied store's metadata is marked already; now of this format. (A copy: zarr's
        # put clears the group's attribute dict first, which is the one it was created with.)
        group.attrs.put(dict(marker))
    except (FileExistsError, StoreDamagedError):
        raise
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
        compressors=array_codecs(compressor),
        fill_value=0.0,
        attributes={"coordinates": "i j k", "long_name": "BOLD signal, smoothed and masked"},
    )
    for axis, name in enumerate("ijk"):
        arr = group.create_array(
            name, shape=(n_voxels,), chunks=(n_voxels,), dtype="int32", dimension_names=("voxel",),
            compressors=array_codecs("zstd"),
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
    # One write of every attribute, the fingerprint among them: only now can a rerun resume it.
    group.attrs.put(attrs)


def _json_value(value: Any) -> Any:
    """An attribute value as JSON (numpy scalars and arrays to Python, containers walked)."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def create_group_like(store: str, dataset: xr.Dataset, storage_options: dict | None) -> dict[str, zarr.Array]:
    """Create the zarr group at ``store`` (replacing whatever is there) in the layout
    ``xr.open_zarr`` reads back as ``dataset``; return its arrays, open for writing.

    Each data variable becomes an array of its dims, shape and dtype, chunked
    as its dask chunks (the first of each axis) or whole, with the
    ``compressors`` of its encoding (zarr's default when unset) and the
    variable's attributes; NaN fills unwritten float chunks, 0 the others.
    Numpy variables are written; dask ones are left for their tasks to write, every
    chunk of them (even one equal to the fill value: see :func:`chunk_record`).
    Coordinates are not stored, ``dataset.attrs`` become the group's.

    What ``dataset.to_zarr(store, mode="w", compute=False)`` makes, without
    the store graph xarray builds (and here would discard) for every dask
    variable (BENCHMARKS.md, "Fifth round", d7cd6e9). Attribute values may be
    numpy scalars or arrays, as ``to_zarr`` accepts them (zarr's JSON does not).
    """
    try:
        group = open_group(store, "w", storage_options)
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
            config={"write_empty_chunks": True},  # every chunk is there: a missing one is damage
        )
        if not var.chunks and var.size:
            array[...] = np.asarray(var.values)
    group.attrs.update(_json_value(dict(dataset.attrs)))
    return arrays


def check_protocol(store: str) -> None:
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


def same_store(existing: dict | None, fingerprint: str) -> bool:
    """Whether the store's attributes say: this daskglm's format, same source and parameters.

    The compressor recorded in the fingerprints is not compared: it changes how the chunks
    are stored, never the numbers, and a store is read with the codecs of its own metadata
    (a store made uncompressed, as local stores were by default, is reused as it is).
    """
    return (bool(existing) and existing.get("daskglm_store_format") == STORE_FORMAT
            and _without_compressor(existing.get("fingerprint")) == _without_compressor(fingerprint))


def _without_compressor(fingerprint: Any) -> Any:
    """A store fingerprint (JSON text) without its ``compressor`` entry (as given if not JSON)."""
    try:
        identity = json.loads(fingerprint)
    except (TypeError, ValueError):
        return fingerprint
    if isinstance(identity, dict):
        identity.pop("compressor", None)
    return json.dumps(identity, sort_keys=True)


def rebuild_reason(existing: dict) -> str:
    """Why a store that is there is not reused (for the warning)."""
    found = existing.get("daskglm_store_format")
    if not existing:
        return "holds no daskglm store attributes (unreadable, or its creation was interrupted)"
    if found != STORE_FORMAT:
        return f"has daskglm store format {found!r} while this daskglm writes format {STORE_FORMAT}"
    return "was made from another source or with other parameters"


def check_replaceable(store: str, storage_options: dict | None) -> bool:
    """Whether a daskglm store is at ``store`` (to be emptied for a rebuild); refuse anything
    else but nothing, an empty folder or a killed first write's debris.

    A store is recognised by the ``daskglm_store_format`` attribute of its root metadata,
    the first thing written (in one write) when it is made, never by the names of its
    members: a folder of other files (hidden ones too), another zarr group or a file given
    as the store by mistake is refused, never deleted or written into.
    """
    try:
        entries = store_entries(store, storage_options)
    except OSError:
        return False  # unreachable or unreadable: creating the store reports it
    if entries is not None:
        attrs = read_attrs(store, storage_options) if "zarr.json" in entries else None
        if attrs and "daskglm_store_format" in attrs:
            return True
        if all(_METADATA_DEBRIS.match(name) for name in entries):
            return False  # empty, or only the debris of a first metadata write killed mid-rename
    what = "a file" if entries is None else (f"a folder holding {entries[:5]}"
                                             f"{' and more' if len(entries) > 5 else ''}")
    raise FileExistsError(f"the store location {store!r} is {what}, not a daskglm store: refusing to "
                          "delete it or write into it; give another store path (or an empty folder)")


# --------------------------------------------------------------------------- integrity


def _digest(value: Any) -> str:
    data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha1(data).hexdigest()[:16]


def layout_digests(group: zarr.Group, voxels: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """Digests of what a complete store's numbers mean: each array's metadata (shape, chunks,
    dtype, codecs), the voxel indices and the root attributes (affine, volume shape, t_r...).

    Recorded as the ``integrity`` attribute when the store is marked complete, with
    ``bold_chunks`` (:func:`chunk_record`), and compared when it is opened (see
    :func:`verify_store`). The chunks themselves carry crc32c checksums, verified by
    zarr on every read. ``voxels``: the ``i, j, k`` arrays if already read.
    """
    if voxels is None:
        voxels = {n: group[n][:] for n in "ijk"}
    digests = {name: _digest(group[name].metadata.to_dict()) for name in ("bold", "i", "j", "k")}
    digests["voxels"] = _digest(b"".join(np.asarray(voxels[n], dtype="<i4").tobytes() for n in "ijk"))
    digests["attributes"] = _digest({k: v for k, v in group.attrs.items() if k not in ("complete", "integrity")})
    return digests


def chunk_record(location: str, name: str, array: zarr.Array, storage_options: dict | None) -> tuple[str, int]:
    """What identifies the chunks of ``array`` (``name`` under ``location``) as written: a digest
    of every chunk's crc32c checksum (the last 4 bytes of its file, see :func:`array_codecs`) in grid
    order, and how many chunks are missing.

    Recorded when a store or fit is completed, compared when it is opened: a chunk deleted
    (zarr would read its fill value), replaced by another's (swapped) or rewritten is found
    without reading the data (one 4-byte read per chunk, batched by fsspec).

    Returns
    -------
    tuple of (str, int)
        16 hexadecimal digits; the number of chunks absent.
    """
    counts = [-(-n // c) for n, c in zip(array.shape, array.chunks)]
    fs, path = url_to_fs(location, storage_options)
    root = f"{path.rstrip('/')}/{name}/c"
    keys = [f"{root}/{'/'.join(map(str, index))}" for index in itertools.product(*map(range, counts))]
    fs.invalidate_cache(root)
    tails = fs.cat_ranges(keys, -4, None) if keys else []
    missing = sum(not isinstance(tail, bytes) for tail in tails)
    digest = hashlib.sha1(b"".join(tail if isinstance(tail, bytes) else b"gone" for tail in tails))
    return digest.hexdigest()[:16], missing


def check_chunks(store: str, location: str, name: str, array: zarr.Array, recorded: Any,
                 storage_options: dict | None) -> None:
    """Refuse ``array`` if its chunks are not those recorded by :func:`chunk_record`.

    Raises
    ------
    StoreDamagedError
        Naming ``store``, the array and what is wrong.
    """
    digest, missing = chunk_record(location, name, array, storage_options)
    label = location[len(store):].strip("/") + "/" + name if location != store else name
    if missing:
        raise damaged_error(store, f"{missing} chunk(s) of {label!r} are missing")
    if digest != recorded:
        raise damaged_error(store, f"chunks of {label!r} differ from those written (replaced, swapped or edited)")


def verify_store(store: str, group: zarr.Group, attrs: dict, storage_options: dict | None) -> dict[str, np.ndarray]:
    """Refuse a complete store whose layout or chunks differ from what was recorded.

    Returns
    -------
    dict of str to ndarray
        The voxel indices ``i, j, k`` read for the check (so that opening reads them once).

    Raises
    ------
    StoreDamagedError
        Naming the store and what is damaged.
    """
    recorded = attrs.get("integrity")
    if not isinstance(recorded, dict):
        raise damaged_error(store, "its integrity record is missing")
    try:
        voxels = {n: np.asarray(group[n][:]) for n in "ijk"}
        found = layout_digests(group, voxels)
    except Exception as exc:  # an array gone or unreadable
        raise damaged_error(store, f"{type(exc).__name__}: {exc}") from None
    changed = [name for name in found if found[name] != recorded.get(name)]
    if changed:
        raise damaged_error(store, f"its {', '.join(changed)} differ from what was recorded when it was written")
    check_chunks(store, store, "bold", group["bold"], recorded.get("bold_chunks"), storage_options)
    return voxels


# --------------------------------------------------------------------------- opening


def open_run(store: str | os.PathLike, storage_options: dict | None = None, *,
             columns: bool = False) -> xr.Dataset:
    """Open a complete run store lazily.

    Parameters
    ----------
    store : str or path
        The run store: a local path or an fsspec URL (as given to
        :func:`~daskglm.store.ingest.ingest_run`).
    storage_options : dict, optional
        fsspec options for a URL ``store`` (ignored for a local path).
    columns : bool, default=False
        ``True``: dask chunks of whole voxel columns (all scans by ``v_chunk``
        voxels), the fit's access pattern: one read task per column, so the
        graph of a long run stays small. ``False``: the store's chunks.

    Returns
    -------
    xarray.Dataset
        ``bold(time, voxel)`` float32 backed by dask (chunks: see ``columns``),
        coordinates ``i, j, k (voxel)`` and ``time`` (the scan numbers), and the
        store's attributes (affine, volume_shape, t_r, smoothing_fwhm, source, mask,
        chunks).

    Raises
    ------
    FileNotFoundError
        No store there.
    StoreIncompleteError
        The store was not marked complete.
    StoreDamagedError
        A chunk is missing, or the store's metadata or voxel indices changed since it was
        written (corrupt chunks are refused by their checksums when read).
    """
    store = store_url(store)
    attrs = read_attrs(store, storage_options)
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
    group = open_group(store, "r", storage_options)
    voxels = verify_store(store, group, attrs, storage_options)
    ds = xr.open_zarr(
        zarr_location(store, read_only=True),
        consolidated=False,
        zarr_format=3,
        chunks={"time": -1} if columns else {},
        drop_variables=_INTERNAL_VARS,
        **fsspec_kwargs(store, storage_options),
    )
    ds.attrs["store"] = store
    _mark_used(store)
    # Voxel indices are small and needed by every unmasking: hold them in memory,
    # read straight from zarr (a dask .load() would compute on a local scheduler).
    # ``time``: the scan numbers, kept by a selection of scans (sample masks), which names it.
    return ds.assign_coords({**{name: ds[name].copy(data=voxels[name]) for name in "ijk"},
                             "time": np.arange(ds.sizes["time"])})


def _mark_used(store: str) -> None:
    """Set a local store's folder modification time to now: its last use, for the cache's
    listing and size cap (:mod:`daskglm.store.cache`). Nothing if it cannot be set (read-only)."""
    if not is_url(store):
        with contextlib.suppress(OSError):
            os.utime(local_path(store))


def stored_mask(group: zarr.Group, shape: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[group["i"][:], group["j"][:], group["k"][:]] = True
    return mask
