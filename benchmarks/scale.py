"""Benchmark: the batch at cohort scale — ``run_batch`` on 1,000 tiny subjects, and a model of 1,000 HCP subjects.

The real batch (:func:`daskglm.bids.batch.run_batch`, the call ``daskglm bids``
makes) runs on a BIDS dataset of ``--subjects`` simulated subjects of 2 tiny
runs each (``daskglm.datasets.simulate_bids``: the language task's events, 6
motion confounds, smoothing 5, AR(1), 2 contrasts, the default outputs), so
that what is measured is the scheduler's and the client's load, not the
arithmetic. The cluster is real processes on 127.0.0.1: a ``dask scheduler``
process and a ``dask worker --nworkers W --nthreads T`` process tree
(nannies and workers), this process being the client. Measured:

- **client planning**: from ``run_batch``'s start to its first subject
  submitted (the scheduler's clock of that task's arrival, and the client's
  own phases: each subject's discovery and designs, output plans), and the
  client's RSS before and after it;
- **scheduler**: its process's peak RSS and CPU time, and the longest pause
  of its event loop (a scheduler plugin's 10 ms ticker: how late each tick
  came);
- **tasks per second**: tasks that reached memory on the scheduler over the
  subjects' wall, and each task prefix's count and compute time (the
  scheduler's task stream); the tasks each subject's own graph runs on its
  worker's local scheduler (``dask.callbacks`` on every worker), by prefix;
- **scheduler capacity**: after the batch, ``--burst`` no-op tasks on the same
  cluster: tasks per second and the scheduler's CPU per task.

From these and figures measured in BENCHMARKS.md (``--hcp-*`` options) it
prints a projection of a 1,000-subject batch of HCP-sized subjects (2 runs of
91 × 109 × 91 × 1200) on ``--nodes`` nodes of ``--cores`` cores: each term
(client planning, compute, storage bandwidth, scheduler) and the first
bottleneck; :func:`project` is that arithmetic.

``--plan-only`` measures the client's planning alone (no subject runs: the
batch's subjects are reported as not run), which is cheap at any size;
several ``--subjects`` sizes show how each figure grows with the dataset.

    python benchmarks/scale.py --subjects 1000 --workers 8 --threads 2 --json scale.json
    python benchmarks/scale.py --subjects 100,300,1000 --plan-only
    python benchmarks/scale.py --from-json scale.json --fs-gbs 50    # the projection again, other figures
    # smoke test:
    python benchmarks/scale.py --subjects 4 --workers 2 --threads 1 --burst 200

Data are simulated once per size into ``$DASKGLM_BENCH_DATA`` (default
``~/.cache/daskglm/bench``, as ``compare.py``), outside git; the batch's
outputs and stores go to a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

MiB = 2**20
GB = 1e9
#: The HCP-sized subject of the projection: 2 runs of 91 × 109 × 91 voxels × 1200 scans, int16 ``.nii``.
HCP_RUN = (91, 109, 91, 1200)
#: Prefix of the batch's subject tasks (``daskglm.bids.batch._run_distributed``).
SUBJECT_PREFIX = "daskglm-bids-sub"


# ----------------------------------------------------------------------------- the projection


class Projection(NamedTuple):
    """The projected wall time of a batch and its terms, in seconds (see :func:`project`)."""

    nodes: int
    slots: int
    planning_s: float
    compute_s: float
    storage_s: float
    scheduler_s: float
    wall_s: float
    bottleneck: str
    storage_gbs_needed: float


def project(n_subjects: int, nodes: int, cores_per_node: int, subject_wall_s: float, bytes_per_subject: float,
            fs_bytes_per_s: float, node_bytes_per_s: float, scheduler_s_per_task: float,
            tasks_per_subject: float, planning_s: float) -> Projection:
    """Wall time of a batch of ``n_subjects`` on ``nodes`` nodes, term by term.

    The model of :func:`daskglm.bids.batch.run_batch` on a distributed
    cluster: the client plans every subject before the first is submitted
    (``planning_s``, serial); then each subject is one task that runs
    whole on one single-threaded worker, one worker per core
    (``slots = nodes * cores_per_node``), so ``ceil(n_subjects / slots)``
    waves of ``subject_wall_s``. Meanwhile the subjects' inputs are read
    from shared storage at ``min(fs_bytes_per_s, nodes * node_bytes_per_s)``
    and the scheduler spends ``scheduler_s_per_task`` on each of
    ``n_subjects * tasks_per_subject`` tasks. Compute, storage and
    scheduler overlap; the wall is ``planning_s`` plus the largest of them.

    Parameters
    ----------
    n_subjects : int
        Subjects in the batch.
    nodes, cores_per_node : int
        The cluster.
    subject_wall_s : float
        Wall time of one subject on one core.
    bytes_per_subject : float
        Bytes one subject reads from shared storage.
    fs_bytes_per_s : float
        Aggregate bandwidth of the shared file system.
    node_bytes_per_s : float
        One node's link to it.
    scheduler_s_per_task : float
        Scheduler time per task (its CPU time per task at capacity).
    tasks_per_subject : float
        Scheduler tasks per subject.
    planning_s : float
        The client's serial planning before the first subject starts.

    Returns
    -------
    Projection
        ``bottleneck`` names the largest term: ``"client planning"``,
        ``"tasks"`` (compute with idle cores: fewer subjects than cores),
        ``"compute"`` (every core busy), ``"storage bandwidth"`` or
        ``"scheduler"``. ``storage_gbs_needed`` is the bandwidth (GB/s)
        that would keep storage below the compute term.
    """
    if min(n_subjects, nodes, cores_per_node) < 1:
        raise ValueError(f"n_subjects, nodes and cores_per_node must be positive; got "
                         f"{n_subjects}, {nodes}, {cores_per_node}")
    slots = nodes * cores_per_node
    compute = math.ceil(n_subjects / slots) * subject_wall_s
    bandwidth = min(fs_bytes_per_s, nodes * node_bytes_per_s)
    storage = n_subjects * bytes_per_subject / bandwidth
    scheduler = n_subjects * tasks_per_subject * scheduler_s_per_task
    terms = {"client planning": planning_s, "tasks" if n_subjects < slots else "compute": compute,
             "storage bandwidth": storage, "scheduler": scheduler}
    bottleneck = max(terms, key=terms.__getitem__)
    return Projection(nodes, slots, planning_s, compute, storage, scheduler,
                      planning_s + max(compute, storage, scheduler), bottleneck,
                      n_subjects * bytes_per_subject / compute / GB)


def hcp_bytes_per_subject(n_runs: int = 2, bytes_per_value: int = 2) -> int:
    """Bytes of one HCP-sized subject's runs (int16 ``.nii``: 2 bytes a value)."""
    return n_runs * math.prod(HCP_RUN) * bytes_per_value


