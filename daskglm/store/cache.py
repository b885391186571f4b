"""The cache of run stores: list its stores, remove some, keep it under a size cap.

A model given no ``store`` puts each run's store in the default cache folder,
:func:`default_cache_dir` (``$DASKGLM_CACHE``, else ``~/.cache/daskglm/stores``),
one store per source file and ingestion parameters. Nothing removes them by
itself, unless a cap is set: the dask config key ``daskglm.cache-max-size``
(:data:`CACHE_MAX_SIZE_KEY`, environment ``DASK_DASKGLM__CACHE_MAX_SIZE``, e.g.
``"20GiB"``; default none). Then, each time ingestion writes a new store into
the default cache folder, the least recently used complete stores there are
removed (never one just written or reused by that ingestion, never one another
process holds) until the folder is under the cap, with a warning naming them
(:func:`enforce_cache_cap`).

Only folders that are daskglm stores are listed or removed: recognised by the
``daskglm_store_format`` attribute of their root metadata
(:func:`daskglm.store.zarrio.check_replaceable`), never by their names or
contents. Symlinks, files, other folders and lock files in the cache folder are
left alone. A store is removed under its lock (the ``flock`` of
:func:`daskglm.store.locks.store_lock`), taken without waiting: a store in use
by another process (ingestion, or a model's fit, which holds its stores' locks
until its fits are written and read) is skipped. Removing empties the store as
a rebuild does (:func:`daskglm.store.zarrio.clear_store`: first its metadata
loses its fingerprint, so that a kill half-way leaves a store no one trusts),
then deletes its root metadata and its folder; anything in the folder that
daskglm did not make is kept, and the folder with it.

A store's last use is its folder's modification time, which changes when
ingestion or a fit writes into it and which :func:`daskglm.store.zarrio.open_run`
sets each time it opens the store; its creation time is that of its ``bold``
array's metadata.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from dask.utils import format_bytes

from ..io.remote import is_url
from ..runtime.config import config_bytes
from .locks import StoreLockedError, store_lock
from .zarrio import check_replaceable, clear_store, local_path, read_attrs, store_entries

__all__ = ["CACHE_MAX_SIZE_KEY", "Removal", "StoreInfo", "cache_max_size", "default_cache_dir",
           "enforce_cache_cap", "list_stores", "remove_stores", "store_info"]

#: The dask config key of the default cache's size cap (bytes, or a size such as ``"20GiB"``).
CACHE_MAX_SIZE_KEY = "daskglm.cache-max-size"


class StoreInfo(NamedTuple):
    """What :func:`list_stores` knows of one store (without reading its data).

    Parameters
    ----------
    path : str
        The store's folder.
    size : int
        Bytes its files take on disk (their allocated blocks, as ``du``).
    source : str or None
        The run it was made from: a file path, a URL, or
        ``"in-memory image (sha1 ...)"``; None if unrecorded.
    source_state : {"same", "changed", "missing"} or None
        Whether that source file is still there as it was (same size and
        modification time); None when the source is not a local file.
    mask : str or None
        The mask it was made with: a file path, ``"compute_epi_mask"``,
        ``"in-memory"``; None if unrecorded.
    created : float or None
        When it was created (POSIX time of its ``bold`` array's metadata),
        None if unknown.
    last_used : float
        When it was last used (POSIX time: its folder's modification time).
    complete : bool
        Whether its ingestion completed (an incomplete store was
        interrupted, or is being written).
    fits : tuple of str
        Its fit groups (``glm-<key>``), sorted.
    format : object
        Its ``daskglm_store_format`` (stores of another format than this
        daskglm's are rebuilt when used).
    """

    #: The store's folder.
    path: str
    #: Bytes its files take on disk (their allocated blocks, as ``du``).
    size: int
    #: The run it was made from: a file path, a URL, or ``"in-memory image (sha1 ...)"``; None if unrecorded.
    source: str | None
    #: Whether that source file is still there, as it was ("same"), "changed" or "missing" (None: not a local file).
    source_state: str | None
    #: The mask it was made with: a file path, ``"compute_epi_mask"``, ``"in-memory"``; None if unrecorded.
    mask: str | None
    #: When it was created (POSIX time: its ``bold`` array's metadata), None if unknown.
    created: float | None
    #: When it was last used (POSIX time: its folder's modification time).
    last_used: float
    #: Whether its ingestion completed (an incomplete store was interrupted, or is being written).
    complete: bool
    #: Its fit groups (``glm-<key>``), sorted.
    fits: tuple[str, ...]
    #: Its ``daskglm_store_format`` (stores of another format than this daskglm's are rebuilt when used).
    format: Any


class Removal(NamedTuple):
    """What :func:`remove_stores` did with one selected store.

    Parameters
    ----------
    store : StoreInfo
        The store, as found under its lock (as listed, when its lock could
        not be taken).
    outcome : {"removed", "would remove", "emptied", "skipped"}
        ``"would remove"``: a dry run; ``"emptied"``: its folder holds files
        daskglm did not make, kept with them; ``"skipped"``: in use by
        another process, or it could not be locked or removed.
    reason : str
        Why it was skipped or emptied only (``""`` when removed).
    """

    store: StoreInfo
    #: ``"removed"``, ``"would remove"`` (dry run), ``"emptied"`` (its folder holds files daskglm did
    #: not make: kept, with them) or ``"skipped"``.
    outcome: str
    #: Why it was skipped or emptied only ("" when removed).
    reason: str


def default_cache_dir() -> Path:
    """Where models put run stores when given no ``store``: ``$DASKGLM_CACHE`` or ``~/.cache/daskglm/stores``."""
    root = os.environ.get("DASKGLM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "daskglm" / "stores"


def cache_max_size() -> int | None:
    """The default cache's size cap in bytes (dask config ``daskglm.cache-max-size``), None when unset.

    Raises
    ------
    ValueError
        The value is not a size (a number of bytes, or a string such as ``"20GiB"``).
    """
    return config_bytes(CACHE_MAX_SIZE_KEY, None, none_means="no cap")


# --------------------------------------------------------------------------- listing


def _disk_bytes(folder: str) -> int:
    """Bytes allocated to the files under ``folder`` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                stat = os.lstat(os.path.join(root, name))
                blocks = getattr(stat, "st_blocks", None)
                total += blocks * 512 if blocks is not None else stat.st_size
    return total


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _source(provenance: Any) -> tuple[str | None, str | None]:
    """A store's ``source`` attribute as (what it names, whether that file is as it was)."""
    if not isinstance(provenance, dict):
        return None, None
    if "path" in provenance:
        path = str(provenance["path"])
        try:
            stat = os.stat(path)
        except OSError:
            return path, "missing"
        same = stat.st_size == provenance.get("size") and stat.st_mtime_ns == provenance.get("mtime_ns")
        return path, "same" if same else "changed"
    if "url" in provenance:
        return str(provenance["url"]), None
    if "sha1" in provenance:
        return f"in-memory image (sha1 {str(provenance['sha1'])[:12]})", None
    return None, None


def _is_store(path: str) -> bool:
    """Whether ``path`` is a folder holding a daskglm store (its marker attribute), never a symlink."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    try:
        return check_replaceable(path, None)
    except FileExistsError:  # anything but a daskglm store
        return False


def store_info(path: str) -> StoreInfo | None:
    """What is known of the store at ``path`` (None if it is not a daskglm store)."""
    if not _is_store(path):
        return None
    attrs = read_attrs(path, None) or {}
    source, state = _source(attrs.get("source"))
    mask = attrs.get("mask")
    mask = str(mask.get("source")) if isinstance(mask, dict) and mask.get("source") is not None else None
    entries = store_entries(path, None) or []
    fits = tuple(name for name in entries if name.startswith("glm") and os.path.isdir(os.path.join(path, name)))
    created = _mtime(os.path.join(path, "bold", "zarr.json"))
    return StoreInfo(path=path, size=_disk_bytes(path), source=source, source_state=state, mask=mask,
                     created=created, last_used=_mtime(path) or 0.0, complete=attrs.get("complete") is True,
                     fits=fits, format=attrs.get("daskglm_store_format"))


def list_stores(cache_dir: str | os.PathLike | None = None) -> list[StoreInfo]:
    """The daskglm stores directly in ``cache_dir`` (default :func:`default_cache_dir`), by path.

    Everything else there (files, other folders, symlinks, lock files) is not listed.
    A cache folder that does not exist holds no store.

    Parameters
    ----------
    cache_dir : str or path, optional
        The folder to list (default :func:`default_cache_dir`); only its
        direct entries are looked at.

    Returns
    -------
    list of StoreInfo
        One per store, sorted by folder name.
    """
    folder = os.path.abspath(os.fspath(default_cache_dir() if cache_dir is None else cache_dir))
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = (store_info(os.path.join(folder, name)) for name in names)
    return [info for info in found if info is not None]


# --------------------------------------------------------------------------- removing


def _delete(path: str) -> str:
    """Remove the store at ``path`` (its lock held); "" when its folder is gone, else what was kept."""
    clear_store(path, None)  # fingerprint first, then the arrays, fit groups and write debris
    left = [name for name in store_entries(path, None) or [] if name != "zarr.json"]
    if left:
        return f"its folder also holds {left[:5]}{' and more' if len(left) > 5 else ''}, not daskglm's: kept"
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(path, "zarr.json"))
    os.rmdir(path)
    return ""


def _remove(info: StoreInfo, wanted: Any, dry_run: bool) -> Removal | None:
    """Remove one listed store if, under its lock, it is still a store that ``wanted`` selects."""
    try:
        with store_lock(info.path, wait=False):
            current = store_info(info.path)  # what it is now: another process may have used or rebuilt it
            if current is None or not wanted(current):
                return None
            if dry_run:
                return Removal(current, "would remove", "")
            try:
                kept = _delete(current.path)
            except OSError as exc:
                return Removal(current, "skipped", f"cannot remove it: {exc}")
            return Removal(current, "emptied" if kept else "removed", kept)
    except StoreLockedError as exc:
        return Removal(info, "skipped", f"in use ({exc.holder})")
    except OSError as exc:  # a read-only cache folder, say: its lock cannot be created, nothing removed
        return Removal(info, "skipped", f"cannot lock it: {exc}")


def _source_matches(source: str) -> Any:
    """A predicate: stores made from the file (or URL) ``source``, however the path is spelled."""
    if is_url(source):
        return lambda info: info.source == source
    given = os.path.expanduser(source)
    names = {os.path.abspath(given), os.path.realpath(given)}
    return lambda info: info.source is not None and (info.source in names or os.path.realpath(info.source) in names)


def remove_stores(
    cache_dir: str | os.PathLike | None = None,
    *,
    all_stores: bool = False,
    older_than: float | None = None,
    source: str | os.PathLike | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> list[Removal]:
    """Remove the daskglm stores of ``cache_dir`` (default :func:`default_cache_dir`) that are selected.

    Several criteria select the stores meeting them all; at least one is required.
    Each store is removed under its lock, taken without waiting (a store in use is
    skipped), once checked again to still meet the criteria.

    Parameters
    ----------
    cache_dir : str or path, optional
        The folder whose stores (its direct entries, see :func:`list_stores`)
        may be removed; default :func:`default_cache_dir`.
    all_stores : bool, default=False
        Every store.
    older_than : float, optional
        Stores last used more than this many seconds ago.
    source : str or path, optional
        Stores made from this run file (or URL); the file need not exist any more.
    dry_run : bool, default=False
        Only say what would be removed.
    now : float, optional
        The POSIX time ``older_than`` counts from (default: now).

    Returns
    -------
    list of Removal
        One per selected store, by path: removed, would be removed, emptied (its folder
        holds other files, kept) or skipped (in use by another process: its lock is held).

    Raises
    ------
    ValueError
        No criterion, or a negative ``older_than``.
    """
    if not all_stores and older_than is None and source is None:
        raise ValueError("say which stores to remove: all_stores=True, older_than or source")
    if older_than is not None and not older_than >= 0:
        raise ValueError(f"older_than must be >= 0 seconds; got {older_than!r}")
    since = (time.time() if now is None else now) - (older_than or 0.0)
    matches = _source_matches(os.fspath(source)) if source is not None else None

    def wanted(info: StoreInfo) -> bool:
        return ((older_than is None or info.last_used < since)
                and (matches is None or matches(info)))

    done = (_remove(info, wanted, dry_run) for info in list_stores(cache_dir) if wanted(info))
    return [removal for removal in done if removal is not None]


# --------------------------------------------------------------------------- size cap


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def enforce_cache_cap(written: Iterable[str], keep: Sequence[str] = ()) -> list[StoreInfo]:
    """Keep the default cache under ``daskglm.cache-max-size`` after ``written`` stores were made.

    Nothing happens unless a cap is set and one of ``written`` (local stores just
    ingested) lies directly in :func:`default_cache_dir`: stores anywhere else, named by
    the user, are never counted nor removed. Then, while the cache folder's stores take
    more than the cap, the least recently used complete store is removed, never one of
    ``written`` or ``keep`` and never one whose lock is held (by another process, or by
    this one for a fit in progress); a warning names those removed, and says so if the
    cache is still over the cap.

    Parameters
    ----------
    written : iterable of str
        The stores an ingestion just made (paths or URLs; URLs are ignored).
        Never removed.
    keep : sequence of str, default=()
        Other stores not to remove (those the same ingestion reused).

    Returns
    -------
    list of StoreInfo
        The stores removed.
    """
    cap = cache_max_size()
    if cap is None:
        return []
    root = os.path.abspath(default_cache_dir())
    written = [os.path.abspath(local_path(s)) for s in written if not is_url(os.fspath(s))]
    if not any(_same_folder(os.path.dirname(s.rstrip(os.sep)), root) for s in written):
        return []
    protected = {os.path.realpath(s) for s in [*written, *(os.path.abspath(local_path(k)) for k in keep
                                                          if not is_url(os.fspath(k)))]}
    stores = list_stores(root)
    total = sum(info.size for info in stores)
    removed: list[StoreInfo] = []
    for info in sorted(stores, key=lambda info: info.last_used):
        if total <= cap:
            break
        if not info.complete or os.path.realpath(info.path) in protected:
            continue
        outcome = _remove(info, lambda now, used=info.last_used: now.complete and now.last_used <= used,
                          dry_run=False)
        if outcome is not None and outcome.outcome in ("removed", "emptied"):
            total -= outcome.store.size - (_disk_bytes(info.path) if outcome.outcome == "emptied" else 0)
            removed.append(outcome.store)
    if removed:
        names = ", ".join(f"{os.path.basename(info.path)} ({format_bytes(info.size)})" for info in removed)
        warnings.warn(f"the daskglm cache {root} exceeded {CACHE_MAX_SIZE_KEY} ({format_bytes(cap)}): removed "
                      f"the least recently used store(s) {names}; it now takes {format_bytes(total)}",
                      UserWarning, stacklevel=3)
    if total > cap:
        warnings.warn(f"the daskglm cache {root} takes {format_bytes(total)}, over {CACHE_MAX_SIZE_KEY} "
                      f"({format_bytes(cap)}): the stores left are in use, incomplete or just written",
                      UserWarning, stacklevel=3)
    return removed
