"""Helpers shared by test modules of several folders (every folder imports them as ``helpers``:
``tests/`` is on ``sys.path``, put there by pytest's rootdir-based import of ``tests/conftest.py``).

- files: :func:`write_run`, a 4D array saved as NIfTI with its TR;
- the kernels' simulated blocks: :func:`dataset` (a design and AR(1) data), :func:`assert_close`;
- dask: :class:`TaskCounter` (tasks started on a local scheduler), :func:`no_local_compute`
  (every computation must go to a distributed client);
- real ``dask scheduler`` / ``dask worker`` processes: :func:`real_cluster`, and the model, maps
  and store comparisons of the cluster tests (tests/system/test_distributed.py, test_faults.py,
  test_crash_safety.py; tests/runtime/test_cluster_loss.py);
- nilearn's report pages: :func:`parse_report`, :func:`assert_same_statistical_maps`.

No test module imports another test module or a ``conftest.py``: fixtures live in the
``conftest.py`` files, everything else that is shared lives here (and nilearn's estimator
checks on volume data in ``nilearn_checks.py``).
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import psutil
import pytest
from dask.callbacks import Callback
from nibabel.cifti2 import cifti2_axes as ax
from nilearn.glm.first_level import make_first_level_design_matrix

if TYPE_CHECKING:
    from daskglm.models.first_level import FirstLevelModel


# --------------------------------------------------------------------------- files


def write_run(path: Path, data: np.ndarray, affine: np.ndarray, t_r: float = 2.0) -> Path:
    """Save a 4D int16/float array as NIfTI with the TR in the header."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(np.sqrt((affine[:3, :3] ** 2).sum(0))) + (t_r,))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


# --------------------------------------------------------------------------- the kernels' simulated blocks

RTOL = 1e-10
N, V, P = 100, 300, 6


def make_design(n: int = N, intercept: bool = True, seed: int = 0) -> np.ndarray:
    """Intercept, 3 smoothed block regressors, a linear and a cosine drift."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    hrf = np.exp(-0.5 * ((np.arange(12) - 5) / 1.8) ** 2)
    tasks = []
    for period in (20, 26, 34):
        box = ((t + rng.integers(period)) % period < period // 2).astype(float)
        tasks.append(np.convolve(box, hrf)[:n])
    cols = [*tasks, t / n - 0.5, np.cos(np.pi * (t + 0.5) / n)]
    if intercept:
        cols.insert(0, np.ones(n))
    return np.column_stack(cols)


def simulate(seed: int = 1, n: int = N, v: int = V, intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) noise with a per-voxel rho in [-0.3, 0.85] around a baseline ~1000."""
    rng = np.random.default_rng(seed)
    X = make_design(n, intercept, seed)
    rho = rng.uniform(-0.3, 0.85, v)
    noise = rng.standard_normal((n, v))
    for i in range(1, n):
        noise[i] += rho * noise[i - 1]
    beta = rng.normal(0, 8, (X.shape[1], v))
    Y = rng.uniform(500, 1500, v) + X @ beta + 5 * noise
    return Y, X


