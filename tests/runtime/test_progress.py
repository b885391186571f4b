"""Progress labelled per phase, plain lines when stdout is not a terminal; a bad input's error told
once, without worker tracebacks, its task run once (issue 24, item 9).

- :func:`daskglm.runtime.phase` labels computations; :func:`daskglm.runtime.compute` shows
  their progress under that label: a bar redrawn in place on a terminal, plain lines
  (``label: 3/10 tasks done (1.0 s)``, ``label: done in 1.5 s (10 tasks)``) otherwise, no
  carriage return nor escape sequence, on distributed and on dask's local schedulers.
- Only errors that may be transient (an ``OSError`` that is not a missing file...) are
  retried; a ``ValueError`` runs once and is raised when it happens, not after the rest.
- The real ``daskglm fit`` command in a subprocess: labelled phases redirected to a pipe
  and in a pseudo-terminal; a truncated ``.nii.gz`` run: one error line on stderr, no
  "Compute Failed" from the embedded cluster's workers (three before: the task and its
  two retries).
"""

from __future__ import annotations

import builtins
import io
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import pytest

from daskglm.runtime import compute, get_client, is_transient, phase
from daskglm.runtime.cluster import workers_in_this_process
from daskglm.runtime.progress import Display, current_phase, progress_after

SCRIPT = shutil.which("daskglm", path=os.path.dirname(sys.executable)) or shutil.which("daskglm")
CONTRAST = "DSt_minus_SSt=-1,-1,1,1" + ",0" * 9


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _slow(x, seconds=0.2):
    time.sleep(seconds)
    return x


