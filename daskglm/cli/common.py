"""Shared pieces of the ``daskglm`` command line: the parser class, argument types, common options.

Every error about an argument is one line on stderr, ``daskglm: error: ...``,
with exit status 2 (argparse's convention); see :mod:`daskglm.cli.main`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, NoReturn

from dask.utils import parse_bytes

from ..runtime.cluster import get_client, verbosity

__all__ = ["Parser", "one_line", "positive_int", "nonnegative_int", "finite_float", "positive_float",
           "nonnegative_float", "memory_size", "input_path", "add_cluster_options", "add_common_options",
           "warnings_as_lines", "say", "cluster", "UsageError"]


def one_line(message: Any) -> str:
    """A message (or exception) as one line: whitespace runs collapsed, never empty."""
    text = " ".join(str(message).split())
    if isinstance(message, BaseException) and not text:
        text = type(message).__name__
    return text


class UsageError(ValueError):
    """Options that do not go together, found after parsing: reported like argparse's errors (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``daskglm: error: <message> (see '<prog> --help')``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"daskglm: error: {one_line(message)} (see '{self.prog} --help')\n")


# ------------------------------------------------------------------ argument types


def positive_int(text: str) -> int:
    """An integer >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return int(text)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; got {text!r}")
    return int(text)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A finite number."""
    return _float(text)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text!r}")
    return value


def memory_size(text: str) -> str:
    """A memory size dask understands (``4GiB``, ``500MB``, bytes) or ``auto``; returned as given."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        if parse_bytes(text) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        message = f"must be a memory size such as 4GiB or 500MB, or auto; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    return text


def input_path(text: str) -> str:
    """An existing local file, or an fsspec URL (``s3://...``, checked when it is read)."""
    if "://" in text:
        return text
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"file not found: {text!r}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a folder, not a file: {text!r}")
    return text


# ------------------------------------------------------------------ options shared by subcommands


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``--scheduler``, ``--n-workers`` (alias ``--workers``) and ``--memory-limit``."""
    group = parser.add_argument_group("Dask cluster")
    group.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="Dask scheduler address (tcp://host:port), scheduler file, or local scheduler name "
             "(sync, threads, processes) (default: the DASK_SCHEDULER_ADDRESS environment variable, "
             "else an embedded LocalCluster)")
    group.add_argument("--n-workers", "--workers", dest="n_workers", type=positive_int, default=None,
                       metavar="N",
                       help="worker processes of the embedded LocalCluster, one thread each "
                            "(default: one per core available)")
    group.add_argument("--memory-limit", type=memory_size, default=None, metavar="SIZE",
                       help="memory limit per worker of the embedded LocalCluster, e.g. 4GiB "
                            "(default: the available memory split between the workers)")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--verbose N`` and ``--debug`` (the latter also accepted before the subcommand)."""
    parser.add_argument("--verbose", "-v", type=int, default=1, metavar="N",
                        help="0: errors only; 1: a line per step and warnings; 2: more detail "
                             "(default: %(default)s)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error (default: off; "
                             "or set DASKGLM_DEBUG=1)")


@contextlib.contextmanager
def cluster(args: argparse.Namespace, work_bytes: int | None = None) -> Iterator[Any]:
    """:func:`daskglm.runtime.cluster.get_client` from ``--scheduler``, ``--n-workers``, ``--memory-limit``.

    ``work_bytes``: the size of the runs to process (see :func:`daskglm.runtime.cluster.get_client`).

    A bad or unreachable ``--scheduler`` is reported as such. Inside the block,
    computations show progress bars when ``--verbose`` > 0
    (:func:`daskglm.runtime.cluster.verbosity`).
    """
    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(get_client(args.scheduler, n_workers=args.n_workers,
                                                    memory_limit=args.memory_limit, work_bytes=work_bytes))
        except (ValueError, OSError) as exc:
            if args.scheduler is None:
                raise
            raise ValueError(f"--scheduler {args.scheduler!r}: {one_line(exc)}") from exc
        stack.enter_context(verbosity(max(0, args.verbose)))
        yield client


def say(args: argparse.Namespace, level: int, text: str) -> None:
    """Print a progress line on stdout when ``--verbose`` >= ``level``."""
    if getattr(args, "verbose", 1) >= level:
        print(text, flush=True)


@contextlib.contextmanager
def warnings_as_lines(verbose: int) -> Iterator[None]:
    """Python warnings as ``daskglm: warning: ...`` lines on stderr (none with ``verbose`` 0)."""
    seen: set[str] = set()

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = one_line(message)
        if text not in seen:  # once per text, whichever call site or catch_warnings block
            seen.add(text)
            print(f"daskglm: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        if verbose <= 0:
            warnings.simplefilter("ignore")  # else Python's filters (ResourceWarning etc. stay hidden)
        warnings.showwarning = show
        yield
