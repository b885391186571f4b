"""deploy/: every YAML parses, manifests run the image the Dockerfile builds, the
dask-jobqueue configuration builds a Slurm job script, the sbatch command line parses."""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daskglm.cli.main import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
JOBQUEUE_YAML = DEPLOY / "slurm" / "jobqueue.yaml"
SBATCH = DEPLOY / "slurm" / "run_daskglm.sbatch"
DOCKERFILE = DEPLOY / "kubernetes" / "Dockerfile"


def load_yaml_documents(path: Path) -> list:
    with open(path) as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def jobqueue_slurm_config(path: Path = JOBQUEUE_YAML) -> dict:
    """dask-jobqueue's default ``jobqueue.slurm`` section updated with the file's (as dask merges them)."""
    import dask
    import dask_jobqueue  # noqa: F401  (registers dask-jobqueue's defaults in dask.config)

    (loaded,) = load_yaml_documents(path)
    section = copy.deepcopy(dask.config.get("jobqueue.slurm"))
    return dask.config.update(section, loaded["jobqueue"]["slurm"])


def test_there_are_deploy_files():
    assert JOBQUEUE_YAML in YAML_FILES
    assert (DEPLOY / "kubernetes" / "daskcluster.yaml") in YAML_FILES
    assert SBATCH.is_file() and DOCKERFILE.is_file()
    assert "None yet" not in (DEPLOY / "README.md").read_text()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path):
    docs = load_yaml_documents(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs)


# --------------------------------------------------------------------------- Kubernetes


def dockerfile_image() -> str:
    """The image tag the Dockerfile declares: its io.daskglm.image LABEL, which the
    documented ``docker build ... -t TAG`` command must repeat."""
    text = DOCKERFILE.read_text()
    labels = re.findall(r'io\.daskglm\.image="([^"]+)"', text)
    assert len(labels) == 1, f"expected one io.daskglm.image LABEL in {DOCKERFILE}; found {labels}"
    built = re.findall(r"docker build .*-t (\S+)", text)
    assert built and set(built) == set(labels), f"docker build tags {built} vs LABEL {labels}"
    return labels[0]


def manifest_images() -> list[tuple[str, str]]:
    """(where, image) of every container of every Kubernetes manifest under deploy/kubernetes."""
    found = []
    for path in sorted((DEPLOY / "kubernetes").rglob("*.y*ml")):
        for doc in load_yaml_documents(path):
            spec = doc.get("spec", {})
            for role in ("scheduler", "worker"):
                for container in spec.get(role, {}).get("spec", {}).get("containers", []):
                    found.append((f"{path.name}:{role}/{container.get('name')}", container.get("image")))
    return found


def test_dockerfile_builds_a_python_slim_image_with_daskglm():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.MULTILINE)
    assert re.search(r"pip install /src\b", text)
    assert "COPY daskglm /src/daskglm" in text and "COPY pyproject.toml" in text


def test_manifests_run_the_image_the_dockerfile_builds():
    image = dockerfile_image()
    assert image == "daskglm-worker:0.1.0"
    images = manifest_images()
    roles = {where.split(":")[1].split("/")[0] for where, _ in images}
    assert roles == {"scheduler", "worker"}, images
    for where, name in images:
        assert name == image, f"{where} runs {name!r}, the Dockerfile builds {image!r}"


def test_daskcluster_manifest_shape():
    (doc,) = load_yaml_documents(DEPLOY / "kubernetes" / "daskcluster.yaml")
    assert doc["apiVersion"] == "kubernetes.dask.org/v1" and doc["kind"] == "DaskCluster"
    name = doc["metadata"]["name"]
    worker = doc["spec"]["worker"]
    assert worker["replicas"] >= 1
    (container,) = worker["spec"]["containers"]
    assert container["args"][:2] == ["dask", "worker"]
    assert "$(DASK_WORKER_NAME)" in container["args"]
    scheduler = doc["spec"]["scheduler"]
    (sched,) = scheduler["spec"]["containers"]
    assert sched["args"][:2] == ["dask", "scheduler"]
    port_names = {p["name"] for p in sched["ports"]}
    assert {"tcp-comm", "http-dashboard"} <= port_names
    service = scheduler["service"]
    assert service["selector"]["dask.org/cluster-name"] == name
    assert {str(p["targetPort"]) for p in service["ports"]} <= port_names


