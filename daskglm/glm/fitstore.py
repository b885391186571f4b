"""Fit results in run stores: several runs written in one computation, read back in memory or lazily.

A run's fit is a group of its store (see :mod:`daskglm.store.ingest`): ``glm-<fit key>``
when a model writes it (keyed by its data, design and options, see
:func:`daskglm.glm.fit.fit_key`, so that analyses with other designs or noise models,
even concurrent ones, never share a group; a complete group of the same key is
reused), or the name given to :func:`save_fit`::

    beta(regressor, voxel)             float64, chunks of the fit's voxel blocks
    sigma2(voxel)                      float64
    label_index(voxel)                 int64
    cov(label, regressor, regressor_)  float64
    label_value(label, lag)            float64
    attrs                              dof, noise_model, bins, signal_scaling, n_scans, affine,
                                       volume_shape, t_r, regressors, complete (written last)

:func:`save_fits` writes the fits of several runs with a single ``compute``
(one graph: every worker busy, one round trip to the scheduler), each group
rewritten whole under its store's lock and marked ``complete`` once every
group is written. A :func:`daskglm.glm.fit.fit_run` result is computed as its
packed estimates, each voxel column written by the task that fits it (one
task per column after its read; nothing is shipped to be written). It then
hands the fits back:

- in memory, when the fits of all the runs hold at most
  :func:`fit_memory_bytes` (dask config key ``daskglm.fit-memory-bytes``,
  default 256 MiB): ``beta``, ``sigma2`` and ``label_index`` are the values
  the computation wrote, gathered as numpy (the packed rows the tasks
  return, split in the client; nothing is read back), and contrasts are
  numpy operations in the client;
- lazily otherwise, in dask chunks of about :data:`LAZY_CHUNK_BYTES` (whole
  multiples of the stored voxel blocks), so that a contrast is a handful of
  tasks whatever the number of fit blocks.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ..runtime.cluster import compute
from ..runtime.config import config_bytes
from ..store.locks import store_lock
from ..store.zarrio import (
    StoreIncompleteError,
    array_codecs,
    check_chunks,
    chunk_record,
    create_group_like,
    damaged_error,
    fsspec_kwargs,
    open_group,
    open_run,
    store_url,
    sweep_partials,
    zarr_location,
)
from .fit import FIT_VARIABLES, PACKED_ESTIMATES, packed_estimates, split_estimates

__all__ = [
    "DEFAULT_FIT_MEMORY_BYTES",
    "FIT_MEMORY_KEY",
    "LAZY_CHUNK_BYTES",
    "fit_memory_bytes",
    "fit_nbytes",
    "open_fit",
    "reopen_fit",
    "save_fit",
    "save_fits",
]

#: The dask config key of the in-memory budget of fit results (bytes, or a string like "1 GiB").
FIT_MEMORY_KEY = "daskglm.fit-memory-bytes"
#: Default of :data:`FIT_MEMORY_KEY`: the fits of an HCP-sized subject (2 runs of
#: 306k voxels, 13 regressors: 73 MB) stay in memory.
DEFAULT_FIT_MEMORY_BYTES = 256 * 2**20
#: Target size of a dask chunk of ``beta`` when fits are kept lazy.
LAZY_CHUNK_BYTES = 64 * 2**20
#: The per-voxel variables of a fit (the tables ``cov`` and ``label_value`` are always numpy).
_VOXEL_VARIABLES = ("beta", "sigma2", "label_index")


def fit_memory_bytes() -> int:
    """The in-memory budget of fit results: dask config ``daskglm.fit-memory-bytes``.

    ``dask.config.set({"daskglm.fit-memory-bytes": "1 GiB"})``, or
    ``DASK_DASKGLM__FIT_MEMORY_BYTES=0`` in the environment (0: fits always
    stay lazy); default :data:`DEFAULT_FIT_MEMORY_BYTES`.

    Raises
    ------
    ValueError
        The configured value is not a non-negative number of bytes.
    """
    return config_bytes(FIT_MEMORY_KEY, DEFAULT_FIT_MEMORY_BYTES)


def fit_nbytes(fit: xr.Dataset) -> int:
    """Bytes of a fit's per-voxel results (``beta``, ``sigma2``, ``label_index``) once in memory."""
    return sum(int(fit[name].nbytes) for name in _VOXEL_VARIABLES if name in fit)


