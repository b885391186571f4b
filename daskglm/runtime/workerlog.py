"""The embedded cluster's log: no "Compute Failed" report on the user's terminal, no shutdown noise.

distributed's worker logs every task that raises as ``Compute Failed`` with
the task, the exception and its traceback (logger ``distributed.worker``,
level ERROR). The workers of daskglm's embedded ``LocalCluster`` log on the
user's stderr, so a bad input showed a block of worker log before daskglm's
own one-line error, which says the same; and the rest of the computation,
cancelled, left tasks running when the cluster closed, each logged as
"ended with CancelledError". :class:`QuietTaskErrors` is a worker plugin that
drops those records (and nothing else) in each worker, also in the workers a
nanny starts later; the exception still reaches the client
(``--debug`` shows its traceback).

The embedded cluster's scheduler runs in this process. A progress listener
(:mod:`daskglm.runtime.progress`) that ended less than its feed interval
(0.1 s) before the cluster closed leaves the scheduler's feed of it asleep,
cancelled by the close and logged as an ERROR with a traceback.
:func:`quiet_progress_feeds` drops those records (a ``CancelledError`` raised
in the scheduler's ``feed``) while the cluster lives.

This module is imported only when an embedded cluster is started:
``distributed`` is not imported with the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["FeedCancelledFilter", "QuietTaskErrors", "TaskErrorFilter", "quiet_progress_feeds"]

#: The loggers of distributed's "Compute Failed" record and of its "ended with CancelledError" one.
WORKER_LOGGER = "distributed.worker"
STATE_MACHINE_LOGGER = "distributed.worker.state_machine"


class TaskErrorFilter(logging.Filter):
    """Drops distributed's "Compute Failed" records (a task raised), and its warning that a task
    still running when its worker closed "ended with CancelledError" (the rest of a failed
    computation, cancelled); keeps every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Compute Failed"):
            return False
        return not (message.startswith("Async instruction for") and message.endswith("ended with CancelledError"))


_FILTER = TaskErrorFilter()


class QuietTaskErrors(WorkerPlugin):
    """A worker plugin installing :class:`TaskErrorFilter` on distributed's worker loggers while the worker runs."""

    name = "daskglm-quiet-task-errors"
    idempotent = True

    def setup(self, worker: Any) -> None:
        for name in (WORKER_LOGGER, STATE_MACHINE_LOGGER):
            logging.getLogger(name).addFilter(_FILTER)  # addFilter skips a filter already there

    def teardown(self, worker: Any) -> None:
        for name in (WORKER_LOGGER, STATE_MACHINE_LOGGER):
            logging.getLogger(name).removeFilter(_FILTER)


#: The logger of the scheduler's cancelled feeds.
SCHEDULER_LOGGER = "distributed.scheduler"


class FeedCancelledFilter(logging.Filter):
    """Drops the records of a ``CancelledError`` raised in the scheduler's ``feed`` (a progress
    listener's, cancelled by the scheduler's close); keeps every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, asyncio.CancelledError):
            return True
        frame = error.__traceback__
        while frame is not None:
            if frame.tb_frame.f_code.co_name == "feed":
                return False
            frame = frame.tb_next
        return True


@contextlib.contextmanager
def quiet_progress_feeds() -> Iterator[None]:
    """:class:`FeedCancelledFilter` on distributed's scheduler logger inside the block (an embedded
    cluster's life: enter it before the cluster starts, so that it is left after the cluster closed)."""
    log, quiet = logging.getLogger(SCHEDULER_LOGGER), FeedCancelledFilter()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)
