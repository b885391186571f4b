"""Benchmark: ingest one simulated run and report wall time and peak memory.

Peak memory is the largest sum of resident set sizes over the whole process
tree (this driver's child, the embedded LocalCluster's scheduler/nanny/worker
processes), sampled every 50 ms.

    python benchmarks/ingest.py --size hcp          # 91x109x91x1200 int16 .nii
    python benchmarks/ingest.py --size hcp --gz     # the same, .nii.gz
    python benchmarks/ingest.py --size small        # CI-sized

Data are generated once into $DASKGLM_BENCH_DATA (default ~/.cache/daskglm/bench),
outside git.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SIZES = {
    "small": {"shape": (32, 36, 24), "n_scans": 60},
    "fiac": {"shape": (64, 64, 30), "n_scans": 191},
    "hcp": {"shape": (91, 109, 91), "n_scans": 1200},
}


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str], interval: float = 0.05) -> dict:
    """Run a command; return its wall time, peak tree RSS and output."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(interval)
    out = proc.stdout.read() if proc.stdout else ""
    return {"wall_s": time.perf_counter() - start, "peak_rss_bytes": peak,
            "returncode": proc.returncode, "output": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--gz", action="store_true", help="ingest a .nii.gz run (default .nii)")
    parser.add_argument("--smoothing-fwhm", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line per repeat")
    args = parser.parse_args(argv)

    from daskglm.datasets.fiac import simulate_fiac

    data_root = Path(os.environ.get("DASKGLM_BENCH_DATA", Path.home() / ".cache" / "daskglm" / "bench"))
    size = SIZES[args.size]
    data = simulate_fiac(data_dir=data_root, n_runs=1, compress=args.gz, **size)
    run = data["func1"]
    work = Path(tempfile.mkdtemp(prefix="daskglm-bench-"))
    try:
        for rep in range(args.repeat):
            store = work / f"run-{rep}.zarr"
            cmd = [sys.executable, "-m", "daskglm", "ingest", run, str(store),
                   "--mask", data["mask"], "--smoothing-fwhm", str(args.smoothing_fwhm)]
            result = run_measured(cmd)
            if result["returncode"] != 0:
                print(result["output"], file=sys.stderr)
                return result["returncode"]
            record = {
                "size": args.size, "shape": list(size["shape"]), "n_scans": size["n_scans"],
                "input": Path(run).name, "input_bytes": os.path.getsize(run),
                "wall_s": round(result["wall_s"], 2),
                "peak_rss_mib": round(result["peak_rss_bytes"] / 2**20, 1),
                "cpus": os.cpu_count(),
            }
            print(json.dumps(record) if args.json else
                  f"ingest {args.size} {record['input']} ({record['input_bytes'] / 2**20:.0f} MiB): "
                  f"wall {record['wall_s']:.1f} s, peak RSS (all processes) {record['peak_rss_mib']:.0f} MiB")
            shutil.rmtree(store, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
