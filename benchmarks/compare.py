"""Benchmark: nilearn vs daskglm on the same simulated data, each in its own process.

The workload is nilearn's two-run walkthrough at scale: ``FirstLevelModel(mask_img,
smoothing_fwhm=5, minimize_memory=True)`` (AR(1)) fitted on all runs at once, then
the walkthrough's eight contrasts computed as z maps. nilearn runs with
``n_jobs=1`` (its fastest setting on 2 cores); daskglm runs on the embedded
``LocalCluster`` a user gets by default (or ``--workers N``), with a fresh store
folder per repeat, so ingestion is part of the work. In each repeat nilearn runs
first; the daskglm runs (default workers, and 1 worker with ``--scaling``)
follow in alternating order from one repeat to the next.

Each tool runs in a child process of this script (``compare.py --_child``,
whose code is in ``_compare_children.py``). Wall time is that process's
life (interpreter start, imports and cluster start-up included); peak memory is
the largest sum of resident set sizes over the child and all its descendants
(scheduler, nannies, workers), sampled every 50 ms. Processes of the tree still
alive when the child exits are killed and reported.

For daskglm two more figures come from a second child on the stores the run
left behind: the *roofline* (one streaming pass over the zarr-resident data
doing a single ``pinv(X) @ Y`` per voxel column, on the same kind of cluster)
and the fit alone on already-ingested data (``FirstLevelModel.fit`` reusing the
complete stores).

    python benchmarks/compare.py --size fiac,hcp,hcp8 --repeat fiac=3 --scaling --json issue7.json
    python benchmarks/compare.py --size fiac --repeat 3
    python benchmarks/compare.py --size hcp --json hcp.json
    python benchmarks/compare.py --size hcp8 --memory-limit 3GiB
    python benchmarks/compare.py --size hcp --scaling           # also daskglm on 1 worker
    python benchmarks/compare.py --size tiny                    # CI-sized
    python benchmarks/compare.py --size hcp --tools daskglm --roi   # also a ~4,000-voxel spherical mask
    python benchmarks/compare.py --size subjects,subjects-tiny      # many ordinary subjects

``--size subjects`` (8 fMRIPrep-style subjects, 2 runs each of 65 x 77 x 65
voxels at 3 mm x 240 scans, ``.nii.gz``; ``subjects-tiny``: 3 subjects of
40 x 48 x 32 x 120) runs a nilearn user's subject loop (``first_level_from_bids``,
``fit`` with the 6 motion confounds, smoothing 5, AR(1), 2 contrasts, z maps
saved) with nilearn's imports and with daskglm's, and ``daskglm bids`` with its
default outputs on the same dataset, each in its own measured process.

With ``--roi`` daskglm also runs with a region-of-interest mask: a sphere of
about 4,000 brain voxels at the brain mask's centre of mass (the same
workload otherwise), and the script prints its wall time and peak memory
against the whole-brain mask's.

Data are simulated once with ``daskglm.datasets.fiac.simulate_fiac`` into
``$DASKGLM_BENCH_DATA`` (default ``~/.cache/daskglm/bench``), outside git.
Before each tool's run its input files are read once (``--cache warm``, not
timed), so that every run starts with its inputs in the page cache whatever
ran before (``cold`` drops the page cache instead; hcp8's 16 GB stay as they are).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# size -> simulate_fiac arguments; "tools" limits who can run it.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"shape": (32, 32, 16), "n_scans": 60, "n_runs": 2, "compress": True},
    "fiac": {"shape": (64, 64, 30), "n_scans": 191, "n_runs": 2, "compress": True},
    "hcp": {"shape": (91, 109, 91), "n_scans": 1200, "n_runs": 2, "compress": False},
    "hcp8": {"shape": (91, 109, 91), "n_scans": 1200, "n_runs": 8, "compress": False,
             "tools": ("daskglm",), "memory_limit": "3GiB", "scaling": False,
             # 16 GB of inputs and 12 GB of stores do not stay in 24 GiB of page cache: warming is moot
             "cache": "asis"},
}
#: Subject-loop workloads (``--size subjects``): simulate_bids arguments, fMRIPrep-style 3 mm runs, .nii.gz.
SUBJECT_SETS: dict[str, dict[str, Any]] = {
    "subjects": {"n_subjects": 8, "n_runs": 2, "shape": (65, 77, 65), "n_scans": 240},
    "subjects-tiny": {"n_subjects": 3, "n_runs": 2, "shape": (40, 48, 32), "n_scans": 120},
}
#: The subject loop's two contrasts (on the simulated language task's conditions).
SUBJECT_CONTRASTS = {"sentence": "DStSSp + DStDSp - SStSSp - SStDSp", "speaker": "SStDSp + DStDSp - SStSSp - DStSSp"}
TOOLS = ("nilearn", "daskglm")
MiB = 2**20


# ----------------------------------------------------------------------------- measuring


def adopt_orphans() -> bool:
    """Make this process the Linux "child subreaper" of its descendants (``prctl``), or return False.

    A descendant whose parent exits before it, such as multiprocessing's
    forkserver (``daskglm bids`` forks its workers from one), is then
    re-parented here instead of to init, so that waiting for it adds its CPU
    time, and that of the workers it waited for, to ``RUSAGE_CHILDREN``.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except OSError:
        return False


