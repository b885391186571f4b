"""The ``daskglm`` command (and ``python -m daskglm``): :func:`main`.

Before the command line's modules are imported, a ``daskglm bids`` that will
run on an embedded cluster starts the forkserver its worker processes are
forked from (:func:`daskglm.runtime.cluster.start_worker_forkserver`), so that
the workers' imports happen once, while this process imports and plans.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

#: What a ``daskglm bids`` worker runs: a subject's fit, maps, tables and figures.
BIDS_WORKER_MODULES = ("daskglm.bids.batch", "nilearn.plotting")


def _embedded_bids(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a ``daskglm bids`` run on an embedded cluster (no ``--scheduler``, no
    ``DASK_SCHEDULER_ADDRESS``, no ``--help``); options may be abbreviated, as argparse allows."""
    words = [word for word in argv if not word.startswith("-")]
    if not words or words[0] != "bids" or os.environ.get("DASK_SCHEDULER_ADDRESS"):
        return False
    for word in argv:
        option = word.split("=", 1)[0]
        if option in ("-h", "--help") or (len(option) >= 4 and "--scheduler".startswith(option)):
            return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``daskglm`` command line on ``argv`` (default: ``sys.argv[1:]``); return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if _embedded_bids(args):
        from daskglm.runtime.cluster import start_worker_forkserver

        start_worker_forkserver(BIDS_WORKER_MODULES)
    from daskglm.cli import main as run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
