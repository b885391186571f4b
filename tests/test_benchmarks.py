"""The benchmark scripts run at CI size so they cannot rot (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_benchmark_runs_small(tmp_path):
    env = {**os.environ, "DASKGLM_BENCH_DATA": str(tmp_path / "data"), "DASK_SCHEDULER_ADDRESS": ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--size", "small", "--json"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["size"] == "small" and record["n_scans"] == 60
    # The measurement saw the process tree (interpreter + cluster): tens of MiB at least.
    assert record["peak_rss_mib"] > 50 and record["wall_s"] > 0