def _to_write(fit: xr.Dataset) -> xr.Dataset:
    """What goes into the group: no voxel indices (in the run store), regressor names as attrs
    (zarr v3 has no stable fixed-length string dtype), ``complete`` False until written."""
    out = fit.drop_vars([n for n in ("i", "j", "k", "regressor", "regressor_") if n in fit.coords]).copy()
    out.encoding.pop(PACKED_ESTIMATES, None)  # nothing to store: save_fits takes it from the fit
    out.attrs = {**{k: v for k, v in fit.attrs.items() if k not in ("store", "group")}, "complete": False,
                 "regressors": [str(r) for r in fit["regressor"].values]}
    for var in out.variables.values():
        var.encoding.clear()
        _raw_floats(var.encoding, var.dtype)
    return out


def _raw_floats(encoding: dict, dtype: Any) -> None:
    """Store float estimates raw: zstd barely shrinks float estimates and took longer than writing
    them (BENCHMARKS.md, "Second round"); integer label indices keep zstd. Every chunk
    carries a crc32c checksum, verified on each read (see :func:`daskglm.store.zarrio.array_codecs`)."""
    encoding["compressors"] = array_codecs(None if np.issubdtype(dtype, np.floating) else "zstd")


def _rounds(stores: list[str]) -> list[list[int]]:
    """Indexes of ``stores`` in rounds where no store occurs twice (a run given twice
    shares its store: its fits are written one after the other, as before)."""
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for index, store in enumerate(stores):
        turn = seen.get(store, 0)
        seen[store] = turn + 1
        if turn == len(rounds):
            rounds.append([])
        rounds[turn].append(index)
    return rounds


def save_fits(
    fits: Sequence[xr.Dataset],
    stores: Sequence[str | os.PathLike],
    name: str | None = "glm",
    storage_options: dict | None = None,
    client: Any = None,
    in_memory: bool | None = None,
) -> list[xr.Dataset]:
    """Compute (lazy) fits into a group of their run stores, in one computation.

    Each group is rewritten whole (whatever was there) and marked
    ``complete`` after every group is written; :func:`open_fit` refuses an
    incomplete one. The stores' locks (see :func:`daskglm.store.locks.store_lock`)
    are held meanwhile, taken in sorted order. A group given twice (the same
    run fitted twice into one group) gets its fits one after the other, the last one stays.

    Parameters
    ----------
    fits : sequence of xarray.Dataset
        From :func:`daskglm.glm.fit.fit_run`, with the run's ``i, j, k`` coordinates.
    stores : sequence of str or path
        The run store of each fit.
    name : str or None
        Group name inside the stores. ``None``: each fit in group ``glm-<fit_key>``
        (see :func:`daskglm.glm.fit.fit_key`: its data, design and options), and a
        complete group of that key is reused, not computed again: analyses of one
        run with other designs or noise models never share a group, and one that
        is read lazily is never rewritten under its reader.
    storage_options : dict, optional
        fsspec options for URL stores (ignored for local paths).
    client : distributed.Client, str or None, optional
        Where the computation runs, resolved by
        :func:`daskglm.runtime.cluster.get_client`: a client, a local
        scheduler name, a scheduler address or file, or ``None`` for the
        active client, ``DASK_SCHEDULER_ADDRESS`` or an embedded ``LocalCluster``.
    in_memory : bool, optional
        Return the fits in memory (numpy) or lazily (dask); default: in
        memory when :func:`fit_nbytes` of all fits is at most
        :func:`fit_memory_bytes`.

    Returns
    -------
    list of xarray.Dataset
        The persisted fits, in order: as :func:`open_fit` gives them, with
        numpy data or dask chunks of about :data:`LAZY_CHUNK_BYTES`; attribute
        ``group`` names their group.
    """
    if len(fits) != len(stores):
        raise ValueError(f"got {len(fits)} fits but {len(stores)} stores: give one store per fit")
    if in_memory is None:
        in_memory = sum(fit_nbytes(fit) for fit in fits) <= fit_memory_bytes()
    names = [name if name is not None else _keyed_group(fit) for fit in fits]

    def read(fit: xr.Dataset, url: str, group: str, written: xr.Dataset | None) -> xr.Dataset:
        if all(n in fit.coords for n in "ijk"):
            coords = {n: fit[n] for n in "ijk"}
        else:  # not from fit_run: the voxel indices of the run store
            run = open_run(url, storage_options)
            coords = {n: run[n] for n in "ijk"}
        if written is None:  # reused: read back
            lazy = _open_lazy(url, group, storage_options, coords, None if in_memory else LAZY_CHUNK_BYTES)
            return lazy.load() if in_memory else lazy
        if in_memory:
            return _in_memory(url, group, storage_options, written, coords)
        return _open_lazy(url, group, storage_options, coords, LAZY_CHUNK_BYTES)

    return _save(fits, [store_url(store) for store in stores], names, storage_options, client, read,
                 eager=in_memory, reuse=name is None)