@functools.cache
def dataset(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    return simulate(seed)


def assert_close(actual, desired, rtol: float = RTOL) -> None:
    """Relative agreement, scaled by the largest reference value (entries can be ~0)."""
    desired = np.asarray(desired, dtype=np.float64)
    atol = rtol * max(np.abs(desired).max(initial=0.0), np.finfo(float).tiny)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- dask


class TaskCounter(Callback):
    """A dask local-scheduler callback counting the tasks started inside ``with TaskCounter() as c``
    (``c.started``): a graph that is only built starts none."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0

    def _pretask(self, key, dsk, state) -> None:
        self.started += 1



def assert_maps_match(ours, theirs, noise_model: str, what: str = "") -> None:
    """Two images of one map against each other: OLS to 1e-5; AR(1) up to the voxels whose rho lies on a
    bin edge (their AR label may be the neighbouring one: 99.9 % within 1e-4, all within 1e-2)."""
    a, b = np.asarray(ours.get_fdata()), np.asarray(theirs.get_fdata())
    assert a.shape == b.shape, what
    if noise_model == "ols":
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-10, err_msg=what)
    else:
        diff = np.abs(a - b)
        assert (diff <= 1e-4).mean() >= 0.999, what
        assert diff.max() <= 1e-2, what

def _refuse_local(*args, **kwargs):
    raise AssertionError("a dask computation ran on a local scheduler in the client process")


@contextlib.contextmanager
def no_local_compute():
    """Every dask computation of this process must go to a distributed client.

    dask's local schedulers (threads, sync, processes) all execute through
    ``dask.local.get_async``: it is replaced by a function that raises, and so
    is the configured default scheduler, which catches an implicit
    ``.compute()`` / ``.values`` / ``.load()`` / ``np.asarray(dask_array)`` /
    ``dask.compute`` even where a current distributed client would have taken
    it. (Worker processes are not affected: they run the tasks.)
    """
    import dask.local
    import dask.multiprocessing
    import dask.threaded

    with pytest.MonkeyPatch.context() as patch, dask.config.set(scheduler=_refuse_local):
        for module in (dask.local, dask.threaded, dask.multiprocessing):
            patch.setattr(module, "get_async", _refuse_local)
        yield


# --------------------------------------------------------------------------- real dask processes

#: The contrasts whose maps the cluster tests compare (:func:`fit_and_maps`).
CONTRASTS = {
    "DSt_minus_SSt": np.array([[-1, -1, 1, 1]]),
    "DSp_minus_SSp": np.array([[-1, 1, -1, 1]]),
    "Effects_of_interest": np.eye(13)[:5],
}
N_SCANS = 100


def _dask_script() -> str:
    """The ``dask`` console script of this interpreter's environment."""
    script = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if script is None:
        pytest.fail("the `dask` console script (package distributed) is not installed")
    return script


class RealCluster:
    """``dask scheduler`` + ``dask worker`` processes, each in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scheduler_file = root / "scheduler.json"
        self.env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
        # The scheduler remembers every transition (not the last 1000): see executed_tasks.
        self.env["DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH"] = "1000000"
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: dict[int, float] = {}  # pid -> create_time of every process we started
        self.address = ""

    def start(self, n_workers: int, memory_limit: str) -> None:
        # --dashboard-address: the HTTP server (health, metrics) that runs even without
        # a dashboard would listen on 0.0.0.0 by default; keep it on the loopback too.
        loopback_http = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
        self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", *loopback_http,
                                  "--scheduler-file", str(self.scheduler_file)])
        self.address = self._wait_for_address()
        for index in range(n_workers):
            self._start(f"worker-{index}", [
                "worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
                "--nworkers", "1", "--nthreads", "1", "--memory-limit", memory_limit,
                *loopback_http, "--name", f"worker-{index}", "--death-timeout", "60",
                "--local-directory", str(self.root / f"worker-{index}"),
            ])
        self.wait_for_workers(n_workers)

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [_dask_script(), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True,  # its own process group: killpg reaches the nanny's worker
        )
        log.close()
        self._remember()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]

    def _remember(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(proc.pid)
                for p in [parent, *parent.children(recursive=True)]:
                    self.seen.setdefault(p.pid, p.create_time())

    def _wait_for_address(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["scheduler"].poll() is not None:
                pytest.fail(f"dask scheduler exited: {self.log('scheduler')}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                address = json.loads(self.scheduler_file.read_text())["address"]
                if address.startswith("tcp://127.0.0.1:"):
                    return address
            time.sleep(0.05)
        pytest.fail(f"dask scheduler wrote no address in {timeout} s: {self.log('scheduler')}")

    def client(self):
        from distributed import Client

        return Client(self.address, set_as_default=False, timeout=30)

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        with self.client() as client:
            try:
                client.wait_for_workers(n, timeout=timeout)
            except TimeoutError:
                logs = "\n".join(self.log(name) for name in self.procs if name != "scheduler")
                pytest.fail(f"{n} workers did not register in {timeout} s:\n{logs}")
        self._remember()  # the nannies' worker processes exist now

    def processes(self, name: str) -> list[psutil.Process]:
        parent = psutil.Process(self.procs[name].pid)
        return [parent, *parent.children(recursive=True)]

    def listening(self) -> set[str]:
        """IP addresses on which the cluster's processes accept connections."""
        return {conn.laddr.ip for name in self.procs for proc in self.processes(name)
                for conn in proc.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN}

    def kill(self, name: str) -> None:
        """SIGKILL a worker's whole process group (its nanny and its worker process)."""
        proc = self.procs[name]
        self._remember()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def close(self) -> None:
        self._remember()
        for name in sorted(self.procs, key=lambda n: n == "scheduler"):  # workers first
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():  # whatever did not stop politely
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.assert_no_leftovers()

    def assert_no_leftovers(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alive = []
            for pid, created in self.seen.items():
                with contextlib.suppress(psutil.NoSuchProcess):
                    p = psutil.Process(pid)
                    if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not alive, f"cluster processes left behind: {alive}"


@contextlib.contextmanager
def real_cluster(root: Path, n_workers: int = 2, memory_limit: str = "1.5GiB",
                 env: dict[str, str] | None = None):
    """A started :class:`RealCluster` (``env``: extra environment of its processes), closed on exit."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = RealCluster(root)
    cluster.env.update(env or {})
    try:
        cluster.start(n_workers, memory_limit)
        yield cluster
    finally:  # also when the start failed half-way
        cluster.close()


#: Small blocks, so that a fit or an ingestion has tens of tasks and a kill lands mid-way.
CHUNKS = {"t_chunk": 4, "v_chunk": 256}


def cluster_model(fiac, store: Path, client) -> FirstLevelModel:
    """The model of the cluster tests: AR(1), 5 mm, small chunks, stores under ``store``."""
    from daskglm.models.first_level import FirstLevelModel

    return FirstLevelModel(mask_img=fiac["data"]["mask"], smoothing_fwhm=5.0, noise_model="ar1",
                           store=store, client=client, **CHUNKS)


def fit_and_maps(model: FirstLevelModel, fiac, runs: slice = slice(None)) -> dict[str, np.ndarray]:
    """Fit the runs (both by default) and compute the contrasts' maps (all output types)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(fiac["runs"][runs], design_matrices=fiac["designs"][runs])
        maps = {}
        for name, con in CONTRASTS.items():
            for kind, img in model.compute_contrast(con, output_type="all").items():
                maps[f"{name}/{kind}"] = np.asarray(img.dataobj)
    return maps


def model_stores(model: FirstLevelModel) -> list[str]:
    return [fit.attrs["store"] for fit in model.results_]


def assert_same_maps(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12, err_msg=key)


def store_files(root: Path) -> list[str]:
    """The files under ``root``, fit groups named ``glm-*`` (their key names the store's location), without
    the chunks of a stored gzip seek index: whether ingestion built one depends on how many runs it ingested
    on how many threads (daskglm.store.summary.indexes_pay), not on the data."""
    return sorted(re.sub(r"glm-[0-9a-f]{16}", "glm-*", p.relative_to(root).as_posix())
                  for p in root.rglob("*") if p.is_file() and not p.relative_to(root).as_posix().startswith(
                      "gzip_index/c"))


def fit_group(store: str | Path) -> str:
    """The one fit group of a model's run store (``glm-<fit key>``, see daskglm.glm.fit.fit_key)."""
    (name,) = [p.name for p in Path(store).iterdir() if p.name.startswith("glm")]
    return name


def assert_same_store(store: str, expected: str) -> None:
    """Same ingested rows and fit arrays, complete, every block flagged, the same files."""
    import zarr

    got, ref = zarr.open_group(store, mode="r"), zarr.open_group(expected, mode="r")
    glm, ref_glm = fit_group(store), fit_group(expected)
    assert got.attrs["complete"] is True and got[glm].attrs["complete"] is True
    assert np.asarray(got["ingest_done"][:]).tolist() == [1] * got["ingest_done"].shape[0]
    for path in ("bold", "i", "j", "k", *(f"glm/{name}" for name in ("beta", "sigma2", "label_index", "cov",
                                                                       "label_value"))):
        a, b = got[path.replace("glm", glm)], ref[path.replace("glm", ref_glm)]
        assert a.shape == b.shape and a.chunks == b.chunks and a.dtype == b.dtype, path
        np.testing.assert_array_equal(a[...], b[...], err_msg=path)
    # One file per chunk, as in the uninterrupted store: nothing duplicated, and no
    # "<key>.<uuid>.partial" debris of a chunk write killed midway (swept before
    # the store is marked complete).
    assert store_files(Path(store)) == store_files(Path(expected))


def executed_tasks(cluster: RealCluster) -> dict[str, int]:
    """How many tasks of each key prefix the workers ran (from the scheduler's transition log)."""
    def count(dask_scheduler):
        from collections import Counter

        from distributed.utils import key_split

        return dict(Counter(key_split(t.key) for t in dask_scheduler.transition_log
                            if t.finish == "memory"))

    with cluster.client() as client:
        return client.run_on_scheduler(count)


# --------------------------------------------------------------------------- nilearn's report pages

#: The network references of nilearn 0.14's report template: its stylesheets (Pure CSS), favicon and links.
NILEARN_TEMPLATE_LINKS = frozenset({
    "https://unpkg.com/purecss@1.0.0/build/pure-min.css",
    "https://unpkg.com/purecss@1.0.0/build/grids-responsive-min.css",
    "https://raw.githubusercontent.com/nilearn/nilearn/main/doc/logos/favicon.ico",
    "https://nilearn.github.io",
    "https://github.com/nilearn/nilearn",
    "https://github.com/nilearn/nilearn/issues",
})


def report_page(text: str) -> str:
    """The HTML page of a saved report: the ``srcdoc`` of nilearn's ``<iframe>`` wrapper, unescaped."""
    match = re.fullmatch(r'<iframe srcdoc="(.*)" width="\d+" height="\d+" frameBorder="0"></iframe>', text,
                         re.DOTALL)
    return html.unescape(match.group(1)) if match else text


@dataclass
class ContrastSection:
    """One contrast of the page's "Statistical Maps" section."""

    name: str
    tables: list[list[list[str]]] = field(default_factory=list)
    images: int = 0

    @property
    def details(self) -> dict[str, str]:
        """The thresholding parameters (nilearn's ``clustering_params_to_dataframe``), by row name."""
        return {row[0]: row[1] for row in self.tables[0]}

    @property
    def clusters(self) -> list[list[str]] | None:
        """The cluster table, header first; None when nothing survives (nilearn shows no table)."""
        return self.tables[1] if len(self.tables) > 1 else None


class ReportPage(HTMLParser):
    """Images, network references and the contrast sections of a nilearn GLM report."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str]] = []
        self.external: set[tuple[str, str, str]] = set()  # (tag, attribute, URL)
        self.contrasts: list[ContrastSection] = []
        self._sections: list[bool] = []  # per open <section>: is it the statistical maps?
        self._h3: list[str] | None = None
        self._cell: list[str] | None = None

    @property
    def _in_maps(self) -> bool:
        return any(self._sections)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if re.match(r"\s*(https?:)?//", attrs.get(key, "")):
                self.external.add((tag, key, attrs[key].strip()))
        if tag == "img":
            self.images.append(attrs)
            if self._in_maps and self.contrasts:
                self.contrasts[-1].images += 1
        elif tag == "section":
            self._sections.append(attrs.get("id", "").startswith("statistical-maps"))
        elif self._in_maps and tag == "h3":
            self._h3 = []
        elif self._in_maps and self.contrasts and tag == "table":
            self.contrasts[-1].tables.append([])
        elif self._in_maps and self.contrasts and tag == "tr":
            self.contrasts[-1].tables[-1].append([])
        elif self._in_maps and self.contrasts and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._sections:
            self._sections.pop()
        elif tag == "h3" and self._h3 is not None:
            self.contrasts.append(ContrastSection("".join(self._h3).strip()))
            self._h3 = None
        elif tag in ("td", "th") and self._cell is not None:
            self.contrasts[-1].tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._h3 is not None:
            self._h3.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def names(self) -> list[str]:
        """The contrast names, in page order."""
        return [c.name for c in self.contrasts]


def parse_report(text: str) -> ReportPage:
    """Parse a report page (or the ``<iframe>`` file nilearn's ``save_as_html`` writes)."""
    page = ReportPage()
    page.feed(report_page(text))
    page.close()
    return page


def _close(a: str, b: str, atol: float) -> bool:
    try:
        return abs(float(a) - float(b)) <= atol
    except ValueError:
        return a == b


def assert_same_statistical_maps(ours: ReportPage, theirs: ReportPage, peak_atol: float = 0.011) -> None:
    """The same contrasts, thresholds and cluster tables (coordinates and sizes exact, peaks within ``peak_atol``).

    nilearn prints thresholds with 3 significant digits and peaks with 2
    decimals: maps that agree to 1e-5 may still differ by one unit in the
    last printed digit.
    """
    assert ours.names == theirs.names
    for a, b in zip(ours.contrasts, theirs.contrasts):
        assert a.details.keys() == b.details.keys(), a.name
        for key in a.details:
            assert _close(a.details[key], b.details[key], 0.011), (a.name, key, a.details[key], b.details[key])
        assert (a.clusters is None) == (b.clusters is None), a.name
        assert a.images == b.images, a.name  # a thresholded map is drawn when clusters survive
        if a.clusters is None:
            continue
        assert a.clusters[0] == b.clusters[0] == ["Cluster ID", "X", "Y", "Z", "Peak Stat", "Cluster Size (mm3)"]
        assert len(a.clusters) == len(b.clusters), a.name
        for row_a, row_b in zip(a.clusters[1:], b.clusters[1:]):
            assert row_a[:4] == row_b[:4] and row_a[5] == row_b[5], (a.name, row_a, row_b)
            assert abs(float(row_a[4]) - float(row_b[4])) <= peak_atol, (a.name, row_a, row_b)

#: The first bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- CIFTI

#: The simulated CIFTI runs' repetition time and length.

T_R_CIFTI, N_SCANS_CIFTI = 2.0, 120


def cifti_brain_models(cortex: int = 150, thalamus: bool = True):
    """Left cortex (every other vertex of a mesh) and, optionally, a 48-voxel left thalamus."""
    models = ax.BrainModelAxis.from_surface(np.arange(0, 2 * cortex, 2), 2 * cortex + 20, "CortexLeft")
    if thalamus:
        mask = np.zeros((6, 6, 6), bool)
        mask[1:5, 1:5, 1:4] = True
        models = models + ax.BrainModelAxis.from_mask(mask, affine=np.diag([2.0, 2.0, 2.0, 1.0]),
                                                      name="thalamus_left")
    return models


def cifti_run(seed: int, models) -> tuple[nib.Cifti2Image, np.ndarray, object]:
    """A CIFTI-2 dense time series with DStDSp > baseline at the first 30 cortex vertices, and AR(1) noise.

    Returns the image (in memory), its ``(time, grayordinate)`` float32 matrix and its events."""
    from daskglm.datasets import fiac_events

    rng = np.random.default_rng(seed)
    events = fiac_events(n_scans=N_SCANS_CIFTI, t_r=T_R_CIFTI, seed=seed)
    design = make_first_level_design_matrix(np.arange(N_SCANS_CIFTI) * T_R_CIFTI, events)
    beta = np.zeros((design.shape[1], len(models)))
    beta[list(design.columns).index("DStDSp"), :30] = 8.0
    noise = rng.normal(size=(N_SCANS_CIFTI, len(models)))
    for t in range(1, N_SCANS_CIFTI):
        noise[t] += 0.4 * noise[t - 1]
    data = (500 + design.values @ beta + 4 * noise).astype(np.float32)
    img = nib.Cifti2Image(data, header=(ax.SeriesAxis(0, T_R_CIFTI, N_SCANS_CIFTI, unit="SECOND"), models))
    img.nifti_header.set_intent("ConnDenseSeries")
    return img, data, events


def bids_validator() -> list[str] | None:
    """The command of the BIDS validator (``bids-validator-deno``, its executable or its Python module), or None."""
    exe = shutil.which("bids-validator-deno")
    if exe:
        return [exe]
    try:
        import bids_validator_deno  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-c", "import sys; from bids_validator_deno import cli; sys.exit(cli())"]