# --------------------------------------------------------------------------- Slurm


def test_jobqueue_config_has_the_keys_dask_jobqueue_expects():
    import dask_jobqueue

    defaults = yaml.safe_load((Path(dask_jobqueue.__file__).parent / "jobqueue.yaml").read_text())
    known = set(defaults["jobqueue"]["slurm"])
    (loaded,) = load_yaml_documents(JOBQUEUE_YAML)
    ours = loaded["jobqueue"]["slurm"]
    assert set(ours) <= known, f"keys dask-jobqueue does not know: {sorted(set(ours) - known)}"
    for key in ("cores", "processes", "memory", "walltime", "job-script-prologue",
                "local-directory", "worker-extra-args"):
        assert ours.get(key) is not None, key


def test_slurm_cluster_job_script_from_the_config(tmp_path):
    """SLURMCluster built from jobqueue.yaml (no job submitted): its script has the
    prologue, the memory, the walltime and the worker options."""
    import dask
    from dask_jobqueue import SLURMCluster

    config = jobqueue_slurm_config()
    with dask.config.set({"jobqueue.slurm": config}):
        # Only where the scheduler listens differs from the file (no port 8787 in tests).
        with SLURMCluster(scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}) as cluster:
            script = cluster.job_script()
            assert len(cluster.workers) == 0  # nothing submitted
    for line in config["job-script-prologue"]:
        assert line in script
    assert "#SBATCH --mem=16G" in script
    assert "#SBATCH -t 02:00:00" in script
    assert "#SBATCH --cpus-per-task=4" in script
    assert "#SBATCH -J daskglm-worker" in script
    assert "--nworkers 4" in script and "--nthreads 1" in script
    assert "--memory-limit 4.00GiB" in script
    assert "--local-directory ${TMPDIR:-/tmp}" in script
    assert "--lifetime 110m --lifetime-stagger 5m" in script
    assert script.index("activate") < script.index("distributed.cli.dask_worker")


def test_dask_config_env_var_loads_the_file(tmp_path):
    """As users do it: DASK_CONFIG=deploy/slurm, then SLURMCluster() with no argument."""
    code = (
        "import dask, dask_jobqueue\n"
        "print(dask.config.get('jobqueue.slurm.memory'), dask.config.get('jobqueue.slurm.cores'),"
        " dask.config.get('jobqueue.slurm.name'))\n"
    )
    env = {**os.environ, "DASK_CONFIG": str(JOBQUEUE_YAML.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["16GiB", "4", "daskglm-worker"]


def sbatch_daskglm_command(text: str, env: dict[str, str], args: list[str]) -> list[str]:
    """The ``daskglm`` command line of the sbatch script, with its variables expanded."""
    lines = [line.strip() for line in text.splitlines() if re.match(r"\s*daskglm\s", line)]
    assert len(lines) == 1, f"expected one daskglm command line in {SBATCH.name}; found {lines}"
    words = []
    for word in shlex.split(lines[0]):
        if word == "$@":
            words.extend(args)
            continue
        words.append(re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], word))
    return words


def test_sbatch_runs_a_daskglm_command_the_cli_accepts():
    text = SBATCH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert re.search(r"^#SBATCH --time=", text, re.MULTILINE)
    assert "SLURMCluster()" in text  # the workers come from jobqueue.yaml
    assert 'DASK_CONFIG="${DASK_CONFIG:-$PWD/deploy/slurm}"' in text
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)  # shell syntax
    env = {"OUTPUT": "/scratch/me/out", "SCHEDULER_ADDRESS": "tcp://10.0.0.1:8786"}
    argv = sbatch_daskglm_command(text, env, ["--shape", "16x16x10", "--n-scans", "40"])
    assert argv[0] == "daskglm"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "demo"
    assert args.scheduler == "tcp://10.0.0.1:8786"
    assert args.output == "/scratch/me/out"
    assert args.shape == (16, 16, 10) and args.n_scans == 40
    # Without extra arguments too.
    assert build_parser().parse_args(sbatch_daskglm_command(text, env, [])[1:]).shape == (64, 64, 30)