def _keyed_group(fit: xr.Dataset) -> str:
    key = fit.attrs.get("fit_key")
    if not key:
        raise ValueError("name=None keys each fit's group by its 'fit_key' attribute (set by fit_run); "
                         "this fit has none: give a group name")
    return f"glm-{key}"


def _reusable(url: str, group: str, key: Any, storage_options: dict | None) -> bool:
    """Whether group ``group`` of the store holds a complete fit of that ``fit_key``."""
    try:
        attrs = open_group(f"{url.rstrip('/')}/{group}", "r", storage_options).attrs
    except Exception:
        return False
    return bool(attrs.get("complete")) and attrs.get("fit_key") == key


def _write_fit_block(packed: np.ndarray, *, arrays: dict, gather: bool,
                     block_info: dict | None = None) -> np.ndarray:
    """Block task: write one voxel column of packed estimates (p + 2, v) into the group's
    ``beta``, ``sigma2`` and ``label_index`` (whole zarr chunks); return it (``gather``) or
    an empty (0, v) block."""
    lo, hi = block_info[0]["array-location"][1]
    for key, values in split_estimates(packed).items():
        array = arrays[key]
        if hasattr(array, "with_config"):  # every chunk written, even all fill value: one missing is damage
            array = array.with_config({"write_empty_chunks": True})
        array[..., lo:hi] = values
    return packed if gather else packed[:0]


def _written_by_workers(out: xr.Dataset, packed: da.Array, group: str,
                        storage_options: dict | None, gather: bool) -> da.Array:
    """Create group ``name`` (metadata, the numpy tables, ``complete`` False) for a
    :func:`daskglm.glm.fit.fit_run` result and return the lazy packed estimates, each column
    written by the task that fits it (nothing travels to be written, no write task apart)."""
    arrays = create_group_like(group, out, storage_options)
    rows = packed.shape[0] if gather else 0
    return da.map_blocks(  # named from what it writes where (tokenizing the zarr arrays is slow)
        _write_fit_block, packed, name=f"write_fit_block-{tokenize(packed.name, group, gather)}",
        arrays={key: arrays[key] for key in FIT_VARIABLES}, gather=gather,
        chunks=((rows,), packed.chunks[1]), dtype=packed.dtype, meta=np.empty((0, 0), packed.dtype),
    )