# ----------------------------------------------------------------------------- cluster instruments


class ScalePlugin(SchedulerPlugin):
    """Scheduler plugin: task transitions by prefix, compute times, event-loop pauses, RSS and CPU.

    Registered from the client (pickled by value: this script is ``__main__``);
    :meth:`report` is read back with ``client.run_on_scheduler``.
    """

    name = "daskglm-scale"
    idempotent = False

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.prefixes: dict[str, list[float]] = {}  # prefix -> [tasks to memory, compute s]
        self.first_arrival: dict[str, float] = {}  # prefix -> time.time() of its first task's arrival
        self.last_memory: dict[str, float] = {}
        self.pauses: list[tuple[float, float]] = []  # (time.time(), lateness s) of ticks later than 50 ms
        self.max_pause = 0.0
        self.ticks = 0
        self.peak_rss = 0
        self._task: Any = None

    async def start(self, scheduler: Any) -> None:
        import asyncio

        self._task = asyncio.ensure_future(self._tick())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _tick(self) -> None:
        import asyncio

        import psutil

        proc = psutil.Process()
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            late = loop.time() - before - self.interval
            self.ticks += 1
            self.max_pause = max(self.max_pause, late)
            if late > 0.05:
                self.pauses.append((time.time(), late))
            if self.ticks % 10 == 0:
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """Count a task reaching memory by prefix, with its compute time; note each prefix's first arrival."""
        from dask.utils import key_split

        prefix = key_split(key)
        if start == "released" and prefix not in self.first_arrival:
            self.first_arrival[prefix] = time.time()
        if finish != "memory":
            return
        entry = self.prefixes.setdefault(prefix, [0, 0.0])
        entry[0] += 1
        for startstop in kwargs.get("startstops") or ():
            if startstop.get("action") == "compute":
                entry[1] += startstop["stop"] - startstop["start"]
        self.last_memory[prefix] = time.time()

    def reset_pauses(self) -> None:
        """Forget the pauses seen so far (the cluster's start-up), to see those of what follows."""
        self.max_pause, self.pauses = 0.0, []

    def report(self) -> dict:
        """What the plugin saw, and the scheduler process's RSS (now and peak) and CPU seconds."""
        import psutil

        proc = psutil.Process()
        cpu = proc.cpu_times()
        self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
        return {"prefixes": {k: list(v) for k, v in self.prefixes.items()}, "first_arrival": dict(self.first_arrival),
                "last_memory": dict(self.last_memory), "max_pause_s": self.max_pause, "pauses": list(self.pauses),
                "ticks": self.ticks, "peak_rss": self.peak_rss, "rss": proc.memory_info().rss,
                "cpu_s": cpu.user + cpu.system}


