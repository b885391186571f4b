"""A real Slurm: a one-node cluster (munged, slurmctld, slurmd) brought up on this
machine, Dask workers launched by dask-jobqueue from deploy/slurm/jobqueue.yaml,
and the deploy/slurm sbatch example run end to end.

Everything is private to the test: its own munge key and socket, a slurm.conf
in a temporary folder (``SLURM_CONF``), free ports, state and logs in the
temporary folder; the daemons and every job are stopped by PID at teardown and
the test checks that no process is left. Needs root and Debian's ``slurm-wlm``
and ``munge`` (``.ci/apt-packages``); skipped only when they are not installed
or the test is not root.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

DEPLOY_SLURM = Path(__file__).resolve().parents[2] / "deploy" / "slurm"
PARTITION = "daskglm"
MARKER = "DASKGLM_SLURM_TEST"  # in the environment of every process the test starts
DAEMONS = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "slurmstepd", "sbatch", "squeue",
           "scancel", "sinfo", "scontrol")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _binary(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return f"--- {path.name}:\n{path.read_text(errors='replace')[-n:]}"
    except OSError:
        return f"--- {path.name}: (none)"


def _marked_processes(marker: str) -> list:
    """Processes (other than this one) whose environment carries ``MARKER=marker``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class SlurmNode:
    """A one-node Slurm cluster of this machine, private to one test module."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.env = env
        self.conf = root / "etc" / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = root / "log"
        # munged refuses a socket whose folder path is not executable by all:
        # pytest's temporary folders are 0700, so the socket gets its own folder.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="daskglm-munge-", dir="/tmp"))
        self.munge_dir.chmod(0o755)
        self.socket = self.munge_dir / "munge.socket"

    # ------------------------------------------------------------------ commands

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        out = subprocess.run([_binary(args[0]) or args[0], *args[1:]], env=self.env, capture_output=True,
                             text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited with {out.returncode}: {out.stderr.strip()}\n"
                               + self.diagnostics())
        return out.stdout

    def diagnostics(self) -> str:
        return "\n".join(_tail(p) for p in sorted(self.logs.glob("*")))

    def _start(self, name: str, args: list[str]) -> None:
        with open(self.logs / f"{name}.out", "wb") as log:  # the daemon keeps its own descriptor
            self.procs[name] = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}\n"
                                       + self.diagnostics())
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}\n" + self.diagnostics())
            time.sleep(0.5)

    # ------------------------------------------------------------------ life cycle

    def write_config(self) -> None:
        import psutil

        for sub in ("etc", "state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        memory_mib = int(psutil.virtual_memory().total // 2**20) - 1024
        r = self.root
        self.conf.write_text(f"""\