def _slow_unless(x, seconds: float, stop: str):
    """:func:`_slow`, cut short once the file ``stop`` exists: a worker thread cannot be interrupted, so a
    cancelled task would otherwise keep its (shared) worker busy for the next tests."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(stop):
        time.sleep(0.05)
    return x


def _attempt(path: str, error: str | None, times: int = 10**6, value: int = 1):
    """Append a line to ``path``; raise ``error`` (an exception's name) the first ``times`` attempts."""
    with open(path, "a") as fh:
        fh.write("x\n")
    attempts = Path(path).read_text().count("\n")
    if error is not None and attempts <= times:
        raise getattr(builtins, error)(f"simulated {error} (attempt {attempts})")
    return value


def _attempts(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


# ------------------------------------------------------------------ labels


def test_phase_labels_nest():
    assert current_phase() == "computing"
    with phase("fitting 2 runs"):
        assert current_phase() == "fitting 2 runs"
        with phase("contrast [1 0]", default=True):  # a generic label keeps the caller's
            assert current_phase() == "fitting 2 runs"
        with phase("gzip index", within=True):
            assert current_phase() == "fitting 2 runs: gzip index"
        with phase("ingesting  run\n1/2"):
            assert current_phase() == "ingesting run 1/2"
    with phase("contrast [1 0]", default=True):
        assert current_phase() == "contrast [1 0]"
    with phase("gzip index", within=True):
        assert current_phase() == "gzip index"
    assert current_phase() == "computing"


def test_progress_after_is_read_from_dask_config():
    assert progress_after() == 1.0
    with dask.config.set({"daskglm.progress-after": "2s"}):
        assert progress_after() == 2.0
    with dask.config.set({"daskglm.progress-after": 0}):
        assert progress_after() == 0.0
    for bad in (-1, "soon", True, None):
        with dask.config.set({"daskglm.progress-after": bad}), \
                pytest.raises(ValueError, match="'daskglm.progress-after' must be a duration >= 0"):
            progress_after()


# ------------------------------------------------------------------ the display


def test_display_plain_lines():
    out = io.StringIO()
    display = Display("ingesting run 1/2", time.monotonic() - 1.0, out=out)
    assert not display.terminal
    display.update(3, 10)
    display.update(4, 10)  # within PLAIN_EVERY: no line
    display.finish("done")
    display.update(5, 10)  # after the end: nothing
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"ingesting run 1/2: 3/10 tasks done \(1\.\d s\)", lines[0]), lines
    assert re.fullmatch(r"ingesting run 1/2: done in 1\.\d s \(10 tasks\)", lines[1]), lines
    failed = io.StringIO()
    display = Display("fitting 2 runs", out=failed)
    display.update(2, 8)
    display.finish("failed")
    assert re.fullmatch(r"fitting 2 runs: 2/8 tasks done \(0\.\d s\)\nfitting 2 runs: failed after 0\.\d s "
                        r"\(2/8 tasks done\)\n", failed.getvalue()), failed.getvalue()
    assert "\r" not in out.getvalue() + failed.getvalue() and "\x1b" not in out.getvalue() + failed.getvalue()


def test_display_terminal_bar(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    out = _Terminal()
    display = Display("fitting 2 runs", out=out)
    assert display.terminal
    display.update(5, 10)
    display.finish("done")
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 2
    assert re.fullmatch(r"fitting 2 runs \[#{20} {20}\]  50% 5/10 tasks 0\.\d s\x1b\[K", frames[0]), frames
    assert re.fullmatch(r"fitting 2 runs \[#{40}\] 100% 10 tasks 0\.\d s\x1b\[K\n", frames[1]), frames
    assert all(len(frame.split("\x1b")[0]) < 100 for frame in frames)
    stopped = _Terminal()
    display = Display("a label far too long for a narrow terminal " * 3, out=stopped)
    monkeypatch.setenv("COLUMNS", "60")
    display.update(1, 4)
    display.finish("stopped")
    last = stopped.getvalue().split("\r")[-1]
    assert last.endswith("  stopped\x1b[K\n") and len(last.split("\x1b")[0]) < 60, last


# ------------------------------------------------------------------ compute's progress


@pytest.mark.slow  # its work sleeps ~1.5 s, so that the progress has something to show
@pytest.mark.parametrize("where", ["threads", "distributed"])
def test_compute_shows_labelled_plain_lines_when_stdout_is_not_a_terminal(where, capsys, cluster_client):
    client = "threads" if where == "threads" else cluster_client
    with phase("fitting 2 runs"):
        work = [dask.delayed(_slow)(i, 0.3) for i in range(10)]  # ~1.5 s on two workers
        assert compute(*work, client=client, verbose=1) == tuple(range(10))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\r" not in out and "\x1b" not in out, repr(out)
    assert re.fullmatch(r"fitting 2 runs: \d+/1\d tasks done \(1\.\d s\)", lines[0]), lines
    assert re.fullmatch(r"fitting 2 runs: done in \d\.\d s \(1\d tasks\)", lines[-1]), lines
    # Quick work shows nothing, unless daskglm.progress-after is 0; then unlabelled work is "computing".
    assert compute(dask.delayed(sum)([1, 2]), client=client, verbose=1) == (3,)
    assert capsys.readouterr().out == ""
    with dask.config.set({"daskglm.progress-after": 0}):
        assert compute(dask.delayed(sum)([1, 5]), client=client, verbose=1) == (6,)
    assert re.fullmatch(r"(computing: \d/\d tasks done \(0\.\d s\)\n)?computing: done in 0\.\d s \(\d tasks?\)\n",
                        capsys.readouterr().out)


@pytest.mark.slow  # its work sleeps ~1.5 s, so that the bar is drawn
@pytest.mark.parametrize("where", ["threads", "distributed"])
def test_compute_draws_a_labelled_bar_on_a_terminal(where, monkeypatch, cluster_client):
    client = "threads" if where == "threads" else cluster_client
    monkeypatch.setenv("COLUMNS", "100")
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    with phase("ingesting run 1/2"):
        assert compute(*[dask.delayed(_slow)(i, 0.3) for i in range(10)], client=client, verbose=1) == tuple(range(10))
    frames = out.getvalue().split("\r")[1:]
    assert frames and all(frame.startswith("ingesting run 1/2 [") for frame in frames), frames
    assert all(frame.endswith("\x1b[K") for frame in frames[:-1]), frames
    assert re.fullmatch(r"ingesting run 1/2 \[#{40}\] 100% 1\d tasks \d\.\d s\x1b\[K\n", frames[-1]), frames


@pytest.mark.slow
@pytest.mark.parametrize("where", ["threads", "distributed"])
def test_a_failed_computation_says_so_and_raises(where, capsys, cluster_client, tmp_path):
    client = "threads" if where == "threads" else cluster_client
    with phase("contrast 1/2 language"), pytest.raises(ValueError, match="simulated ValueError"):
        late = dask.delayed(_slow)(-1, 1.5)  # fails once the progress is shown
        compute(*[dask.delayed(_slow)(i, 0.3) for i in range(8)],
                dask.delayed(_attempt)(str(tmp_path / "n"), "ValueError", 1, late), client=client, verbose=1)
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"contrast 1/2 language: failed after \d\.\d s \(\d+/\d+ tasks done\)", lines[-1]), lines


# ------------------------------------------------------------------ retries


def test_which_errors_are_retried():
    import errno
    import gzip

    for transient in (OSError("503 Slow Down"), ConnectionResetError(), TimeoutError(), OSError(errno.EIO, "EIO")):
        assert is_transient(transient), transient
    for permanent in (ValueError("truncated"), TypeError(), KeyError("x"), IndexError(), NotImplementedError(),
                      EOFError(), MemoryError(), RuntimeError("store damaged"), FileNotFoundError("x"),
                      PermissionError(), IsADirectoryError(), gzip.BadGzipFile("not a gzip file"),
                      OSError(errno.ENOSPC, "No space left on device")):
        assert not is_transient(permanent), permanent


@pytest.mark.parametrize("error,retries,runs", [
    ("ValueError", None, 1),  # a bad input: run once (was 3: the scheduler retried every error)
    ("KeyError", None, 1),
    ("FileNotFoundError", None, 1),
    ("OSError", None, 3),  # may be transient: retried twice (daskglm.retries, default 2)
    ("OSError", 0, 1),
    ("ConnectionError", 4, 5),
])
def test_only_transient_errors_are_retried(error, retries, runs, cluster_client, tmp_path):
    count = tmp_path / "attempts"
    config = {} if retries is None else {"daskglm.retries": retries}
    with dask.config.set(config), pytest.raises(getattr(builtins, error), match=f"simulated {error}"):
        compute(dask.delayed(_attempt, pure=False)(str(count), error), client=cluster_client)
    assert _attempts(count) == runs


def test_a_transient_error_is_retried_and_the_work_completes(cluster_client, tmp_path):
    count = tmp_path / "attempts"
    failing = dask.delayed(_attempt, pure=False)(str(count), "OSError", 1, 7)  # fails once, then 7
    work = [dask.delayed(_slow, pure=False)(i, 0.1) for i in range(6)]
    assert compute(*work, dask.delayed(sum)([failing, 1]), client=cluster_client) == (*range(6), 8)
    assert _attempts(count) == 2


def test_a_bad_input_is_raised_when_it_fails_not_after_the_rest(cluster_client, tmp_path):
    outcome: dict = {}
    done = tmp_path / "done"

    def run() -> None:
        try:
            compute(dask.delayed(_slow_unless, pure=False)(0, 30.0, str(done)),  # on one of the two workers
                    dask.delayed(_attempt, pure=False)(str(tmp_path / "n"), "ValueError"), client=cluster_client)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    computing = threading.Thread(target=run, daemon=True)
    computing.start()
    try:
        computing.join(20)  # the sleeping task (30 s) is cancelled, not waited for
        assert not computing.is_alive(), "compute still runs 20 s after the bad input failed: it waits for the rest"
    finally:
        done.touch()  # the sleeping task ends: its worker is free for the next tests
    error = outcome.get("error")
    assert isinstance(error, ValueError) and re.search("simulated ValueError", str(error)), repr(error)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_the_embedded_clusters_workers_do_not_log_task_errors(processes, capfd, tmp_path):
    with get_client(None, n_workers=1, work_bytes=None if processes else 1) as client:
        assert workers_in_this_process(client) != processes
        with pytest.raises(ValueError, match="simulated ValueError"):
            compute(dask.delayed(_attempt, pure=False)(str(tmp_path / "n"), "ValueError"), client=client)
        time.sleep(0.5)  # a worker process's log line would be on its stderr by now
    captured = capfd.readouterr()
    assert "Compute Failed" not in captured.err and "Traceback" not in captured.err, captured.err
    assert _attempts(tmp_path / "n") == 1


# ------------------------------------------------------------------ the daskglm command


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fiac_data):
    root = tmp_path_factory.mktemp("progress")
    data = fiac_data(shape=(20, 22, 10), n_scans=60)
    truncated = root / "truncated.nii.gz"
    whole = Path(data["func2"]).read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    return {"root": root, "runs": [data["func1"], data["func2"]], "truncated": str(truncated),
            "designs": [data["design_matrix1"], data["design_matrix2"]], "mask": data["mask"]}