class LocalTasks(WorkerPlugin):
    """Worker plugin: the tasks each subject's own graph runs on the worker's local scheduler, by prefix.

    A ``dask.callbacks.Callback`` registered in the worker process sees every
    task of ``dask.compute`` on the ``"threads"`` / ``"sync"`` schedulers (the
    subject's blocks); read back with ``client.run``.
    """

    name = "daskglm-scale-local-tasks"
    idempotent = False

    def setup(self, worker: Any) -> None:
        """Register the counting callback in the worker's process; its counts on the worker object."""
        from dask.callbacks import Callback
        from dask.utils import key_split

        lock = threading.Lock()
        stats: dict[str, list[float]] = {}
        started: dict[Any, float] = {}

        def pretask(key: Any, dsk: Any, state: Any) -> None:
            started[(threading.get_ident(), key)] = time.perf_counter()

        def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            begun = started.pop((threading.get_ident(), key), None)
            with lock:
                entry = stats.setdefault(key_split(key), [0, 0.0])
                entry[0] += 1
                entry[1] += 0.0 if begun is None else time.perf_counter() - begun

        self.callback = Callback(pretask=pretask, posttask=posttask)
        self.callback.register()
        worker.daskglm_scale_local_tasks = stats


def _read_local_tasks(dask_worker: Any) -> dict:
    """``client.run`` body: the worker's :class:`LocalTasks` counts, ``{prefix: [tasks, seconds]}``."""
    return dict(getattr(dask_worker, "daskglm_scale_local_tasks", {}))


def _scheduler_report(dask_scheduler: Any) -> dict:
    """``client.run_on_scheduler`` body: :meth:`ScalePlugin.report`."""
    return dask_scheduler.plugins[ScalePlugin.name].report()


def _reset_pauses(dask_scheduler: Any) -> None:
    """``client.run_on_scheduler`` body: :meth:`ScalePlugin.reset_pauses`."""
    dask_scheduler.plugins[ScalePlugin.name].reset_pauses()


