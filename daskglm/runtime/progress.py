"""Progress of daskglm's computations: one labelled bar (or plain lines) per phase.

A *phase* is a label for the computations run inside a block::

    with phase("ingesting run 1/2"):
        compute(...)

:func:`daskglm.runtime.cluster.compute` shows the progress of a computation
that lasts longer than :func:`progress_after` (dask config
``daskglm.progress-after``, default 1 s), at ``verbose`` >= 1, under the label
of the innermost :func:`phase` (``"computing"`` outside of any):

- in a terminal (``sys.stdout.isatty()``), one bar per computation, redrawn in
  place and left on its line when the computation ends::

      fitting 2 runs [########################      ]  60% 160/266 tasks 2.4 s

- when stdout is not a terminal (a file, a pipe, a CI log), plain lines, no
  carriage returns nor terminal escapes: one when the bar would appear, one
  per further tenth of the tasks done (at most one per
  :data:`PLAIN_EVERY` seconds), and one at the end::

      fitting 2 runs: 40/266 tasks done (1.0 s)
      fitting 2 runs: done in 4.1 s (266 tasks)

  (``failed after ...`` when the computation raised, ``stopped after ...``
  when it was cancelled or its cluster lost);
- in a notebook with ipywidgets, distributed's widget (see
  :mod:`daskglm.runtime.cluster`).

The counts are dask's tasks (distributed's scheduler feeds them to a small
listener on the client's event loop, every 100 ms; dask's local schedulers
through a callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from .config import config_seconds

__all__ = ["DEFAULT_LABEL", "Display", "current_phase", "phase", "progress_after"]

#: The label of a computation run outside of any :func:`phase`.
DEFAULT_LABEL = "computing"
#: dask config key: seconds a computation runs before its progress is shown.
PROGRESS_AFTER_KEY = "daskglm.progress-after"
#: Default of :data:`PROGRESS_AFTER_KEY`.
DEFAULT_PROGRESS_AFTER = 1.0
#: Plain-line mode: at most one line of intermediate progress per this many seconds.
PLAIN_EVERY = 10.0
#: Seconds between two redraws of a terminal bar (and between two feeds of the scheduler's counts).
INTERVAL = 0.1
#: Seconds a distributed listener is given to hear the end of the work before it is stopped.
END_WAIT = 2.0

_PHASE: contextvars.ContextVar[str | None] = contextvars.ContextVar("daskglm_phase", default=None)


@contextlib.contextmanager
def phase(label: str, *, default: bool = False, within: bool = False) -> Iterator[None]:
    """Label the computations of the block (their progress bar, or their plain lines).

    Parameters
    ----------
    label : str
        What the computations do, for the user: ``"ingesting run 1/2"``,
        ``"fitting 2 runs"``, ``"contrast 1/3 language"``... The innermost
        phase's label is used.
    default : bool, default=False
        A generic label, for computations the caller has not labelled: an
        enclosing phase's label is kept (a model labels its contrasts
        ``"contrast ..."``, the command line with the contrast's name).
    within : bool, default=False
        A step of the enclosing phase: ``"<enclosing label>: <label>"``
        (``label`` alone outside of any phase).

    Yields
    ------
    None
        Nothing: the label applies until the block ends, then the enclosing
        one is back.
    """
    if default and _PHASE.get() is not None:
        yield
        return
    label = " ".join(str(label).split())
    if within and _PHASE.get() is not None:
        label = f"{_PHASE.get()}: {label}"
    token = _PHASE.set(label or DEFAULT_LABEL)
    try:
        yield
    finally:
        _PHASE.reset(token)


def current_phase() -> str:
    """The label of the innermost :func:`phase` (:data:`DEFAULT_LABEL` outside of any)."""
    return _PHASE.get() or DEFAULT_LABEL


def progress_after() -> float:
    """Seconds a computation runs before its progress is shown (at ``verbose`` >= 1).

    The dask config key ``daskglm.progress-after`` (``DASK_DASKGLM__PROGRESS_AFTER``
    in the environment): seconds, or a duration such as ``"2s"``; 0 shows every
    computation. Default :data:`DEFAULT_PROGRESS_AFTER`.

    Raises
    ------
    ValueError
        The configured value is not a non-negative, finite duration.
    """
    return config_seconds(PROGRESS_AFTER_KEY, DEFAULT_PROGRESS_AFTER, zero=True)


def duration(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _tasks(n: int) -> str:
    return f"{n} task" if n == 1 else f"{n} tasks"


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (``isatty``); ``False`` for anything that cannot tell."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Display:
    """One computation's progress under its phase's label, on ``out`` (default ``sys.stdout``).

    A bar redrawn in place on a terminal, plain lines otherwise (see the
    module's docstring). :meth:`update` may be called from any thread;
    :meth:`finish` ends it once (later calls do nothing).

    Parameters
    ----------
    label : str
    started : float, optional
        ``time.monotonic()`` of the computation's start (default: now): the
        times shown count from it, not from the moment the bar appears.
    out : file, optional
    terminal : bool, optional
        Draw a bar (default: whether ``out`` is a terminal).
    """

    def __init__(self, label: str, started: float | None = None, out: TextIO | None = None,
                 terminal: bool | None = None) -> None:
        self.label = label
        self.started = time.monotonic() if started is None else started
        self.out = out if out is not None else sys.stdout
        self.terminal = is_terminal(self.out) if terminal is None else terminal
        self.done: int | None = None
        self.total: int | None = None
        self.ended = False
        self._lock = threading.Lock()
        self._drawn = 0.0  # when the terminal bar was last drawn
        self._said: tuple[float, float] | None = None  # plain lines: (when, fraction done) of the last one

    # ------------------------------------------------------------------ public

    def update(self, done: int, total: int) -> None:
        """The computation has ``done`` of its ``total`` tasks done."""
        with self._lock:
            if self.ended:
                return
            self.done, self.total = int(done), int(total)
            now = time.monotonic()
            if self.terminal:
                if now - self._drawn >= INTERVAL or done >= total:
                    self._drawn = now
                    self._write("\r" + self._bar(now) + "\x1b[K")
                return
            fraction = done / total if total else 1.0
            step = self._said is not None and (now - self._said[0] >= PLAIN_EVERY and done < total
                                               and math.floor(fraction * 10) > math.floor(self._said[1] * 10))
            if self._said is None or step:
                self._said = (now, fraction)
                self._write(f"{self.label}: {self._counts()} tasks done ({duration(now - self.started)})\n")

    def finish(self, outcome: str = "done", counts: tuple[int, int] | None = None) -> None:
        """End the display: ``"done"``, ``"failed"`` (the computation raised) or ``"stopped"``
        (cancelled, interrupted, or its cluster lost); ``counts``: the last ``(done, total)``."""
        with self._lock:
            if self.ended:
                return
            self.ended = True
            if counts is not None:
                self.done, self.total = int(counts[0]), int(counts[1])
            now = time.monotonic()
            if outcome == "done" and self.total is not None:
                self.done = self.total
            if self.terminal:
                tail = "" if outcome == "done" else f"  {outcome}"
                self._write("\r" + self._bar(now, tail) + "\x1b[K\n")
                return
            elapsed = duration(now - self.started)
            if outcome == "done":
                tasks = f" ({_tasks(self.total)})" if self.total is not None else ""
                self._write(f"{self.label}: done in {elapsed}{tasks}\n")
            else:
                tasks = f" ({self._counts()} tasks done)" if self.total is not None else ""
                self._write(f"{self.label}: {outcome} after {elapsed}{tasks}\n")

    # ------------------------------------------------------------------ drawing

    def _counts(self) -> str:
        return f"{self.done}/{self.total}"

    def _bar(self, now: float, tail: str = "") -> str:
        """``label [#####     ]  50% 12/24 tasks 1.2 s``, fitted to the terminal's width."""
        columns = shutil.get_terminal_size((80, 24)).columns
        if self.total is None:
            fraction, counts = (1.0 if self.ended and not tail else 0.0), ""
        else:
            fraction = self.done / self.total if self.total else 1.0
            counts = f" {_tasks(self.total)}" if self.done == self.total else f" {self._counts()} tasks"
        right = f" {int(100 * fraction):3d}%{counts} {duration(now - self.started)}{tail}"
        # The bar's width does not change as the counts, the time or the outcome change.
        total = "?" if self.total is None else self.total
        widest = len(f" 100% {total}/{total} tasks 59 min 59 s  stopped")
        label = self.label
        width = min(40, columns - 1 - len(label) - 3 - max(widest, len(right)))
        if width < 10:  # a narrow terminal: the label gives way first
            width = 10
            room = max(columns - 1 - width - 3 - max(widest, len(right)), 8)
            label = label if len(label) <= room else label[:room - 3] + "..."
        bar = "#" * int(width * fraction)
        return f"{label} [{bar:<{width}}]{right}"[:max(columns - 1, 20)]

    def _write(self, text: str) -> None:
        with contextlib.suppress(ValueError, OSError):  # a closed stream: nothing to show it on
            self.out.write(text)
            self.out.flush()


# ------------------------------------------------------------------ distributed


def _listener_class() -> type:
    from distributed.diagnostics.progressbar import ProgressBar

    class Listener(ProgressBar):
        """distributed's scheduler-fed progress, drawn by a :class:`Display` (no text of its own)."""

        def __init__(self, keys: list, scheduler: str, display: Display) -> None:
            super().__init__(keys, scheduler, interval=INTERVAL, complete=True)
            self.display = display
            self.responded = threading.Event()  # the scheduler's side is set up (it has found the keys)

        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
            self.display.update(all - remaining, all)
            self.responded.set()

        def _draw_stop(self, **kwargs: Any) -> None:
            pass  # whoever waits for the work ends the display: an error may yet be retried

    return Listener


class DistributedProgress:
    """A :class:`Display` fed by distributed's scheduler, listening on the client's event loop.

    distributed's ``progress`` blocks its caller until the work is done: a
    cluster lost mid-way would freeze it. Here the listener runs as a task of
    the client's loop and is stopped from the waiting thread, whatever happens.
    It ends by itself when the work is done or a task fails; :meth:`restart`
    listens again (tasks retried).
    """

    def __init__(self, client: Any, futures: list, address: str, display: Display) -> None:
        self.client, self.address, self.display = client, address, display
        self.stopped = threading.Event()
        self.task: Any = None
        self.restart(futures)

    def restart(self, futures: list) -> None:
        """Listen to ``futures`` (again, after some were retried)."""
        self._cancel()
        self.listener = _listener_class()(futures, self.address, self.display)
        self.stopped = threading.Event()
        self.task = asyncio.run_coroutine_threadsafe(self._run(self.listener, self.stopped),
                                                     self.client.loop.asyncio_loop)

    @staticmethod
    async def _run(listener: Any, stopped: threading.Event) -> None:
        try:
            await listener.listen()  # returns once the work is done, a task failed, or the scheduler gone
        finally:
            comm = getattr(listener, "comm", None)
            if comm is not None and not comm.closed():
                comm.abort()
            stopped.set()

    def _cancel(self) -> None:
        if self.task is not None and not self.stopped.is_set():
            self.task.cancel()
            self.stopped.wait(1.0)

    def stop(self, outcome: str) -> None:
        """Stop listening and end the display (see :meth:`Display.finish`).

        Call it while the computation's futures are held. For work ``"done"``
        the listener is given up to :data:`END_WAIT` seconds to hear the end
        (the last counts); for ``"failed"`` work, to have been heard by the
        scheduler: distributed's scheduler side of a listener waits for its
        keys to exist, forever if they were released first (and logs its
        cancellation, with a traceback, when the scheduler closes).
        """
        if outcome == "done":
            self.stopped.wait(END_WAIT)
        elif outcome == "failed":
            self.listener.responded.wait(END_WAIT)
        self._cancel()
        self.display.finish(outcome)


# ------------------------------------------------------------------ dask's local schedulers


def local_progress(label: str, after: float) -> Any:
    """A dask callback showing a local scheduler's computation (``with local_progress(...):``)."""
    from dask.callbacks import Callback

    class LocalProgress(Callback):
        """dask.diagnostics.ProgressBar's counting, drawn by a :class:`Display` after ``after`` seconds."""

        def __init__(self) -> None:
            super().__init__()
            self.display: Display | None = None
            self._state: dict | None = None
            self._running = threading.Event()
            self._timer: threading.Thread | None = None

        def _start(self, dsk: Any) -> None:
            self._started = time.monotonic()
            self._running.set()
            self._timer = threading.Thread(target=self._tick, name="daskglm-progress", daemon=True)
            self._timer.start()

        def _pretask(self, key: Any, dsk: Any, state: dict) -> None:
            self._state = state

        def _counts(self) -> tuple[int, int] | None:
            state = self._state
            if not state:
                return None
            with contextlib.suppress(Exception):  # the scheduler's dicts change under us
                done = len(state["finished"])
                return done, done + sum(len(state[k]) for k in ("ready", "waiting", "running"))
            return None

        def _tick(self) -> None:
            while self._running.is_set():
                if time.monotonic() - self._started >= after:
                    if self.display is None:
                        self.display = Display(label, self._started)
                    counts = self._counts()
                    if counts is not None:
                        self.display.update(*counts)
                time.sleep(INTERVAL)

        def _finish(self, dsk: Any, state: dict, errored: bool) -> None:
            self._state = state
            self.close("failed" if errored else "done")

        def close(self, outcome: str) -> None:
            """Stop the timer; end the display if the work lasted ``after`` (idempotent)."""
            if self._timer is None:
                return
            self._running.clear()
            if self._timer is not threading.current_thread():
                self._timer.join()
            self._timer = None
            if self.display is None and time.monotonic() - self._started >= after:
                self.display = Display(label, self._started)
            if self.display is not None:
                self.display.finish(outcome, self._counts())

    return LocalProgress()