def reap_adopted() -> None:
    """Wait for the children of this process that have exited (orphans adopted by :func:`adopt_orphans`)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def machine_cpu_times() -> list[int] | None:
    """The machine's CPU time counters in clock ticks (``/proc/stat``: user, nice, system,
    idle, iowait, irq, softirq, steal), or None off Linux."""
    try:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:9]]
    except OSError:
        return None


def machine_busy_s(before: list[int] | None, after: list[int] | None) -> float | None:
    """CPU-seconds the machine spent busy between two :func:`machine_cpu_times` readings:
    every process and the kernel's own threads (page-cache writeback among them), not idle,
    iowait or the time the hypervisor stole."""
    if before is None or after is None:
        return None
    delta = [b - a for a, b in zip(before, after)]
    return (delta[0] + delta[1] + delta[2] + delta[5] + delta[6]) / os.sysconf("SC_CLK_TCK")


class Measured:
    """Run a command; sample the RSS of its process tree; kill what it leaves behind."""

    def __init__(self, cmd: list[str], log: Path, env: dict | None = None,
                 interval: float = 0.05, timeout: float | None = None, grace: float = 3.0) -> None:
        self.cmd, self.log, self.env, self.interval, self.timeout = cmd, log, env, interval, timeout
        self.grace = grace
        self.seen: dict[int, Any] = {}  # pid -> psutil.Process, every process of the tree ever sampled
        self.peak = 0
        self.samples = 0

    def _sample(self, root: Any) -> None:
        import psutil

        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = [root]
        total = 0
        for proc in procs:
            known = self.seen.setdefault(proc.pid, proc)
            try:
                if known is not proc and not known.is_running():  # pid reused
                    self.seen[proc.pid] = known = proc
                total += known.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        self.samples += 1

    def run(self) -> dict:
        import psutil

        done = threading.Event()
        adopt_orphans()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine_before = machine_cpu_times()
        with open(self.log, "wb") as out:
            start = time.perf_counter()
            proc = psutil.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)

        def sampler() -> None:
            while not done.is_set():
                self._sample(proc)
                done.wait(self.interval)

        thread = threading.Thread(target=sampler, name="rss-sampler", daemon=True)
        thread.start()
        timed_out = False
        try:
            try:
                proc.wait(timeout=self.timeout)
            except psutil.TimeoutExpired:
                timed_out = True
            wall = time.perf_counter() - start
        finally:
            done.set()
            thread.join()
            leftovers = self._kill_leftovers(proc)
            reap_adopted()
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine_cpu = machine_busy_s(machine_before, machine_cpu_times())
        # CPU seconds of the child and every descendant waited for, by it or here (the cluster's
        # workers, orphans adopted): less sensitive than wall time to other users of a shared machine.
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        return {"wall_s": wall, "cpu_s": cpu, "machine_cpu_s": machine_cpu, "peak_rss_bytes": self.peak,
                "returncode": proc.returncode, "timed_out": timed_out, "samples": self.samples,
                "processes": len(self.seen), "leftovers_killed": leftovers}

    def _kill_leftovers(self, root: Any) -> list[str]:
        """Kill (by pid) every process of the sampled tree still alive; name them."""
        import psutil

        alive = []
        for proc in [*self.seen.values(), root]:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        # Grace: helpers such as multiprocessing's resource tracker exit on their own
        # a moment after their parent; kill only what is still there after it.
        _, alive = psutil.wait_procs(alive, timeout=self.grace)
        names = []
        for proc in alive:
            try:
                names.append(f"{proc.pid}:{' '.join(proc.cmdline())[:120]}")
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        try:
            root.wait(timeout=5)
        except psutil.Error:
            pass
        return names


# ----------------------------------------------------------------------------- parent


def _machine() -> dict:
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("daskglm", "nilearn", "dask", "distributed", "zarr", "numpy", "scipy", "nibabel"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "git": _git_state(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def _print_machine() -> dict:
    """:func:`_machine`, printed: the CPU, memory, load and the daskglm checkout a benchmark ran on."""
    machine = _machine()
    print(f"machine: {machine['cpu']}, {machine['logical_cpus']} CPUs, {machine['memory_gib']} GiB; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if machine["git"]:
        print(f"daskglm checkout: {machine['git']['commit'][:10]}"
              + (f" + local changes to {', '.join(machine['git']['modified'])}" if machine["git"]["modified"] else ""),
              flush=True)
    return machine


def _git_state() -> dict | None:
    """The daskglm checkout measured: commit and locally modified files."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "modified": [line[3:] for line in status if line[:2].strip()]}


