"""The benchmark scripts run at CI size so they cannot rot (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ingest_benchmark_runs_small(tmp_path):
    env = {**os.environ, "DASKGLM_BENCH_DATA": str(tmp_path / "data"), "DASK_SCHEDULER_ADDRESS": ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--size", "small", "--json"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["size"] == "small" and record["n_scans"] == 60
    # The measurement saw the process tree (interpreter + cluster): tens of MiB at least.
    assert record["peak_rss_mib"] > 50 and record["wall_s"] > 0


def _load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"daskglm_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_benchmark_runs_tiny(tmp_path):
    """nilearn and daskglm side by side at CI size: both lines printed, valid JSON, no timing asserted."""
    env = {**os.environ, "DASKGLM_BENCH_DATA": str(tmp_path / "data"), "DASK_SCHEDULER_ADDRESS": ""}
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--size", "tiny", "--repeat", "1",
         "--json", str(out), "--timeout", "600"],
        capture_output=True, text=True, timeout=1200, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    for tool in ("nilearn", "daskglm", "roofline"):
        assert any(line.startswith(f"{tool} ") and "tiny 1/1" in line for line in lines), proc.stdout
    assert any("nilearn/daskglm" in line for line in lines), proc.stdout

    result = json.loads(out.read_text())
    size = result["sizes"]["tiny"]
    assert (size["shape"], size["n_scans"], size["n_runs"]) == ([32, 32, 16], 60, 2)
    assert {run["tool"] for run in size["runs"]} == {"nilearn", "daskglm"}
    for run in size["runs"]:
        assert run["returncode"] == 0 and run["wall_s"] > 0
        # The whole process tree was sampled: an interpreter with numpy and nilearn at least.
        assert run["peak_rss_bytes"] > 50 * 2**20
        assert all(value >= 0 for value in run["phases_s"].values())
    daskglm = next(run for run in size["runs"] if run["tool"] == "daskglm")
    assert daskglm["cluster"]["n_workers"] >= 1 and len(daskglm["stores"]) == 2
    assert daskglm["roofline_s"] > 0 and daskglm["fit_alone_s"] > 0
    # Same data, same model: the z maps agree (nilearn 0.14 is the oracle).
    assert daskglm["zmap_agreement"]["max_abs_dz"] < 1e-3
    assert size["ratios"]["wall_nilearn_over_daskglm"] > 0 and size["ratios"]["peak_nilearn_over_daskglm"] > 0
    for entry in size["tools"].values():
        assert entry["wall_s_median"] > 0 and entry["peak_rss_mib_median"] > 0
    # Fresh stores per repeat, removed afterwards; the temporary work folder is gone.
    assert not any(Path(store).exists() for store in daskglm["stores"])


def test_ceiling_benchmark_runs_tiny(tmp_path):
    """The no-dask scaling ceiling at CI size: one process, then two at once, for the four kinds."""
    env = {**os.environ, "DASKGLM_BENCH_DATA": str(tmp_path / "data")}
    out = tmp_path / "ceiling.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ceiling.py"), "--size", "tiny", "--blocks", "1",
         "--columns", "2", "--write-mib", "4", "--memory-mib", "8", "--repeat", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["size"] == "tiny" and set(result["kinds"]) == {"ingest", "fit", "write", "memory"}
    for kind in result["kinds"].values():
        per_unit = kind["per_unit"]
        assert per_unit["alone_ms"] > 0 and len(per_unit["two_at_once_ms"]) == 1
        assert len(per_unit["two_at_once_ms"][0]) == 2 and kind["speedup"] > 0
        steal = kind["steal_share"]["alone"] + kind["steal_share"]["two_at_once"]  # from /proc/stat
        assert len(steal) == 2 and all(share is None or 0 <= share <= 1 for share in steal)
    assert "volume" in result["kinds"]["ingest"]["unit"]
    # the parts of a volume's ingestion are timed by name, and add up to its wall time
    parts = result["kinds"]["ingest"]["parts"]
    assert set(parts) == {"read", "smooth_mask", "write_rest"}
    assert all(part["alone_ms"] > 0 for part in parts.values())
    assert sum(part["alone_ms"] for part in parts.values()) == pytest.approx(
        result["kinds"]["ingest"]["per_unit"]["alone_ms"], rel=0.02, abs=0.05)
    assert set(result["kinds"]["write"]["parts"]) == {"new_file", "cached_pages", "chunk_files", "zarr_rows"}
    memory = result["kinds"]["memory"]
    assert memory["unit"] == "MiB touched" and set(memory["parts"]) == {"after_rest", "just_freed"}
    assert all(part["alone_ms"] > 0 for part in memory["parts"].values())


def test_ceiling_rejects_unknown_kind():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ceiling.py"), "--kind", "ingest,bogus"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "bogus" in proc.stderr


def test_measured_kills_leftover_processes(tmp_path):
    """A grandchild that outlives its parent is found in the sampled tree and killed."""
    compare = _load_benchmark("compare")
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(0.5)\n"  # long enough to be sampled, then exit without waiting for it
    )
    measured = compare.Measured([sys.executable, "-c", script], tmp_path / "log", grace=0.5).run()
    assert measured["returncode"] == 0 and measured["peak_rss_bytes"] > 0
    pid = int(pid_file.read_text())
    assert any(entry.startswith(f"{pid}:") for entry in measured["leftovers_killed"])
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_kernel_benchmark_runs_and_checks_its_pairs():
    """benchmarks/kernels.py: each fast kernel timed against the one it replaces, results compared."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--repeat", "1"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same labels" in proc.stdout and "moments" in proc.stdout
    assert "bit-identical" in proc.stdout or "numba is not installed" in proc.stdout


