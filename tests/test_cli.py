"""The command line, run as a user runs it (a subprocess, an embedded LocalCluster)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from daskglm.cli import build_parser
from daskglm.store import open_run


def test_demo_runs_end_to_end_on_an_embedded_cluster(tmp_path):
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": ""}
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "daskglm", "demo", "--output", str(out), "--shape", "16x18x10",
         "--n-scans", "40", "--workers", "2"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LocalCluster" in proc.stdout
    maps = sorted(p.name for p in (out / "maps").glob("*_z_map.nii.gz"))
    assert len(maps) == 8 and "Effects_of_interest_z_map.nii.gz" in maps
    assert (out / "maps" / "fixed_DSt_minus_SSt_z_score.nii.gz").exists()
    stores = sorted((out / "stores").glob("*.zarr"))
    assert len(stores) == 2
    for store in stores:
        assert open_run(store)["bold"].shape[0] == 40
    import nibabel as nib

    z = nib.load(out / "maps" / "DSt_minus_SSt_z_map.nii.gz")
    assert z.shape == (16, 18, 10) and np.isfinite(z.get_fdata()).all()


def test_missing_required_argument_is_named(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["ingest", "run.nii.gz"])
    assert exc.value.code == 2
    assert "store" in capsys.readouterr().err


def test_bad_shape_is_named(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--shape", "64x64"])
    assert "64x64" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "ingest"])
def test_cluster_options(command):
    positional = ["run.nii", "store.zarr"] if command == "ingest" else []
    args = build_parser().parse_args([command, *positional, "--scheduler", "tcp://127.0.0.1:8786",
                                      "--workers", "3", "--memory-limit", "2GiB"])
    assert (args.scheduler, args.workers, args.memory_limit) == ("tcp://127.0.0.1:8786", 3, "2GiB")
    defaults = build_parser().parse_args([command, *positional])
    assert (defaults.scheduler, defaults.workers, defaults.memory_limit) == (None, None, None)


def test_bad_worker_count_is_named(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "run.nii", "store.zarr", "--workers", "0"])
    assert "'0'" in capsys.readouterr().err


def test_ingest_on_a_named_local_scheduler(small_run, tmp_path, capsys):
    """``--scheduler sync``: no cluster at all, the rows nilearn's masker gives (see test_store)."""
    from daskglm.cli import main

    store = tmp_path / "run.zarr"
    assert main(["ingest", str(small_run["nii"]), str(store), "--mask", str(small_run["mask_path"]),
                 "--scheduler", "sync"]) == 0
    assert "bold" in capsys.readouterr().out
    bold = open_run(store)["bold"]
    expected = small_run["data"][small_run["mask"]].T.astype(np.float32)
    np.testing.assert_array_equal(bold.values, expected)