def _data_root() -> Path:
    return Path(os.environ.get("DASKGLM_BENCH_DATA") or Path.home() / ".cache" / "daskglm" / "bench")


def _generate(size: str) -> dict:
    from daskglm.datasets.fiac import simulate_fiac

    params = {k: v for k, v in SIZES[size].items() if k not in ("tools", "memory_limit", "scaling", "cache")}
    start = time.perf_counter()
    data = simulate_fiac(data_dir=_data_root(), seed=0, **params)
    print(f"[{size}] data: {Path(data['func1']).parent} ({time.perf_counter() - start:.1f} s to generate or find)",
          flush=True)
    return data


def _roi_mask(data: dict, n_voxels: int = 4000) -> str:
    """A sphere of at least ``n_voxels`` brain-mask voxels at the mask's centre of mass, written next to the data."""
    import nibabel as nib
    import numpy as np

    out = Path(data["mask"]).with_name(f"roi_sphere_{n_voxels}.nii")
    if out.exists():
        return str(out)
    img = nib.load(data["mask"])
    brain = np.asarray(img.dataobj) > 0
    grid = np.indices(brain.shape, dtype=float)
    centre = np.array([g[brain].mean() for g in grid])
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    radius = np.sort(distance[brain])[n_voxels - 1]  # the n_voxels-th nearest brain voxel
    roi = brain & (distance <= radius)
    tmp = out.with_suffix(".tmp.nii")
    nib.save(nib.Nifti1Image(roi.astype(np.uint8), img.affine), tmp)
    tmp.replace(out)
    return str(out)


def _child_env() -> dict:
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)  # the daskglm side must start its own cluster
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run_child(kind: str, spec: dict, work: Path, label: str, timeout: float | None,
               script: Path | None = None, env: dict | None = None) -> dict:
    """Run ``script --_child KIND SPEC OUT`` (default: this script) as a measured child, with ``env`` added
    to its environment; its figures."""
    spec_path, out_path, log = (work / f"{label}.{ext}" for ext in ("spec.json", "out.json", "log"))
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(script or __file__).resolve()), "--_child", kind, str(spec_path), str(out_path)]
    load_before = os.getloadavg()[0]
    measured = Measured(cmd, log, env={**_child_env(), **(env or {})}, timeout=timeout).run()
    measured["loadavg_1min_before"] = load_before
    if measured["returncode"] != 0 or not out_path.exists():
        tail = log.read_text(errors="replace")[-4000:]
        why = "timed out" if measured["timed_out"] else f"exit code {measured['returncode']}"
        raise RuntimeError(f"{label} ({kind}) failed: {why}; log tail:\n{tail}")
    measured.update(json.loads(out_path.read_text()))
    if measured["leftovers_killed"]:
        print(f"  ! {label}: killed {len(measured['leftovers_killed'])} leftover process(es): "
              f"{measured['leftovers_killed']}", flush=True)
    return measured