def test_compare_alternates_the_daskglm_runs_after_nilearn():
    """Each daskglm configuration follows nilearn's run at every other repeat (nilearn stays first)."""
    compare = _load_benchmark("compare")
    configs = [("nilearn", None, "nilearn"), ("daskglm", None, "daskglm"), ("daskglm", 1, "daskglm-w1")]
    tags = [[c[2] for c in compare._run_order(configs, rep)] for rep in (1, 2, 3)]
    assert tags == [["nilearn", "daskglm", "daskglm-w1"], ["nilearn", "daskglm-w1", "daskglm"],
                    ["nilearn", "daskglm", "daskglm-w1"]]
    assert [c[2] for c in compare._run_order(configs[1:2], 2)] == ["daskglm"]


def test_measured_counts_the_machines_busy_cpu(tmp_path):
    """``machine_cpu_s`` (from ``/proc/stat``) holds at least the child's own CPU time."""
    compare = _load_benchmark("compare")
    spin = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end:\n    pass\n"
    measured = compare.Measured([sys.executable, "-c", spin], tmp_path / "log").run()
    assert measured["returncode"] == 0 and measured["cpu_s"] >= 1.0
    if measured["machine_cpu_s"] is None:  # no /proc/stat: not Linux
        assert not Path("/proc/stat").exists()
        return
    assert measured["machine_cpu_s"] >= measured["cpu_s"] - 0.05  # clock ticks of 10 ms


def test_speedup_bound_is_cores_times_wall_over_busy_cpu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("daskglm_bench_summary",
                                                  ROOT / "benchmarks" / "_compare_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    # 30 s of wall in which the machine was busy 40 CPU-seconds: 2 cores give at best 60 / 40
    assert summary._speedup_bound({"wall_s_median": 30.0, "machine_cpu_s_median": 40.0}, 2) == 1.5
    assert summary._speedup_bound({"wall_s_median": 30.0, "machine_cpu_s_median": None}, 2) is None


def test_cifti_benchmark_runs_tiny(tmp_path):
    """benchmarks/cifti.py at CI size: by hand (nibabel + nilearn's run_glm) and daskglm on the same
    dense time series, valid JSON, the z maps agree; no timing asserted."""
    env = {**os.environ, "DASKGLM_BENCH_DATA": str(tmp_path / "data"), "DASK_SCHEDULER_ADDRESS": ""}
    out = tmp_path / "cifti.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cifti.py"), "--size", "tiny", "--repeat", "1",
         "--byhand-jobs", "1", "--cache", "asis", "--json", str(out), "--timeout", "300"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    for tag in ("byhand-j1", "daskglm "):
        assert any(line.startswith(tag) and "tiny 1/1" in line for line in proc.stdout.splitlines()), proc.stdout
    result = json.loads(out.read_text())
    size = result["size"]
    assert size["n_grayordinates"] == 19158 and size["n_scans"] == 60 and size["n_runs"] == 2
    assert {run["tag"] for run in size["runs"]} == {"byhand-j1", "daskglm"}
    for run in size["runs"]:
        assert run["returncode"] == 0 and run["wall_s"] > 0 and run["peak_rss_bytes"] > 50 * 2**20
    byhand = next(run for run in size["runs"] if run["tag"] == "byhand-j1")
    agreement = byhand["zmap_agreement"]  # same matrix, same model: nilearn 0.14 is the oracle
    assert agreement["values_compared"] == 8 * 19158 and agreement["max_abs_dz"] < 1e-3
    assert agreement["min_correlation"] > 0.9999
    assert size["best_byhand"] == "byhand-j1" and size["ratios"]["wall_best_byhand_over_daskglm"] > 0
    assert result["targets"] == []  # the targets are for the hcp size only
    assert not any(Path(store).exists() for run in size["runs"] for store in run.get("stores", []))