def _save(fits: Sequence[xr.Dataset], urls: list[str], names: list[str], storage_options: dict | None,
          client: Any, read: Any, eager: bool = False, reuse: bool = False) -> list[Any]:
    """Write the fits (one computation per round of distinct groups, under their stores' locks),
    then ``read(fit, url, group, written)`` each, the locks still held: what is read is what was
    written (``written`` None: a complete group of the same ``fit_key`` was ``reuse``d).

    :func:`daskglm.glm.fit.fit_run` results are written by the tasks that fit their voxel columns
    (:func:`_written_by_workers`). Other fits: ``eager`` computes them into this process and
    writes them from here, else the workers write their blocks (xarray's ``to_zarr``).
    ``eager``: the values come back (``written`` holds them, so nothing needs reading back).
    Every group of a round is emptied and marked incomplete before anything is computed or
    written, and marked complete after everything is: a kill leaves no old fit marked
    complete beside a new one.
    """
    results: list[Any] = [None] * len(fits)
    groups = [f"{url.rstrip('/')}/{name}" for url, name in zip(urls, names)]
    for indexes in _rounds(groups):
        with contextlib.ExitStack() as locks:  # not interleaved with another process's ingestion or fit
            for url in sorted({urls[i] for i in indexes}):
                locks.enter_context(store_lock(url))
            if reuse:
                kept = [i for i in indexes if _reusable(urls[i], names[i], fits[i].attrs.get("fit_key"),
                                                        storage_options)]
                for i in kept:
                    results[i] = read(fits[i], urls[i], names[i], None)
                indexes = [i for i in indexes if i not in kept]
            outs = {i: _to_write(fits[i]) for i in indexes}
            by_workers: set[int] = set()  # fit_run results: their tasks write them
            jobs: list[tuple[int, str | None, Any]] = []  # (fit, variable to hold or None, collection)
            for i in indexes:
                packed = _packed(fits[i], groups[i])
                if packed is not None:
                    by_workers.add(i)
                    jobs.append((i, None, _written_by_workers(outs[i], packed, groups[i], storage_options, eager)))
                elif eager:
                    open_group(groups[i], "w", storage_options).attrs["complete"] = False
                    jobs += [(i, key, outs[i][key].data) for key in outs[i].data_vars
                             if isinstance(outs[i][key].data, da.Array)]
                else:
                    jobs.append((i, None, outs[i].to_zarr(zarr_location(urls[i]), group=names[i], mode="w",
                                                          consolidated=False,
                                                          zarr_format=3, compute=False, write_empty_chunks=True,
                                                          **fsspec_kwargs(urls[i], storage_options))))
            values = _compute_checked(jobs, [urls[i] for i in indexes], client)
            for (i, key, _), value in zip(jobs, values):
                if i in by_workers and eager:
                    _hold(outs[i], split_estimates(value))
                elif key is not None:
                    _hold(outs[i], {key: value})
            for i in indexes:
                if eager and i not in by_workers:
                    outs[i].to_zarr(zarr_location(urls[i]), group=names[i], mode="w", consolidated=False, zarr_format=3,
                                    write_empty_chunks=True, **fsspec_kwargs(urls[i], storage_options))
            for i in indexes:
                sweep_partials(groups[i])
                group = open_group(groups[i], "r+", storage_options)
                chunks = {key: chunk_record(groups[i], key, group[key], storage_options)[0]
                          for key in _VOXEL_VARIABLES if key in group}
                group.attrs.put({**group.attrs.asdict(), "complete": True, "chunks": chunks})  # one write
            for i in indexes:
                results[i] = read(fits[i], urls[i], names[i], outs[i])
    return results


def _packed(fit: xr.Dataset, group: str) -> da.Array | None:
    """The packed estimates a :func:`daskglm.glm.fit.fit_run` result carries, or None (written by
    variable then); a warning when it carries some that its variables no longer are."""
    packed = packed_estimates(fit)
    if packed is None and fit.encoding.get(PACKED_ESTIMATES) is not None:
        warnings.warn(f"the fit for {group!r} carries fit_run's packed estimates, but its beta, sigma2 and "
                      "label_index are no longer slices of them (changed since fit_run): it is computed and "
                      "written variable by variable, with more tasks", RuntimeWarning, stacklevel=4)
    return packed