def _zmap_difference(a: str, b: str, mask_path: str) -> dict:
    import nibabel as nib
    import numpy as np

    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    with np.load(a) as za, np.load(b) as zb:
        diffs = [np.abs(za[k][mask].astype(np.float64) - zb[k][mask]) for k in za.files]
    worst = max(float(d.max()) for d in diffs)
    over = sum(int((d > 1e-2).sum()) for d in diffs)
    return {"max_abs_dz": worst, "voxels_dz_over_0.01": over, "voxels_compared": int(sum(d.size for d in diffs))}


def _fmt_phases(phases: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + " s"


def _line(tool: str, size: str, rep: int, n: int, r: dict) -> str:
    extra = ""
    if "cluster" in r:
        extra = f", workers: {r['cluster']['n_workers']}"
    busy = "" if r.get("machine_cpu_s") is None else f" (machine busy {r['machine_cpu_s']:.1f} s)"
    return (f"{tool:8s} {size} {rep}/{n}: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s{busy}, "
            f"peak RSS (all processes) {r['peak_rss_bytes'] / MiB:.0f} MiB{extra} [{_fmt_phases(r['phases_s'])}]")


def _print_task_profile(result: dict) -> None:
    """A child's ``--profile`` figures, one line per phase: worker compute time by task prefix, CPU by process."""
    for phase, entry in result.get("task_profile", {}).items():
        cpu = entry.get("cpu_s", {})
        cpu_text = (f"; CPU: workers {sum(v for k, v in cpu.items() if k.startswith('worker')):.1f} s, "
                    f"client+scheduler {cpu.get('client+scheduler', 0.0):.1f} s" if cpu else "")
        print(f"    {phase:14s} wall {entry['wall_s']:7.2f} s, in tasks {entry['compute_s']:7.2f} s "
              f"({entry['tasks']} tasks, busy {entry['busy']:.0%}){cpu_text}; "
              + ", ".join(f"{k} {v:.1f}" for k, v in entry["by_prefix"].items()), flush=True)


def _set_cache(mode: str, paths: list[str]) -> None:
    """Put every tool's inputs in the same page-cache state before its child starts (not timed).

    ``warm``: read each input file once, and import both tools in a throwaway
    interpreter, so every run starts with its inputs and its libraries' files in
    memory (whatever an earlier run — nilearn's 13 GiB at hcp — or data
    generation evicted; without it the first daskglm child after nilearn's
    imported for 7 s instead of 4.5); ``cold``: write back and drop the page
    cache (root only), so every run reads from disk; ``asis``: leave it. In
    every mode, what was written before (hcp8's 16 GB of generated data, say) is
    first written back, so that no run pays the writeback of another's files.
    """
    start = time.perf_counter()
    os.sync()
    if mode == "warm":
        for path in paths:
            with open(path, "rb") as f:
                while f.read(16 * MiB):
                    pass
        warm = "import daskglm.models.first_level, daskglm.cli.main, distributed, nilearn.glm"
        subprocess.run([sys.executable, "-c", warm], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elif mode == "cold":
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    print(f"  page cache: {mode} ({time.perf_counter() - start:.1f} s, not timed)", flush=True)


def _spec(size: str, data: dict, contrasts: dict, args: argparse.Namespace, workers: int | None,
          memory_limit: str | None, store: Path, zmaps: Path) -> dict:
    from dask.system import CPU_COUNT
    from dask.utils import parse_bytes

    n_runs = SIZES[size]["n_runs"]
    per_worker = None
    if memory_limit:
        per_worker = parse_bytes(memory_limit) // (workers or max(1, CPU_COUNT))
    return {"runs": [data[f"func{r}"] for r in range(1, n_runs + 1)],
            "designs": [data[f"design_matrix{r}"] for r in range(1, n_runs + 1)],
            "mask": data["mask"], "smoothing_fwhm": args.smoothing_fwhm, "contrasts": contrasts,
            "workers": workers, "memory_limit_per_worker": per_worker, "store": str(store),
            "zmaps": str(zmaps), "profile": args.profile}


def _bench_size(size: str, args: argparse.Namespace, work: Path, contrasts: dict) -> dict:
    data = _generate(size)
    allowed = SIZES[size].get("tools", TOOLS)
    tools = [t for t in args.tools if t in allowed]
    if len(tools) < len(args.tools):
        print(f"[{size}] skipping {sorted(set(args.tools) - set(tools))}: not run at this size", flush=True)
    memory_limit = args.memory_limit or SIZES[size].get("memory_limit")
    # (tool, workers, tag): --scaling adds daskglm on 1 worker next to the usual runs
    configs: list[tuple[str, int | None, str]] = [(t, args.workers, t) for t in tools]
    if args.scaling and "daskglm" in tools and SIZES[size].get("scaling", True):
        configs.append(("daskglm", 1, "daskglm-w1"))
    if args.arma11 and "daskglm" in tools:  # the same fit with noise_model="arma11" (its cost against ar1's)
        configs.append(("daskglm", args.workers, "daskglm-arma11"))
    if args.roi and "daskglm" in tools:  # the same fit within a ~4,000-voxel sphere
        configs.append(("daskglm", args.workers, "daskglm-roi"))
        roi = _roi_mask(data)
    records: list[dict] = []
    for rep, repeat, rep_dir in _repeats(args, size, work):
        zmaps: dict[str, str] = {}
        for tool, workers, tag in _run_order(configs, rep):
            store = (_data_root() / f"stores-{size}" if args.keep_stores else rep_dir / f"stores-{tag}")
            spec = _spec(size, data, contrasts, args, workers, memory_limit, store, rep_dir / f"z-{tag}.npz")
            spec["noise_model"] = "arma11" if tag.endswith("arma11") else "ar1"
            if tag.endswith("roi"):
                spec["mask"] = roi
            _set_cache(args.cache or SIZES[size].get("cache", "warm"), [*spec["runs"], spec["mask"]])
            result = _run_child(tool, spec, rep_dir, tag, args.timeout)
            record = {"size": size, "tool": tool, "tag": tag, "repeat": rep, "workers_option": workers,
                      "memory_limit_total": memory_limit, "fresh_store": not args.keep_stores, **result}
            print(_line(tag, size, rep, repeat, result), flush=True)
            zmaps[tag] = spec["zmaps"]
            if tag == "daskglm" and args.roofline:
                post = _run_child("roofline", {**spec, "stores": result["stores"]}, rep_dir, f"{tag}-roofline",
                                  args.timeout)
                record["roofline_s"] = post["roofline_s"]
                record["fit_alone_s"] = post["fit_alone_s"]
                record["fit_alone_compute_s"] = post["fit_compute_s"]
                record["roofline_cpu_s"] = post["roofline_cpu_s"]
                record["fit_alone_cpu_s"] = post["fit_alone_cpu_s"]
                record["voxel_blocks"] = post["voxel_blocks"]
                print(f"{'roofline':8s} {size} {rep}/{repeat}: one pinv(X) @ Y pass over the stores "
                      f"{post['roofline_s']:.2f} s, CPU {post['roofline_cpu_s']:.1f} s ({post['voxel_blocks']} voxel "
                      f"columns); fit alone on ingested stores {post['fit_alone_s']:.2f} s, CPU "
                      f"{post['fit_alone_cpu_s']:.1f} s = {post['fit_alone_s'] / post['roofline_s']:.1f}x roofline "
                      f"(CPU {post['fit_alone_cpu_s'] / post['roofline_cpu_s']:.1f}x)", flush=True)
            _print_task_profile(result)
            records.append(record)
            if not args.keep_stores:
                shutil.rmtree(store, ignore_errors=True)
        if "nilearn" in zmaps and "daskglm" in zmaps:
            diff = _zmap_difference(zmaps["nilearn"], zmaps["daskglm"], data["mask"])
            for r in records[-len(configs):]:
                r["zmap_agreement"] = diff
            print(f"  z maps, nilearn vs daskglm (8 contrasts, in mask): max |dz| {diff['max_abs_dz']:.2e}, "
                  f"{diff['voxels_dz_over_0.01']} of {diff['voxels_compared']} voxel values differ by > 0.01",
                  flush=True)
        for path in zmaps.values():
            Path(path).unlink(missing_ok=True)
    from _compare_summary import (
        _summarise,  # benchmarks/ is sys.path[0] when this runs as a script
    )

    summary = _summarise(size, SIZES[size], records, args.workers)
    _print_arma11_cost(size, records)
    _print_roi_cost(size, records)
    summary["runs"] = records
    return summary


def _pairs(records: list[dict], base: str, other: str) -> list[tuple[dict, dict]]:
    """The records of tags ``base`` and ``other`` of each repeat, paired (ratios within one repeat)."""
    return [(a, b) for a in records if a["tag"] == base
            for b in records if b["tag"] == other and b["repeat"] == a["repeat"]]


def _print_arma11_cost(size: str, records: list[dict]) -> None:
    """With ``--arma11``: median wall and peak memory of ``noise_model="arma11"`` against ``"ar1"``."""
    def median(tag: str, key: str) -> float | None:
        values = sorted(r[key] for r in records if r["tag"] == tag and r.get(key) is not None)
        return values[len(values) // 2] if values else None

    walls = [median(tag, "wall_s") for tag in ("daskglm", "daskglm-arma11")]
    peaks = [median(tag, "peak_rss_bytes") for tag in ("daskglm", "daskglm-arma11")]
    if None not in walls:
        ratios = [b["wall_s"] / a["wall_s"] for a, b in _pairs(records, "daskglm", "daskglm-arma11")]
        print(f"[{size}] arma11 / ar1 (daskglm): wall {walls[1]:.1f} / {walls[0]:.1f} s = {walls[1] / walls[0]:.2f}x "
              f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)}); peak RSS "
              f"{peaks[1] / MiB:.0f} / {peaks[0] / MiB:.0f} MiB", flush=True)