def test_cifti_benchmark_rotates_its_configurations_and_refuses_bad_options():
    import importlib.util

    sys.path.insert(0, str(ROOT / "benchmarks"))  # cifti.py imports compare.py as a sibling
    try:
        spec = importlib.util.spec_from_file_location("daskglm_bench_cifti", ROOT / "benchmarks" / "cifti.py")
        cifti = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cifti)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    configs = [("byhand", 1, "byhand-j1"), ("byhand", 2, "byhand-j2"), ("daskglm", None, "daskglm")]
    firsts = [cifti._run_order(configs, rep)[0][2] for rep in (1, 2, 3, 4)]
    assert firsts == ["byhand-j1", "byhand-j2", "daskglm", "byhand-j1"]
    assert cifti.build_parser().parse_args(["--byhand-jobs", "1,-1"]).byhand_jobs == [1, -1]
    for bad in (["--byhand-jobs", "0"], ["--size", "huge"]):
        with pytest.raises(SystemExit):
            cifti.build_parser().parse_args(bad)
    with pytest.raises(SystemExit):
        cifti.main(["--tools", "byhand,spm"])


def test_scale_benchmark_runs_tiny(tmp_path):
    """benchmarks/scale.py on 3 subjects and 2 workers: the batch ran on the real processes, every figure
    was measured, and the projection was printed (no timing asserted)."""
    env = {**os.environ, "DASKGLM_BENCH_DATA": str(tmp_path / "data"), "DASK_SCHEDULER_ADDRESS": ""}
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--subjects", "3", "--workers", "2", "--threads",
         "1", "--shape", "8x8x8", "--scans", "40", "--no-figures", "--burst", "100", "--work-dir", str(tmp_path),
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    record = json.loads(out.read_text())["records"][0]
    assert (record["subjects"], record["done"], record["failed"]) == (3, 3, 0)
    assert 0 < record["planning_s"] < record["wall_s"] and record["first_subject_arrival_s"] > 0
    # the scheduler saw one task per subject and one warm-up per worker, then the burst's no-op tasks
    assert {prefix: t["tasks"] for prefix, t in record["scheduler_tasks"].items()} == {
        "daskglm-bids-sub": 3, "daskglm-bids-warm-up": 2}
    assert record["burst"]["counted"] == 100 and record["burst"]["tasks_per_s"] > 0
    assert record["local_tasks"] and all(t["tasks"] > 0 for t in record["local_tasks"].values())
    # the three processes' memory: client (this interpreter), scheduler, workers; and the scheduler's pauses
    assert record["client_rss_mib"]["peak"] > 50 and record["scheduler_rss_mib"]["peak"] > 50
    assert record["workers_rss_peak_mib"] > 100 and record["scheduler_max_pause_s"] >= 0
    assert record["planning_parts_s"]["first_level_from_bids"]["calls"] == 1  # one group of 3 subjects
    assert "| 10 × 32 |" in proc.stdout and "| 100 × 32 |" in proc.stdout and "first bottleneck" in proc.stdout
    assert not list(tmp_path.glob("daskglm-scale-*"))  # its outputs and stores removed


def test_scale_projection_by_hand():
    """scale.project: 1,000 subjects of 30 s and 4 GB each, on 10 and 100 nodes of 32 cores."""
    scale = _load_benchmark("scale")
    common = {"n_subjects": 1000, "cores_per_node": 32, "subject_wall_s": 30.0, "bytes_per_subject": 4e9,
              "fs_bytes_per_s": 20e9, "node_bytes_per_s": 1e9, "scheduler_s_per_task": 1e-3,
              "tasks_per_subject": 1.0, "planning_s": 50.0}
    ten = scale.project(nodes=10, **common)
    # 320 cores: ceil(1000 / 320) = 4 waves of 30 s; 10 links of 1 GB/s < 20 GB/s: 4e12 B / 1e10 B/s
    assert (ten.slots, ten.compute_s, ten.storage_s) == (320, 120.0, 400.0)
    assert ten.scheduler_s == pytest.approx(1.0) and ten.wall_s == pytest.approx(450.0)
    assert ten.bottleneck == "storage bandwidth" and ten.storage_gbs_needed == pytest.approx(4e12 / 120 / 1e9)
    hundred = scale.project(nodes=100, **common)
    # 3,200 cores for 1,000 one-task subjects: one wave, cores idle; the file system's 20 GB/s binds
    assert (hundred.compute_s, hundred.storage_s, hundred.wall_s) == (30.0, 200.0, 250.0)
    assert hundred.bottleneck == "storage bandwidth"
    fast = scale.project(nodes=100, **{**common, "fs_bytes_per_s": 1e15, "node_bytes_per_s": 1e15})
    assert fast.bottleneck == "client planning" and fast.wall_s == pytest.approx(80.0)
    idle = scale.project(nodes=100, **{**common, "fs_bytes_per_s": 1e15, "node_bytes_per_s": 1e15,
                                       "planning_s": 0.0})
    assert idle.bottleneck == "tasks" and idle.wall_s == pytest.approx(30.0)
    assert scale.hcp_bytes_per_subject() == 2 * 91 * 109 * 91 * 1200 * 2
    with pytest.raises(ValueError, match="positive"):
        scale.project(nodes=0, **common)