def _compute_checked(jobs: list, urls: list[str], client: Any) -> tuple:
    """Compute the jobs' collections, then the workers give back the heap the fit's buffers
    left (:func:`daskglm.runtime.cluster.compute`'s ``release_heap``: the results' reading
    and the contrasts that follow are not added to it); a chunk failing its checksum names the
    stores read."""
    if not jobs:
        return ()
    try:
        return compute(*[collection for _, _, collection in jobs], client=client, release_heap=True)
    except ValueError as exc:
        if "checksum" not in str(exc):
            raise
        raise damaged_error(" or ".join(sorted(set(urls))), f"a chunk failed its crc32c checksum: {exc}") from None


def _hold(out: xr.Dataset, values: dict[str, np.ndarray]) -> None:
    """Put computed values in place of ``out``'s dask variables, in place, their dask chunks kept
    as the zarr chunks to write (the codec set by :func:`_to_write` stays: copy keeps encoding)."""
    for key, data in values.items():
        chunks = tuple(int(c[0]) for c in out[key].data.chunks)
        out[key] = out[key].copy(data=np.asarray(data))
        out[key].encoding["chunks"] = chunks


def save_fit(fit: xr.Dataset, store: str | os.PathLike, name: str = "glm",
             storage_options: dict | None = None, client: Any = None) -> xr.Dataset:
    """Compute a (lazy) fit Dataset into group ``name`` of a run store and reopen it.

    One run's :func:`save_fits`: the group is rewritten whole (whatever was
    there) and marked ``complete`` last, under the store's lock.

    Parameters
    ----------
    fit : xarray.Dataset
        From :func:`daskglm.glm.fit.fit_run`.
    store : str or path
        The run store (or any zarr location).
    name : str, default="glm"
        Group name inside the store.
    storage_options : dict, optional
        fsspec options for a URL store (ignored for a local path).
    client : distributed.Client, str or None, optional
        Where the computation runs, resolved by
        :func:`daskglm.runtime.cluster.get_client`: a client, a local
        scheduler name, a scheduler address or file, or ``None`` for the
        active client, ``DASK_SCHEDULER_ADDRESS`` or an embedded ``LocalCluster``.

    Returns
    -------
    xarray.Dataset
        The persisted fit, lazily opened (see :func:`open_fit`).
    """
    store = store_url(store)
    _save([fit], [store], [name], storage_options, client, lambda *_: None)
    return open_fit(store, name, storage_options)


def open_fit(store: str | os.PathLike, name: str | None = None,
             storage_options: dict | None = None) -> xr.Dataset:
    """Open a fit saved by :func:`save_fit` or :func:`save_fits` lazily, with the run's voxel coordinates.

    Dask chunks are the stored ones (the fit's voxel blocks, the columns of
    the run's ``bold``).

    Parameters
    ----------
    store : str or path
        The run store holding the fit: a local path or an fsspec URL.
    name : str, optional
        The fit's group; default: the store's only one (``glm``, or the
        ``glm-<fit key>`` a model wrote; attribute ``group`` of a model's
        ``results_`` names it).
    storage_options : dict, optional
        fsspec options for a URL store (ignored for a local path).

    Returns
    -------
    xarray.Dataset
        ``beta (regressor, voxel)``, ``sigma2`` and ``label_index (voxel,)``
        backed by dask, the small ``cov`` and ``label_value`` tables in
        memory, the run's ``i, j, k`` voxel coordinates, ``regressor``
        coordinates, and the group's attributes (``store`` and ``group``
        added).

    Raises
    ------
    StoreIncompleteError
        When the fit group was not marked complete.
    ValueError
        ``name`` omitted and the store holds no fit or several.
    """
    store = store_url(store)
    run = open_run(store, storage_options)
    if name is None:
        groups = sorted(key for key, _ in open_group(store, "r", storage_options).groups()
                        if key.startswith("glm"))
        if len(groups) != 1:
            raise ValueError(f"the store at {store!r} holds {len(groups)} fits {groups}: give the name of one")
        (name,) = groups
    return _open_lazy(store, name, storage_options, {n: run[n] for n in "ijk"})