def simulated_subjects(label: str, params: dict) -> Any:
    """``simulate_bids``' language-task dataset of ``params`` (``n_subjects``, ``n_runs``, ``shape``,
    ``n_scans``) in :func:`_data_root`, named by them and generated once; also used by scale.py."""
    from daskglm.datasets.bids_sim import simulate_bids

    start = time.perf_counter()
    root = _data_root() / ("bids_{n_subjects}x{n_runs}_{shape[0]}x{shape[1]}x{shape[2]}_{n_scans}".format(**params))
    bids = simulate_bids(root, task="language", seed=0, **params)
    print(f"[{label}] data: {root} ({time.perf_counter() - start:.1f} s to generate or find)", flush=True)
    return bids


def _bench_subjects(name: str, args: argparse.Namespace, work: Path) -> dict:
    """The subject loop: nilearn's and daskglm's imports in a nilearn user's script, and ``daskglm bids``."""
    import numpy as np

    params = SUBJECT_SETS[name]
    bids = simulated_subjects(name, params)
    # (tool, workers, tag) as _run_order orders them; the child's kind is "bids" or "loop"
    configs = [(tool, None, tag) for tool, tag in (("nilearn", "loop-nilearn"), ("daskglm", "loop-daskglm"),
                                                   ("daskglm", "bids")) if tool in args.tools]
    records: list[dict] = []
    for rep, repeat, rep_dir in _repeats(args, name, work):
        zmaps: dict[str, str] = {}
        for tool, _, tag in _run_order(configs, rep):
            spec = {"root": str(bids.root), "task": "language", "smoothing_fwhm": args.smoothing_fwhm,
                    "contrasts": SUBJECT_CONTRASTS, "lib": tool, "out": str(rep_dir / f"out-{tag}"),
                    "store": str(rep_dir / f"stores-{tag}"), "zmaps": str(rep_dir / f"z-{tag}.npz")}
            _set_cache(args.cache or "warm", [p for runs in bids.preproc_bold for p in runs])
            # the loop's stores (daskglm's default cache): fresh, in this repeat's folder
            result = _run_child("bids" if tag == "bids" else "loop", spec, rep_dir, tag, args.timeout,
                                env={"DASKGLM_CACHE": spec["store"]})
            records.append({"size": name, "tool": tool, "tag": tag, "repeat": rep, **result})
            zmaps[tag] = spec["zmaps"]
            print(f"{tag:12s} {name} {rep}/{repeat}: wall {result['wall_s']:.1f} s, peak RSS (all processes) "
                  f"{result['peak_rss_bytes'] / MiB:.0f} MiB, {result['subjects']} subjects", flush=True)
            shutil.rmtree(spec["store"], ignore_errors=True)
            shutil.rmtree(spec["out"], ignore_errors=True)
        if "loop-nilearn" in zmaps:
            with np.load(zmaps["loop-nilearn"]) as theirs:
                for tag in [t for t in zmaps if t != "loop-nilearn"]:
                    with np.load(zmaps[tag]) as ours:
                        assert sorted(ours.files) == sorted(theirs.files), (tag, ours.files, theirs.files)
                        worst = max(float(np.max(np.abs(ours[k].astype(np.float64) - theirs[k]))) for k in ours.files)
                    print(f"  z maps, nilearn's loop vs {tag} ({len(theirs.files)} maps): max |dz| {worst:.2e}",
                          flush=True)
    from _compare_summary import _summarise  # benchmarks/ is sys.path[0] when this runs as a script

    summary = _summarise(name, params, records, None)
    summary["n_subjects"] = params["n_subjects"]
    tools = summary["tools"]
    for tag in [t for t in tools if t != "loop-nilearn" and "loop-nilearn" in tools]:
        base = tools["loop-nilearn"]
        ratio = base["wall_s_median"] / tools[tag]["wall_s_median"]
        tools[tag]["nilearn_loop_over_this"] = round(ratio, 2)
        ratios = [a["wall_s"] / b["wall_s"] for a, b in _pairs(records, "loop-nilearn", tag)]
        print(f"  nilearn's loop / {tag}: wall {ratio:.2f}x (per repeat: {', '.join(f'{r:.2f}' for r in ratios)}), "
              f"peak memory {base['peak_rss_mib_median']:.0f} vs {tools[tag]['peak_rss_mib_median']:.0f} MiB")
    summary["runs"] = records
    return summary


