"""``daskglm cache``: list the run stores of daskglm's cache, remove some.

The subcommand's parser (:func:`add_cache_parser`, added by
:func:`daskglm.cli.main.build_parser`) and its handlers; what a store is, which
ones are removed and how, is :mod:`daskglm.store.cache`'s. ``daskglm cache``
alone is ``daskglm cache list``.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from typing import Any

from dask.utils import format_bytes

from ..store.cache import (
    CACHE_MAX_SIZE_KEY,
    StoreInfo,
    cache_max_size,
    default_cache_dir,
    list_stores,
    remove_stores,
)
from .common import UsageError, add_common_options

__all__ = ["add_cache_parser", "duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """A duration such as ``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or ``1d12h``, in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip().lower())
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhdw])", "", text.strip().lower()).strip():
        raise argparse.ArgumentTypeError(f"must be a duration such as 7d, 12h, 30m or 1d12h; got {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def _cache_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--cache", default=default, metavar="DIR",
                        help="the cache folder (default: $DASKGLM_CACHE, else ~/.cache/daskglm/stores)")


def add_cache_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``cache`` subcommand (``list``, ``remove``) to an ``argparse`` subparsers object.

    ``args.func(args)`` runs it and returns the exit code (0; 1 if a selected store
    could not be removed for another reason than being in use).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.

    Returns
    -------
    argparse.ArgumentParser
        The ``cache`` parser.
    """
    p = subparsers.add_parser(
        "cache", help="list or remove the run stores of daskglm's cache",
        description="The run stores daskglm keeps in its cache folder ($DASKGLM_CACHE, else "
                    "~/.cache/daskglm/stores): one per run file and ingestion parameters, reused while the run is "
                    "unchanged. 'list' shows them, 'remove' deletes some. Only daskglm stores are ever removed; "
                    "a store in use by another process is skipped. Without a subcommand: list.")
    _cache_option(p, None)
    add_common_options(p)
    p.set_defaults(func=_list_command)
    actions = p.add_subparsers(dest="cache_command", metavar="ACTION")

    listing = actions.add_parser("list", help="each store: size, source, times, fits; the total",
                                 description="List the daskglm stores of the cache folder: path, size on disk, the "
                                             "run (and mask) each was made from, when it was created and last "
                                             "used, whether it is complete, its fits; then the total.")
    _cache_option(listing, argparse.SUPPRESS)
    add_common_options(listing)
    listing.set_defaults(func=_list_command)

    remove = actions.add_parser(
        "remove", help="remove stores: --all, --older-than, --source (--dry-run to see which)",
        description="Remove daskglm stores from the cache folder: every one (--all), those last used longer ago "
                    "than --older-than, those made from the run file --source (both: the stores meeting both). "
                    "Stores in use by another process are skipped; files and folders that are not daskglm stores "
                    "are never touched.")
    _cache_option(remove, argparse.SUPPRESS)
    remove.add_argument("--all", action="store_true", dest="all_stores", help="every store")
    remove.add_argument("--older-than", type=duration, default=None, metavar="DURATION",
                        help="stores not used for this long, e.g. 7d, 12h, 30m, 1d12h")
    remove.add_argument("--source", default=None, metavar="PATH",
                        help="stores made from this run file (which need not exist any more)")
    remove.add_argument("--dry-run", "-n", action="store_true", help="say what would be removed, remove nothing")
    add_common_options(remove)
    remove.set_defaults(func=_remove_command)
    return p


def _folder(args: argparse.Namespace) -> str:
    return os.path.abspath(os.path.expanduser(args.cache)) if args.cache else os.fspath(default_cache_dir())


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "unknown"


def _size(n: int) -> str:
    return format_bytes(n)


def _describe(info: StoreInfo) -> list[str]:
    state = "complete" if info.complete else "incomplete"
    lines = [info.path,
             f"    {_size(info.size)}, {state}, created {_when(info.created)}, last used {_when(info.last_used)}"]
    source = info.source or "unrecorded"
    if info.source_state in ("missing", "changed"):
        source += f" ({info.source_state} since: this store is no longer reused for it)"
    lines.append(f"    source: {source}")
    if info.mask is not None:
        lines.append(f"    mask: {info.mask}")
    lines.append(f"    fits: {', '.join(info.fits) if info.fits else 'none'}")
    return lines


def _list_command(args: argparse.Namespace) -> int:
    """Handler of ``daskglm cache [list]``."""
    folder = _folder(args)
    stores = list_stores(folder)
    for info in stores:
        print("\n".join(_describe(info)))
    total = sum(info.size for info in stores)
    cap = cache_max_size()
    limit = f" (cap {CACHE_MAX_SIZE_KEY}: {_size(cap)})" if cap is not None else ""
    exists = "" if os.path.isdir(folder) else " (no such folder)"
    print(f"total: {len(stores)} store{'s' if len(stores) != 1 else ''}, {_size(total)} in {folder}{exists}{limit}")
    return 0


def _remove_command(args: argparse.Namespace) -> int:
    """Handler of ``daskglm cache remove``."""
    if not (args.all_stores or args.older_than is not None or args.source is not None):
        raise UsageError("say which stores to remove: --all, --older-than DURATION or --source PATH "
                         "(--dry-run to see which first)")
    if args.all_stores and (args.older_than is not None or args.source is not None):
        raise UsageError("--all selects every store: give it alone, or --older-than / --source without it")
    folder = _folder(args)
    removals = remove_stores(folder, all_stores=args.all_stores, older_than=args.older_than, source=args.source,
                             dry_run=args.dry_run)
    freed = failed = skipped = 0
    for removal in removals:
        info = removal.store
        if removal.outcome in ("removed", "would remove"):
            print(f"{removal.outcome} {info.path} ({_size(info.size)})")
            freed += info.size
        elif removal.outcome == "emptied":
            print(f"emptied {info.path}: {removal.reason}")
        else:
            print(f"skipped {info.path}: {removal.reason}")
            skipped += 1
            failed += not removal.reason.startswith("in use")
    done = sum(r.outcome in ("removed", "emptied", "would remove") for r in removals)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {done} store{'s' if done != 1 else ''} ({_size(freed)}) from {folder}"
          + (f"; skipped {skipped}" if skipped else ""))
    return 1 if failed else 0