def reopen_fit(fit: xr.Dataset, name: str = "glm", storage_options: dict | None = None) -> xr.Dataset:
    """The stored fit behind a fit held in memory, opened lazily (a lazy fit is returned as is).

    For graphs that workers should read the fit into themselves
    (:func:`daskglm.glm.fit.voxelwise_run`): dask chunks are the stored voxel
    blocks, the voxel coordinates those of ``fit``.

    Parameters
    ----------
    fit : xarray.Dataset
        A fit returned by :func:`save_fits`, :func:`save_fit` or
        :func:`open_fit` (a model's ``results_``), whose attributes ``store``
        and ``group`` say where it is stored.
    name : str, default="glm"
        The group to open when ``fit`` has no ``group`` attribute.
    storage_options : dict, optional
        fsspec options for a URL store (ignored for a local path).

    Returns
    -------
    xarray.Dataset
        ``fit`` itself when its estimates are already dask-backed, else the
        stored fit opened lazily.
    """
    if any(isinstance(fit[n].data, da.Array) for n in _VOXEL_VARIABLES):
        return fit
    return _open_lazy(fit.attrs["store"], fit.attrs.get("group", name), storage_options,
                      {n: fit[n] for n in "ijk"})


def _complete_group(store: str, name: str, storage_options: dict | None) -> Any:
    """Group ``name`` of the store, refused if incomplete or if a chunk of its estimates is gone."""
    path = f"{store.rstrip('/')}/{name}"
    group = open_group(path, "r", storage_options)
    if not group.attrs.get("complete"):
        raise StoreIncompleteError(f"the fit {name!r} in {store!r} is incomplete: fit again")
    recorded = group.attrs.get("chunks") or {}
    for key in _VOXEL_VARIABLES:
        check_chunks(store, path, key, group[key], recorded.get(key), storage_options)
    return group


def _in_memory(store: str, name: str, storage_options: dict | None, written: xr.Dataset,
               coords: dict) -> xr.Dataset:
    """The fit just written in group ``name`` (``written``, numpy), as :func:`open_fit` gives it
    once loaded: the group's attributes (read back: it must be complete), the values written."""
    group = _complete_group(store, name, storage_options)
    attrs = dict(group.attrs)
    regressors = list(attrs.pop("regressors"))
    data = {key: (written[key].dims, np.asarray(written[key].values)) for key in written.data_vars}
    return xr.Dataset(data, coords={**coords, "regressor": regressors, "regressor_": regressors},
                      attrs={**attrs, "store": store, "group": name})


def _open_lazy(store: str, name: str, storage_options: dict | None, coords: dict,
               chunk_bytes: int | None = None) -> xr.Dataset:
    """The fit in group ``name`` opened lazily: the stored voxel chunks, or (``chunk_bytes``)
    whole multiples of them making ``beta`` chunks of about that size."""
    group = _complete_group(store, name, storage_options)
    chunks: dict = {}
    if chunk_bytes:
        n_regressors, stored = group["beta"].shape[0], group["beta"].chunks[1]
        per_voxel = 8 * max(1, n_regressors)
        chunks = {"voxel": stored * max(1, chunk_bytes // (per_voxel * stored))}
    fit = xr.open_zarr(zarr_location(store, read_only=True), group=name, consolidated=False, zarr_format=3,
                       chunks=chunks, **fsspec_kwargs(store, storage_options))
    if not fit.attrs.get("complete"):  # rewritten since the check above
        raise StoreIncompleteError(f"the fit {name!r} in {store!r} is incomplete: fit again")
    regressors = list(fit.attrs.pop("regressors"))
    fit = fit.assign_coords({**coords, "regressor": regressors, "regressor_": regressors})
    for key in ("cov", "label_value"):  # small tables, read straight from zarr (not via dask)
        fit[key] = fit[key].copy(data=group[key][:])
    fit.attrs.update(store=store, group=name)
    return fit