def _print_roi_cost(size: str, records: list[dict]) -> None:
    """With ``--roi``: wall and peak memory of the ~4,000-voxel mask against the whole-brain mask's."""
    pairs = _pairs(records, "daskglm", "daskglm-roi")
    if not pairs:
        return
    ratios = [b["wall_s"] / a["wall_s"] for a, b in pairs]
    ratio = statistics.median(ratios)
    print(f"[{size}] ROI / whole brain (daskglm): wall {statistics.median(b['wall_s'] for _, b in pairs):.1f} / "
          f"{statistics.median(a['wall_s'] for a, _ in pairs):.1f} s, ratio {ratio:.3f} = 1/{1 / ratio:.1f} "
          f"(per repeat: {', '.join(f'{r:.3f}' for r in ratios)}); peak RSS "
          f"{statistics.median(b['peak_rss_bytes'] for _, b in pairs) / MiB:.0f} MiB", flush=True)


def _repeats(args: argparse.Namespace, size: str, work: Path) -> Iterator[tuple[int, int, Path]]:
    """The repeats ``--repeat`` asks of ``size``: ``(repeat, number of repeats, its folder)``, the folder created."""
    repeat = args.repeats.get(size, args.repeats.get("*", 1))
    for rep in range(1, repeat + 1):
        rep_dir = work / f"{size}-rep{rep}"
        rep_dir.mkdir(parents=True, exist_ok=True)
        yield rep, repeat, rep_dir


