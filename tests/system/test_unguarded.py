"""Scripts written as nilearn's examples are, with no ``if __name__ == "__main__":`` guard,
run on the embedded cluster's worker processes: the workers never import the script.

Each script runs in a fresh interpreter (``sys.executable``) with
``DASK_DASKGLM__THREADS_BELOW=0``, so that even this small run gets worker
processes, and with a worker preload file (``distributed.worker.preload``)
that records, in every worker process as it starts, its pid and whether the
script was imported into it (``__mp_main__``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: The analysis, at the top level of the script (nilearn-style).
ANALYSIS = '''
import os
import sys
import time

import numpy as np
import pandas as pd

import daskglm

out = sys.argv[1]
with open(os.path.join(out, "ran.txt"), "a") as log:  # once per execution of this code
    log.write(f"{os.getpid()}\\n")

data = daskglm.simulate_fiac(data_dir=sys.argv[2], shape=(16, 18, 10), n_scans=40, n_runs=1)
design = pd.DataFrame(np.load(data["design_matrix1"])["X"])
model = daskglm.FirstLevelModel(mask_img=data["mask"], smoothing_fwhm=4.0, verbose=0,
                                store=os.path.join(out, "stores"))
model.fit(data["func1"], design_matrices=design)
model.compute_contrast(np.eye(13)[0] - np.eye(13)[1]).to_filename(os.path.join(out, "z.nii.gz"))


async def crash():  # defined here, in the script: shipped to the worker by value
    os._exit(1)


# The embedded cluster this data gets: its workers, and one crashed and restarted by its nanny.
with daskglm.get_client(work_bytes=os.path.getsize(data["func1"])) as client:
    before = client.run(os.getpid)
    client.run(crash, workers=[sorted(before)[0]], wait=False)
    for _ in range(600):
        try:
            after = client.run(os.getpid)
        except Exception:
            after = {}
        if len(after) == len(before) and set(after.values()) != set(before.values()):
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("the crashed worker was not restarted")
    with open(os.path.join(out, "workers.txt"), "w") as fh:
        fh.write(f"{len(before)} {len(after)} {len(set(before.values()) - set(after.values()))}\\n")
'''

GUARDED = "\ndef main():\n" + textwrap.indent(ANALYSIS, "    ") + '\n\nif __name__ == "__main__":\n    main()\n'

#: Runs in each worker process as it starts (possibly more than once): its pid, and 1 if its
#: ``__main__`` is the script (``__mp_main__`` is no evidence: multiprocessing always aliases it).
PRELOAD = '''
import os
import sys

main = sys.modules["__main__"]
seen = f"{getattr(main, '__file__', None)} {getattr(getattr(main, '__spec__', None), 'name', None)}"
with open(os.environ["DASKGLM_TEST_WORKERS_LOG"], "a") as log:
    log.write(f"{os.getpid()} {int('nilearn_style' in seen)}\\n")
'''

#: Seconds a script may take (about 10 when it works).
TIMEOUT = 180

VARIANTS = {"unguarded": "script", "guarded": "script", "unguarded-module": "module"}


def _run(variant: str, root: Path, data_dir: Path) -> dict:
    out = root / variant
    out.mkdir()
    source = GUARDED if variant == "guarded" else ANALYSIS
    name = f"nilearn_style_{variant.replace('-', '_')}"
    (out / f"{name}.py").write_text(source)
    preload = root / "record_worker.py"
    preload.write_text(PRELOAD)
    env = {**os.environ, "DASK_DASKGLM__THREADS_BELOW": "0",
           "DASK_DISTRIBUTED__WORKER__PRELOAD": repr([str(preload)]),
           "DASKGLM_TEST_WORKERS_LOG": str(out / "worker_starts.txt")}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    how = [f"{name}.py"] if VARIANTS[variant] == "script" else ["-m", name]
    # Its own session: a script that hangs (as an unguarded one did, its nannies failing) is
    # killed with its worker processes.
    proc = subprocess.Popen([sys.executable, *how, str(out), str(data_dir)], cwd=out, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{variant} did not finish in {TIMEOUT} s:\n{stdout}\n{stderr[-5000:]}")
    assert proc.returncode == 0, f"{variant} failed:\n{stdout}\n{stderr[-5000:]}"
    ran = (out / "ran.txt").read_text().split()
    starts = dict(line.split() for line in (out / "worker_starts.txt").read_text().splitlines())
    counts = [int(n) for n in (out / "workers.txt").read_text().split()]
    return {"ran": ran, "starts": starts, "counts": counts,
            "z": np.asarray(nib.load(out / "z.nii.gz").dataobj)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("unguarded")
    data_dir = root / "data"
    done: dict[str, dict] = {}

    def get(variant: str) -> dict:
        if variant not in done:
            done[variant] = _run(variant, root, data_dir)
        return done[variant]

    return get


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_script_runs_once_on_worker_processes(runs, variant):
    """Top-level code ran once; the fit's and the second cluster's workers (two each, plus the
    one restarted after a crash) were processes other than the script's, none importing it."""
    result = runs(variant)
    assert len(result["ran"]) == 1, result["ran"]
    (script_pid,) = result["ran"]
    assert len(result["starts"]) == 2 + 2 + 1, result["starts"]
    assert script_pid not in result["starts"]
    assert set(result["starts"].values()) == {"0"}, result["starts"]
    assert result["counts"] == [2, 2, 1]
    assert np.isfinite(result["z"]).any()


def test_unguarded_and_guarded_give_identical_maps(runs):
    z = runs("unguarded")["z"]
    np.testing.assert_array_equal(z, runs("guarded")["z"])
    np.testing.assert_array_equal(z, runs("unguarded-module")["z"])