class Sampler(threading.Thread):
    """RSS of the client (this process), the scheduler process and the workers' process tree, every 0.2 s."""

    def __init__(self, scheduler_pid: int, workers_pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        import psutil

        self.client = psutil.Process()
        self.scheduler = psutil.Process(scheduler_pid)
        self.workers = psutil.Process(workers_pid)
        self.interval, self.stopped = interval, threading.Event()
        self.peak = {"client": 0, "scheduler": 0, "workers": 0}

    def tree_rss(self, root: Any) -> int:
        """RSS of ``root`` (a ``psutil.Process``) and its descendants, in bytes."""
        import psutil

        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def sample(self) -> dict[str, int]:
        """One sample of the three RSS, in bytes; the peaks updated."""
        now = {"client": self.client.memory_info().rss, "scheduler": self.tree_rss(self.scheduler),
               "workers": self.tree_rss(self.workers)}
        for name, value in now.items():
            self.peak[name] = max(self.peak[name], value)
        return now

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a process gone at shut-down
                return


class Cluster:
    """A ``dask scheduler`` process and a ``dask worker`` process tree on 127.0.0.1, and a client to them."""

    def __init__(self, work: Path, workers: int, threads: int, memory_limit: str) -> None:
        self.work, self.workers, self.threads, self.memory_limit = work, workers, threads, memory_limit
        self.procs: list[subprocess.Popen] = []
        self.client: Any = None

    def __enter__(self) -> Cluster:
        try:
            return self._start()
        except BaseException:
            self._stop()  # what did start: no process outlives the benchmark
            raise

    def _start(self) -> Cluster:
        """Start the scheduler, then the workers; connect, register the plugins, wait for the workers."""
        from distributed import Client

        env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
        file = self.work / "scheduler.json"
        log = (self.work / "cluster.log").open("ab")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(file)], stdout=log, stderr=log, env=env))
        deadline = time.monotonic() + 60
        while not file.exists():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError(f"the scheduler did not start; see {self.work / 'cluster.log'}")
            time.sleep(0.1)
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(file), "--host",
             "127.0.0.1", "--nworkers", str(self.workers), "--nthreads", str(self.threads), "--no-dashboard",
             "--memory-limit", self.memory_limit, "--local-directory", str(self.work / "dask-worker-space")],
            stdout=log, stderr=log, env=env))
        self.client = Client(scheduler_file=str(file))
        self.client.register_plugin(ScalePlugin())
        self.client.register_plugin(LocalTasks())
        self.client.wait_for_workers(self.workers, timeout=180)
        return self

    @property
    def scheduler_pid(self) -> int:
        """Process id of the scheduler."""
        return self.procs[0].pid

    @property
    def workers_pid(self) -> int:
        """Process id of the ``dask worker`` command (its nannies and workers are its descendants)."""
        return self.procs[1].pid

    def __exit__(self, *exc: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        """Close the client; stop the workers, then the scheduler, and kill any process they leave."""
        import psutil

        children = []
        for proc in self.procs:
            try:
                children += psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                pass
        try:
            if self.client is not None:
                self.client.close()
        finally:
            for proc in reversed(self.procs):  # workers first: they leave when asked, the scheduler after
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for child in children:  # a nanny or worker its parent left behind
                try:
                    child.kill()
                except psutil.Error:
                    pass


# ----------------------------------------------------------------------------- measuring one size


def _dataset(n_subjects: int, shape: tuple[int, int, int], n_scans: int) -> Path:
    """The cached dataset of ``n_subjects`` × 2 runs (compare.py's, named as its subject sets)."""
    from compare import simulated_subjects  # benchmarks/ is sys.path[0] when this runs as a script

    params = {"n_subjects": n_subjects, "n_runs": 2, "shape": shape, "n_scans": n_scans}
    return Path(simulated_subjects(f"{n_subjects} subjects", params).root)


def _timed(module: Any, names: list[str], spent: dict[str, list[float]]) -> dict[str, Any]:
    """Wrap ``module``'s functions so that their calls and wall times add up in ``spent``; the originals."""
    originals = {name: getattr(module, name) for name in names}

    def wrap(name: str, func: Any) -> Any:
        @functools.wraps(func)  # run_batch reads first_level_from_bids' signature
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            begun = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                entry = spent.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - begun
        return wrapper

    for name, func in originals.items():
        setattr(module, name, wrap(name, func))
    return originals


def measure(root: Path, n_subjects: int, args: argparse.Namespace) -> dict:
    """One ``run_batch`` of the dataset at ``root`` on a fresh cluster; the figures of the module docstring."""
    from compare import SUBJECT_CONTRASTS  # the subject loop's two contrasts, on the language task
    from distributed import wait

    from daskglm.bids import batch
    from daskglm.bids.subject import SubjectResult

    work = Path(tempfile.mkdtemp(prefix="daskglm-scale-", dir=args.work_dir))
    marks: dict[str, Any] = {}
    spent: dict[str, list[float]] = {}
    try:
        with Cluster(work, args.workers, args.threads, args.memory_limit) as cluster:
            client = cluster.client
            sampler = Sampler(cluster.scheduler_pid, cluster.workers_pid)
            sampler.start()
            run_distributed = batch._run_distributed

            def planned(client_: Any, jobs: list, limit: int) -> Any:
                marks["planned"] = time.time()
                marks["client_rss_planned"] = sampler.client.memory_info().rss
                if args.plan_only:
                    return iter([SubjectResult(job.label, "failed", "not run (--plan-only)") for job in jobs])
                return run_distributed(client_, jobs, limit)

            # first_level_from_bids: every call of the planning pass's (inside _designs or by groups of subjects)
            originals = _timed(batch, ["first_level_from_bids", "_designs", "output_plan", "input_files",
                                       "is_complete", "_check_designs"], spent)
            batch._run_distributed = planned
            try:
                client.run_on_scheduler(_reset_pauses)
                marks["client_rss_start"] = sampler.client.memory_info().rss
                cpu, workers_cpu = _cpu_s(cluster.scheduler_pid), _tree_cpu_s(cluster.workers_pid)
                marks["start"] = time.time()
                result = batch.run_batch(
                    root, "language", SUBJECT_CONTRASTS, work / "out", derivatives_folder="derivatives/fmriprep",
                    max_concurrent_subjects=args.max_subjects, client=client, verbose=0, report=False,
                    figures=not args.no_figures, smoothing_fwhm=5.0, confounds_strategy=("motion",),
                    confounds_motion="basic", store=str(work / "stores"))
                marks["end"] = time.time()
                marks["scheduler_cpu_batch_s"] = _cpu_s(cluster.scheduler_pid) - cpu
                marks["workers_cpu_batch_s"] = _tree_cpu_s(cluster.workers_pid) - workers_cpu
            finally:
                batch._run_distributed = run_distributed
                for name, func in originals.items():
                    setattr(batch, name, func)
            marks["client_rss_end"] = sampler.client.memory_info().rss
            batch_report = client.run_on_scheduler(_scheduler_report)
            local = client.run(_read_local_tasks)
            burst: dict[str, Any] = {}
            if args.burst and not args.plan_only:
                client.run_on_scheduler(_reset_pauses)
                cpu = _cpu_s(cluster.scheduler_pid)
                begun = time.perf_counter()
                futures = client.map(abs, range(args.burst), key=[f"scale-noop-{i}" for i in range(args.burst)])
                wait(futures)
                burst = {"tasks": args.burst, "wall_s": time.perf_counter() - begun,
                         "scheduler_cpu_s": _cpu_s(cluster.scheduler_pid) - cpu}
                del futures
            after = client.run_on_scheduler(_scheduler_report)
            sampler.stopped.set()
            sampler.join()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _summarise(n_subjects, args, result, marks, spent, batch_report, after, local, burst, sampler.peak)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of one process."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its descendants alive now."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _summarise(n_subjects: int, args: argparse.Namespace, result: Any, marks: dict, spent: dict, report: dict,
               after: dict, local: dict, burst: dict, peak: dict) -> dict:
    """The measurement's figures, as one JSON-able record."""
    subjects = list(result.subjects.values())
    seconds = [r.seconds for r in subjects if r.seconds is not None]
    first = report["first_arrival"].get(SUBJECT_PREFIX)
    local_tasks: dict[str, list[float]] = {}
    for stats in local.values():
        for prefix, (count, total) in stats.items():
            entry = local_tasks.setdefault(prefix, [0, 0.0])
            entry[0] += count
            entry[1] += total
    run_s = marks["end"] - marks["planned"]
    tasks = sum(count for count, _ in report["prefixes"].values())
    record = {
        "subjects": n_subjects, "runs_per_subject": 2, "shape": list(args.shape), "n_scans": args.scans,
        "workers": args.workers, "threads": args.threads, "figures": not args.no_figures,
        "plan_only": bool(args.plan_only),
        "done": len(result.done), "failed": len(result.failures) if not args.plan_only else 0,
        "wall_s": marks["end"] - marks["start"],
        "planning_s": marks["planned"] - marks["start"],
        "first_subject_arrival_s": None if first is None else first - marks["start"],
        "planning_parts_s": {name: {"calls": count, "s": total} for name, (count, total) in spent.items()},
        "run_s": run_s,
        "client_rss_mib": {"start": marks["client_rss_start"] / MiB, "planned": marks["client_rss_planned"] / MiB,
                           "end": marks["client_rss_end"] / MiB, "peak": peak["client"] / MiB},
        "scheduler_rss_mib": {"peak": max(report["peak_rss"], peak["scheduler"]) / MiB,
                              "end_of_batch": report["rss"] / MiB},
        "workers_rss_peak_mib": peak["workers"] / MiB,
        "scheduler_cpu_batch_s": marks["scheduler_cpu_batch_s"],
        "workers_cpu_batch_s": marks["workers_cpu_batch_s"],
        "workers_cpu_per_subject_s": marks["workers_cpu_batch_s"] / max(len(result.done), 1),
        "scheduler_max_pause_s": report["max_pause_s"],
        "scheduler_pauses_over_50ms": [(round(at - marks["start"], 2), round(late, 3))
                                       for at, late in report["pauses"]],
        "scheduler_tasks": {prefix: {"tasks": count, "compute_s": total}
                            for prefix, (count, total) in report["prefixes"].items()},
        "scheduler_tasks_per_s": tasks / run_s if run_s > 0 else None,
        "local_tasks": {prefix: {"tasks": count, "s": total} for prefix, (count, total) in local_tasks.items()},
        "subject_task_s": ({"median": statistics.median(seconds), "max": max(seconds), "sum": sum(seconds)}
                           if seconds else None),
    }
    if burst:
        record["burst"] = {**burst, "tasks_per_s": burst["tasks"] / burst["wall_s"],
                           "scheduler_cpu_ms_per_task": 1000 * burst["scheduler_cpu_s"] / burst["tasks"],
                           "max_pause_s": after["max_pause_s"],
                           "counted": after["prefixes"].get("scale-noop", [0])[0]}
    return record


# ----------------------------------------------------------------------------- printing


def print_measurement(records: list[dict]) -> None:
    """The measured figures of each size, as markdown tables."""
    print("\n| subjects | wall | client planning | per subject | first subject on the scheduler | client RSS "
          "start → planned → end | scheduler peak RSS | scheduler CPU | longest scheduler pause | "
          "scheduler tasks/s | subject task, median | workers' CPU per subject |")
    print("| --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |")
    for r in records:
        rss = r["client_rss_mib"]
        first = r["first_subject_arrival_s"]
        task = r["subject_task_s"]
        print(f"| {r['subjects']} | {r['wall_s']:.1f} s | {r['planning_s']:.1f} s | "
              f"{1000 * r['planning_s'] / r['subjects']:.1f} ms | {'—' if first is None else f'{first:.1f} s'} | "
              f"{rss['start']:.0f} → {rss['planned']:.0f} → {rss['end']:.0f} MiB | "
              f"{r['scheduler_rss_mib']['peak']:.0f} MiB | {r['scheduler_cpu_batch_s']:.1f} s | "
              f"{1000 * r['scheduler_max_pause_s']:.0f} ms | "
              f"{'—' if r['plan_only'] else format(r['scheduler_tasks_per_s'], '.2f')} | "
              f"{'—' if task is None else format(task['median'], '.2f') + ' s'} | "
              f"{'—' if r['plan_only'] else format(r['workers_cpu_per_subject_s'], '.2f') + ' s'} |")
    for r in records:
        parts = ", ".join(f"{name} {p['s']:.1f} s ({1000 * p['s'] / max(p['calls'], 1):.1f} ms × {p['calls']})"
                          for name, p in r["planning_parts_s"].items())
        print(f"\n[{r['subjects']} subjects] client planning parts: {parts}")
        if r["scheduler_tasks"]:
            print("\n| scheduler task prefix | tasks | compute, mean |\n| --- | --: | --: |")
            for prefix, t in sorted(r["scheduler_tasks"].items(), key=lambda kv: -kv[1]["tasks"]):
                print(f"| `{prefix}` | {t['tasks']} | {1000 * t['compute_s'] / max(t['tasks'], 1):.1f} ms |")
        if r["local_tasks"]:
            total = sum(t["tasks"] for t in r["local_tasks"].values())
            print(f"\nsubjects' own graphs (workers' local schedulers): {total} tasks, "
                  f"{total / max(r['done'], 1):.0f} per subject")
            print("\n| local task prefix | tasks | per subject | time, mean |\n| --- | --: | --: | --: |")
            for prefix, t in sorted(r["local_tasks"].items(), key=lambda kv: -kv[1]["tasks"])[:12]:
                print(f"| `{prefix}` | {t['tasks']} | {t['tasks'] / max(r['done'], 1):.1f} | "
                      f"{1000 * t['s'] / max(t['tasks'], 1):.1f} ms |")
        if "burst" in r:
            b = r["burst"]
            print(f"\nscheduler capacity: {b['tasks']} no-op tasks in {b['wall_s']:.1f} s = {b['tasks_per_s']:.0f} "
                  f"tasks/s; scheduler CPU {b['scheduler_cpu_ms_per_task']:.2f} ms per task; longest pause "
                  f"{1000 * b['max_pause_s']:.0f} ms")


def projection_inputs(record: dict, args: argparse.Namespace) -> dict:
    """The projection's inputs: the HCP figures (options) and what ``record`` measured."""
    done = max(record["done"], 1)
    fixed = record.get("workers_cpu_per_subject_s", 0.0) if record["done"] else 0.0  # CPU: the machine is shared
    burst = record.get("burst")
    tasks = sum(t["tasks"] for t in record["scheduler_tasks"].values())  # the batch's (read before the burst)
    return {
        "subject_wall_s": args.hcp_subject_s + fixed,
        "bytes_per_subject": hcp_bytes_per_subject(),
        "fs_bytes_per_s": args.fs_gbs * GB, "node_bytes_per_s": args.node_gbs * GB,
        "scheduler_s_per_task": (burst["scheduler_cpu_ms_per_task"] / 1000 if burst else args.scheduler_ms / 1000),
        "tasks_per_subject": max(tasks, done) / done,
        # measured at another size: scaled linearly (a lower bound where planning grows faster)
        "planning_s": record["planning_s"] * args.hcp_subjects / record["subjects"],
        "fixed_s": fixed,
    }


def print_projection(record: dict, args: argparse.Namespace) -> list[dict]:
    """The HCP batch's projection on each of ``--nodes``, from ``record``."""
    inputs = projection_inputs(record, args)
    print(f"\nProjection: {args.hcp_subjects} HCP-sized subjects (2 runs of {'×'.join(map(str, HCP_RUN))}, int16 "
          f".nii: {inputs['bytes_per_subject'] / GB:.2f} GB read per subject), one subject per "
          f"single-threaded worker, {args.cores} cores a node; a subject {inputs['subject_wall_s']:.1f} s on one "
          f"core ({args.hcp_subject_s:.1f} s HCP pair + {inputs['fixed_s']:.2f} s: the workers' CPU per tiny subject); "
          f"shared storage {args.fs_gbs:g} GB/s aggregate, {args.node_gbs:g} GB/s per node; scheduler "
          f"{1000 * inputs['scheduler_s_per_task']:.2f} ms per task × {inputs['tasks_per_subject']:.2f} tasks per "
          f"subject; client planning {inputs['planning_s']:.1f} s (measured at {record['subjects']} subjects)")
    print("\n| nodes × cores | client planning | compute | storage | scheduler | wall | first bottleneck | "
          "storage needed to keep up |")
    print("| --- | --: | --: | --: | --: | --: | --- | --: |")
    rows = []
    for nodes in args.nodes:
        p = project(args.hcp_subjects, nodes, args.cores, inputs["subject_wall_s"], inputs["bytes_per_subject"],
                    inputs["fs_bytes_per_s"], inputs["node_bytes_per_s"], inputs["scheduler_s_per_task"],
                    inputs["tasks_per_subject"], inputs["planning_s"])
        rows.append(p._asdict())
        print(f"| {nodes} × {args.cores} | {p.planning_s:.0f} s | {p.compute_s:.0f} s | {p.storage_s:.0f} s | "
              f"{p.scheduler_s:.2f} s | {p.wall_s:.0f} s | {p.bottleneck} | {p.storage_gbs_needed:.0f} GB/s |")
    return rows


# ----------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    """``--subjects`` / ``--nodes``: comma-separated positive ints."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints; got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints; got {text!r}")
    return sizes


def _shape(text: str) -> tuple[int, int, int]:
    """``--shape``: ``XxYxZ`` voxels."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected XxYxZ, e.g. 16x16x12; got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--subjects", type=_sizes, default=[1000],
                        help="subjects of the simulated dataset, comma-separated for several (default 1000)")
    parser.add_argument("--shape", type=_shape, default=(16, 16, 12), help="voxels of a run (default 16x16x12)")
    parser.add_argument("--scans", type=int, default=80, help="scans of a run (default 80)")
    parser.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="threads per worker (default 2)")
    parser.add_argument("--memory-limit", default="1GiB", help="per worker (default 1GiB)")
    parser.add_argument("--max-subjects", type=int, default=None,
                        help="run_batch's max_concurrent_subjects (default: its own, the number of workers)")
    parser.add_argument("--no-figures", action="store_true", help="run_batch(figures=False): no PNG figures")
    parser.add_argument("--plan-only", action="store_true",
                        help="measure the client's planning only: no subject runs")
    parser.add_argument("--burst", type=int, default=10000,
                        help="no-op tasks after the batch, for the scheduler's capacity (default 10000; 0: none)")
    parser.add_argument("--work-dir", default=None, help="where the batch's outputs and stores go (default: $TMPDIR)")
    parser.add_argument("--json", help="write the records and projections there")
    parser.add_argument("--from-json", help="print the projection of a --json file's last record, measure nothing")
    projection = parser.add_argument_group("projection (defaults: BENCHMARKS.md's figures and assumptions)")
    projection.add_argument("--hcp-subjects", type=int, default=1000, help="subjects of the HCP batch (default 1000)")
    projection.add_argument("--hcp-subject-s", type=float, default=30.0,
                            help="one HCP-sized subject (2 runs, 8 contrasts) on one single-threaded worker, s "
                                 "(default 30.0: compare.py --scaling's 1-worker hcp wall, BENCHMARKS.md issue 7)")
    projection.add_argument("--fs-gbs", type=float, default=20.0,
                            help="aggregate bandwidth of the shared file system, GB/s (assumed; default 20)")
    projection.add_argument("--node-gbs", type=float, default=3.125,
                            help="one node's link to the shared file system, GB/s (assumed; default 3.125: 25 GbE)")
    projection.add_argument("--scheduler-ms", type=float, default=1.0,
                            help="scheduler CPU per task when --burst is 0, ms (default 1.0)")
    projection.add_argument("--nodes", type=_sizes, default=[10, 100], help="node counts (default 10,100)")
    projection.add_argument("--cores", type=int, default=32, help="cores per node (default 32)")
    args = parser.parse_args(argv)

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print_projection(saved["records"][-1], args)
        return 0
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; cluster: 1 scheduler process, "
          f"{args.workers} worker processes × {args.threads} threads on 127.0.0.1", flush=True)
    records = []
    for n_subjects in args.subjects:
        root = _dataset(n_subjects, args.shape, args.scans)
        record = measure(root, n_subjects, args)
        if record["failed"]:
            print(f"[{n_subjects} subjects] {record['failed']} subjects FAILED", file=sys.stderr, flush=True)
        print(f"[{n_subjects} subjects] wall {record['wall_s']:.1f} s, planning {record['planning_s']:.1f} s, "
              f"{record['done']} done", flush=True)
        records.append(record)
    print_measurement(records)
    rows = [] if args.plan_only else print_projection(records[-1], args)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["python", "benchmarks/scale.py",
                                                                    *(argv if argv is not None else sys.argv[1:])]),
                                               "records": records, "projection": rows}, indent=1))
    return 1 if any(r["failed"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