def _run_order(configs: list[tuple[str, int | None, str]], rep: int) -> list[tuple[str, int | None, str]]:
    """The order of one repeat's runs: nilearn first, the daskglm runs reversed at every other repeat.

    A run right after nilearn's (13 GiB freed at ``hcp``) pays more for its first touches of
    memory on a guest that hands freed pages back to its host (see BENCHMARKS.md); alternating
    which daskglm configuration comes next keeps that cost out of the 2-vs-1-worker ratio.
    """
    others = [c for c in configs if c[0] != "daskglm"]
    ours = [c for c in configs if c[0] == "daskglm"]
    return others + (ours if rep % 2 else ours[::-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:  # inside a measured child: benchmarks/ is sys.path[0], this script's folder
        from _compare_children import _child_main

        return _child_main(*argv[1:4])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--size", default="fiac",
                        help=f"one or more of {', '.join([*SIZES, *SUBJECT_SETS])}, comma-separated "
                             "(default: %(default)s)")
    parser.add_argument("--tools", default="nilearn,daskglm", help="comma-separated subset of nilearn,daskglm")
    parser.add_argument("--repeat", default="1",
                        help="repeats per tool (median reported): N for every size, or per size, "
                             "e.g. fiac=3,hcp=1 (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="daskglm: worker processes of the LocalCluster (default: daskglm's default, one per core)")
    parser.add_argument("--memory-limit", default=None,
                        help="daskglm: TOTAL worker memory limit, split evenly across the workers, e.g. 3GiB "
                             "(default: none, i.e. daskglm's default; hcp8: 3GiB)")
    parser.add_argument("--scaling", action="store_true",
                        help="also run daskglm on 1 worker (not at hcp8), for the 1-vs-2-workers ratio")
    parser.add_argument("--keep-stores", action="store_true",
                        help="daskglm: keep and reuse stores in $DASKGLM_BENCH_DATA/stores-SIZE (default: a fresh "
                             "store folder per repeat, deleted afterwards, so ingestion is measured)")
    parser.add_argument("--no-roofline", dest="roofline", action="store_false",
                        help="skip the roofline pass and the fit-alone measurement")
    parser.add_argument("--profile", action="store_true",
                        help="daskglm: record the task stream; print worker compute time per phase")
    parser.add_argument("--arma11", action="store_true",
                        help="also run daskglm with noise_model='arma11' and print its cost against ar1's")
    parser.add_argument("--roi", action="store_true",
                        help="also run daskglm with a ~4,000-voxel spherical mask and print its cost against the "
                             "whole-brain mask's")
    parser.add_argument("--smoothing-fwhm", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per child process")
    parser.add_argument("--cache", choices=("warm", "cold", "asis"), default=None,
                        help="page-cache state of the inputs before each tool's run: warm (read them "
                             "first), cold (drop the page cache; root), asis (default: warm; hcp8: asis)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write all results as JSON to OUT")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.size.split(",") if s.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [s for s in sizes if s not in SIZES and s not in SUBJECT_SETS] + [t for t in args.tools if t not in TOOLS]
    try:  # "3" for every size, or "fiac=3,hcp=1" (sizes not named: 1)
        args.repeats = ({"*": int(args.repeat)} if "=" not in args.repeat else
                        {k.strip(): int(v) for k, v in (item.split("=") for item in args.repeat.split(","))})
    except ValueError:
        args.repeats = {}
    if (bad or not sizes or not args.tools or not args.repeats or min(args.repeats.values()) < 1
            or (args.workers is not None and args.workers < 1)):
        parser.error(f"invalid --size/--tools/--repeat/--workers: {bad or (sizes, args.tools, args.repeat)}")

    from daskglm.cli.main import WALKTHROUGH_CONTRASTS

    machine = _print_machine()
    work = Path(tempfile.mkdtemp(prefix="daskglm-compare-"))
    summaries: dict[str, dict] = {}
    records: dict[str, Any] = {}
    try:
        for size in sizes:
            summaries[size] = (_bench_subjects(size, args, work) if size in SUBJECT_SETS
                               else _bench_size(size, args, work, WALKTHROUGH_CONTRASTS))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from _compare_summary import _targets

    targets = _targets(summaries)
    if targets:
        print("\ntargets:")
        for t in targets:
            print(f"  [{'met' if t['met'] else 'NOT met'}] {t['target']}: {t['value']}")
    if args.json:
        records = {"command": " ".join(["python", "benchmarks/compare.py", *argv]), "machine": machine,
                   "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_end": os.getloadavg(),
                   "options": {k: v for k, v in vars(args).items()}, "sizes": summaries, "targets": targets}
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