ClusterName=daskglmtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
CommunicationParameters=NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/state/slurmctld.pid
SlurmdPidFile={r}/spool/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
InactiveLimit=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mib} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        # Slurm 22.05's slurmd loads cgroup.conf even with proctrack/linuxproc.
        (self.conf.parent / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")

    def start(self) -> None:
        self.write_config()
        m = self.root / "munge"
        self._start("munged", [_binary("munged"), "--foreground", f"--socket={self.socket}",
                               f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                               f"--seed-file={m / 'munged.seed'}", f"--log-file={self.logs / 'munged.log'}"])
        self._wait("the munge socket", self._munge_works, timeout=30)
        self._start("slurmctld", [_binary("slurmctld"), "-D"])
        self._wait("slurmctld", lambda: self.run("sinfo", "-h", check=False, timeout=10) != "", timeout=60)
        self._start("slurmd", [_binary("slurmd"), "-D"])
        self._wait(f"node {self.node} idle", self._node_idle, timeout=90)

    def _munge_works(self) -> bool:
        if not self.socket.exists():
            return False
        cred = subprocess.run([_binary("munge"), "-n", "-S", str(self.socket)], capture_output=True,
                              timeout=10, check=False)
        if cred.returncode != 0:
            return False
        check = subprocess.run([_binary("unmunge"), "-S", str(self.socket)], input=cred.stdout,
                               capture_output=True, timeout=10, check=False)
        return check.returncode == 0

    def _node_idle(self) -> bool:
        return self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%t", check=False, timeout=10).strip() == "idle"

    def jobs(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i %T %j", check=False, timeout=20).split("\n")[:-1]

    def wait_no_jobs(self, timeout: float = 60) -> list[str]:
        """Wait until the queue is empty; return the jobs still there at the timeout."""
        deadline = time.monotonic() + timeout
        while (jobs := self.jobs()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return jobs

    def cancel_all(self, timeout: float = 60) -> None:
        ids = [line.split()[0] for line in self.jobs()]
        if ids:
            self.run("scancel", *ids, check=False)
        self.wait_no_jobs(timeout)

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            if name in self.procs:
                _stop(self.procs[name])
        shutil.rmtree(self.munge_dir, ignore_errors=True)


def _venv_for_jobs(root: Path) -> Path:
    """A folder with ``bin/activate`` putting this Python first on PATH, for the
    prologue of deploy/slurm/jobqueue.yaml (``source $DASKGLM_VENV/bin/activate``)."""
    prefix = Path(sys.prefix)
    if (prefix / "bin" / "activate").is_file() and Path(sys.executable).parent == prefix / "bin":
        return prefix
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    return venv


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [name for name in DAEMONS if _binary(name) is None]
    if missing:
        pytest.skip(f"Slurm/munge not installed (missing {', '.join(missing)}): "
                    "apt-get install slurm-wlm munge (.ci/apt-packages lists them)")
    if os.geteuid() != 0:
        pytest.skip(f"a private Slurm needs root (slurmd launches jobs), running as uid {os.geteuid()}")
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (the test extra has it)")
    root = tmp_path_factory.mktemp("slurm")
    marker = str(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MARKER, marker)
        mp.setenv("SLURM_CONF", str(root / "etc" / "slurm.conf"))
        mp.setenv("DASKGLM_VENV", str(_venv_for_jobs(root)))
        for name in [n for n in os.environ if n.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))]:
            if name != "SLURM_CONF":
                mp.delenv(name)
        node = SlurmNode(root, dict(os.environ))
        try:
            try:
                node.start()
            except RuntimeError as exc:
                pytest.fail(f"Slurm is installed but did not start: {exc}")
            yield node
        finally:
            node.cancel_all()
            node.stop()
            # No process of ours may survive: daemons, job steps, Dask workers.
            deadline = time.monotonic() + 30
            while (left := _marked_processes(marker)) and time.monotonic() < deadline:
                time.sleep(0.5)
            for proc in left:
                proc.kill()
            assert not left, f"processes left after teardown: {[p.info['cmdline'] for p in left]}"


def jobqueue_config(overrides: dict) -> dict:
    """dask-jobqueue's ``jobqueue.slurm`` defaults, updated with deploy/slurm/jobqueue.yaml, then ``overrides``."""
    import dask
    import dask_jobqueue  # noqa: F401  (registers its defaults)

    loaded = yaml.safe_load((DEPLOY_SLURM / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    section = dask.config.update(copy.deepcopy(dask.config.get("jobqueue.slurm")), loaded)
    return dask.config.update(section, overrides)


def overrides_for_this_machine(tmp_path: Path) -> dict:
    """What must differ from deploy/slurm/jobqueue.yaml on this machine, nothing else."""
    loaded = yaml.safe_load((DEPLOY_SLURM / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    return {
        "cores": 1, "processes": 1, "memory": "2GiB",  # two jobs on a 2-core machine
        "walltime": "00:15:00",
        "queue": PARTITION,
        "python": sys.executable,
        "local-directory": str(tmp_path / "worker-space"),
        "log-directory": str(tmp_path / "worker-logs"),
        "death-timeout": 60,
        # Only the loopback interface in tests.
        "scheduler-options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        "worker-extra-args": [*loaded["worker-extra-args"], "--host", "127.0.0.1", "--no-dashboard"],
    }


@pytest.fixture(scope="module")
def fiac(fiac_data):
    data = fiac_data(shape=(14, 16, 8), n_scans=50)
    designs = [pd.DataFrame(np.load(data[f"design_matrix{r}"])["X"]) for r in (1, 2)]
    return {"data": data, "designs": designs, "runs": [data["func1"], data["func2"]]}


def test_two_run_fit_on_slurm_launched_workers(slurm, fiac, tmp_path):
    import dask
    from dask_jobqueue import SLURMCluster
    from distributed import Client, get_task_stream

    from daskglm.models.first_level import FirstLevelModel

    config = jobqueue_config(overrides_for_this_machine(tmp_path))
    contrasts = {"DSt_minus_SSt": np.array([[-1, -1, 1, 1]]), "Effects_of_interest": np.eye(13)[:5]}
    common = dict(mask_img=fiac["data"]["mask"], smoothing_fwhm=5.0, noise_model="ar1", v_chunk=300)
    # The configuration is read when jobs are made, not only when the cluster is:
    # it stays set for the life of the cluster (as DASK_CONFIG does for users).
    with dask.config.set({"jobqueue.slurm": config}), SLURMCluster() as cluster:
        script = cluster.job_script()
        assert "source \"${DASKGLM_VENV:-$HOME/daskglm-venv}/bin/activate\"" in script
        assert f"#SBATCH -p {PARTITION}" in script and "#SBATCH --mem=2G" in script
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=180)
            jobs = slurm.jobs()
            assert len(jobs) == 2 and all("RUNNING daskglm-worker" in line for line in jobs), jobs
            job_ids = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
            assert sorted(job_ids.values()) == sorted(line.split()[0] for line in jobs)
            model = FirstLevelModel(store=tmp_path / "slurm-stores", client=client, **common)
            with warnings.catch_warnings(), get_task_stream(client) as stream:
                warnings.simplefilter("ignore")
                model.fit(fiac["runs"], design_matrices=fiac["designs"])
                on_slurm = {name: model.compute_contrast(con, output_type="all")
                            for name, con in contrasts.items()}
            used = {task["worker"] for task in stream.data}
            assert used and used <= set(job_ids), (used, job_ids)
    assert slurm.wait_no_jobs(timeout=60) == []  # cluster.close() cancelled the worker jobs

    local = FirstLevelModel(store=tmp_path / "local-stores", client="threads", **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local.fit(fiac["runs"], design_matrices=fiac["designs"])
        for name, con in contrasts.items():
            expected = local.compute_contrast(con, output_type="all")
            for key, img in expected.items():
                np.testing.assert_array_equal(on_slurm[name][key].get_fdata(), img.get_fdata(),
                                              err_msg=f"{name} {key}")


def test_sbatch_example_runs_daskglm_demo(slurm, tmp_path):
    """deploy/slurm/run_daskglm.sbatch as a user submits it: a driver job with a
    SLURMCluster from jobqueue.yaml (DASK_CONFIG), running `daskglm demo` on a
    Slurm-launched worker job, which it cancels when done."""
    if _binary("daskglm") is None and not (Path(sys.executable).parent / "daskglm").exists():
        pytest.fail("the daskglm console script is not installed next to this Python")
    config_dir = tmp_path / "dask-config"
    config_dir.mkdir()
    overrides = overrides_for_this_machine(tmp_path)
    loaded = yaml.safe_load((DEPLOY_SLURM / "jobqueue.yaml").read_text())
    loaded["jobqueue"]["slurm"].update(overrides)
    (config_dir / "jobqueue.yaml").write_text(yaml.safe_dump(loaded))
    output = tmp_path / "demo"
    env = {**slurm.env, "DASK_CONFIG": str(config_dir), "N_JOBS": "1", "OUTPUT": str(output)}
    submitted = subprocess.run(
        [_binary("sbatch"), "--parsable", f"--output={tmp_path / 'driver-%j.out'}",
         str(DEPLOY_SLURM / "run_daskglm.sbatch"), "--shape", "12x14x8", "--n-scans", "40"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    log = tmp_path / f"driver-{job_id}.out"
    deadline = time.monotonic() + 600
    state = ""
    while time.monotonic() < deadline:
        info = slurm.run("scontrol", "-o", "show", "job", job_id, check=False)
        state = next((w.split("=", 1)[1] for w in info.split() if w.startswith("JobState=")), "")
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            break
        time.sleep(1)
    else:
        slurm.cancel_all()
        pytest.fail(f"the driver job {job_id} did not finish in time\n{_tail(log)}\n{slurm.diagnostics()}")
    assert state == "COMPLETED", f"driver job {job_id}: {state}\n{_tail(log)}\n{slurm.diagnostics()}"
    text = log.read_text()
    assert "Dask scheduler at tcp://127.0.0.1:" in text
    assert "done in" in text, text[-3000:]
    z_maps = sorted(p.name for p in (output / "maps").glob("*_z_map.nii.gz"))
    assert len(z_maps) == 8, z_maps
    # The worker job was launched by the driver's SLURMCluster and cancelled by it.
    assert list((tmp_path / "worker-logs").glob("daskglm-worker-*.err"))
    assert slurm.wait_no_jobs(timeout=60) == []