def _fit_args(runs: dict, out: Path, run_files: list[str] | None = None) -> list[str]:
    return ["fit", *(run_files or runs["runs"]), "--design-matrix", runs["designs"][0], "--design-matrix",
            runs["designs"][1], "--contrast", CONTRAST, "--out", str(out), "--store", str(out.parent / "stores")]


def _environment(**extra: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "DASKGLM_DEBUG")}
    environment.update(extra)
    return environment


def _run_in_pty(command: list[str], env: dict, timeout: float = 300) -> tuple[int, str]:
    """Run ``command`` with its stdout and stderr on a pseudo-terminal; its exit status and output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env,
                            close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), b"".join(chunks).decode()
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_fit_redirected_prints_one_labelled_line_per_phase_and_no_carriage_return(runs, tmp_path):
    env = _environment(DASK_DASKGLM__PROGRESS_AFTER="0", DASK_DASKGLM__FIT_MEMORY_BYTES="0")
    proc = subprocess.run([SCRIPT, *_fit_args(runs, tmp_path / "out"), "--n-workers", "2"], capture_output=True,
                          text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "\r" not in out and "\x1b" not in out, repr(out)
    for label in ("mask: mean of 2 runs", "ingesting 2 runs", "fitting 2 runs", "contrast 1/1 DSt_minus_SSt"):
        assert re.search(rf"^{re.escape(label)}: done in \d+\.\d s \(\d+ tasks?\)$", out, re.MULTILINE), (label, out)
    assert "gzip index" not in out  # two .nii.gz runs on two workers: each read through, no index (indexes_pay)
    progress = [line for line in out.splitlines() if re.search(r": (done in|\d+/\d+ tasks done)", line)]
    assert len(progress) >= 8, out  # 4 phases fewer than with an index per run and a mean pass per run: 12 - 4
    assert all(re.fullmatch(r"[^\[\]#]+: (done in \d+\.\d s \(\d+ tasks?\)|\d+/\d+ tasks done \(\d+\.\d s\))", line)
               for line in progress), progress
    assert proc.stderr == "", proc.stderr  # nothing from the embedded cluster (its scheduler, its workers)
    # The phases come in order, each ended before the next begins.
    order = [line.rsplit(": ", 1)[0] for line in progress if ": done in" in line]
    assert order.index("ingesting 2 runs") < order.index("fitting 2 runs") < order.index("contrast 1/1 DSt_minus_SSt")


@pytest.mark.slow
def test_fit_on_a_terminal_draws_one_labelled_bar_per_phase(runs, tmp_path):
    env = _environment(DASK_DASKGLM__PROGRESS_AFTER="0", DASK_DASKGLM__FIT_MEMORY_BYTES="0", COLUMNS="120")
    status, out = _run_in_pty([SCRIPT, *_fit_args(runs, tmp_path / "out"), "--n-workers", "2"], env)
    assert status == 0, out[-3000:]
    bars = re.findall(r"\r([^\r\n]*?) \[[# ]+\] +\d+%[^\r\n]*", out)
    labels = set(bars)
    for label in ("ingesting 2 runs", "fitting 2 runs", "contrast 1/1 DSt_minus_SSt"):
        assert label in labels, (label, labels)
        # its last frame is complete and stays on its line
        assert re.search(rf"\r{re.escape(label)} \[#+\] 100% \d+ tasks? \d+\.\d s\x1b\[K\r?\n", out), (label, out)
    assert "Completed" not in out  # no unlabelled bar of distributed's


@pytest.mark.slow
@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_fit_of_a_truncated_run_is_one_error_line_without_worker_tracebacks(runs, tmp_path, processes):
    env = _environment(DASK_DASKGLM__THREADS_BELOW="0" if processes else "1 GiB")
    proc = subprocess.run([SCRIPT, *_fit_args(runs, tmp_path / "out", [runs["runs"][0], runs["truncated"]]),
                           "--mask", runs["mask"], "--n-workers", "1"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("Compute Failed") == 0, proc.stderr  # 3 before: the task and its 2 retries
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert re.fullmatch(r"daskglm: error: '.*truncated\.nii\.gz' is truncated: \d+ bytes after decompression, "
                        r"its header announces \d+\n", proc.stderr), proc.stderr
    assert ("processes=1 threads=1" in proc.stdout) == processes or "inproc://" in proc.stdout
