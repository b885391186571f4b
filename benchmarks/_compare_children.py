"""The child side of ``benchmarks/compare.py``: what runs inside each measured child process.

``compare.py`` starts ``python compare.py --_child KIND SPEC OUT`` (``KIND`` one
of :data:`WORKERS`), which hands over to :func:`_child_main` here: it reads the
JSON spec the parent wrote (runs, designs, mask, contrasts, cluster options),
runs that tool's workload and writes its own figures (phases, cluster, task
profile) as JSON to ``OUT``; wall time and memory of the process tree are
measured by the parent.

- ``nilearn``: nilearn's ``FirstLevelModel`` fitted on all runs, the z maps of
  the contrasts;
- ``daskglm``: the same with daskglm on its embedded cluster (ingestion and fit
  timed apart, optionally the task stream and the CPU time of each process);
- ``roofline``: on the stores a ``daskglm`` child left, one ``pinv(X) @ Y``
  pass over the data, then the fit alone on the already-ingested stores;
- ``loop``: a nilearn user's subject loop over a BIDS dataset, with nilearn's or
  daskglm's imports; ``bids``: ``daskglm bids`` on the same dataset.

Only the standard library is imported at module level: each workload imports
its tool itself, so that its import time is measured.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _contrast(value: Any, n_columns: int) -> Any:
    import numpy as np

    return np.eye(n_columns)[:5] if value == "eye5" else np.array(value)


def _designs(spec: dict) -> list:
    import numpy as np
    import pandas as pd

    return [pd.DataFrame(np.load(path)["X"]) for path in spec["designs"]]


def _save_zmaps(path: str, zmaps: dict) -> None:
    import numpy as np

    np.savez(path, **zmaps)


def _worker_nilearn(spec: dict) -> dict:
    t = {"start": time.perf_counter()}
    import numpy as np
    from nilearn.glm.first_level import FirstLevelModel

    t["imported"] = time.perf_counter()
    designs = _designs(spec)
    model = FirstLevelModel(mask_img=spec["mask"], smoothing_fwhm=spec["smoothing_fwhm"],
                            minimize_memory=True, n_jobs=1)
    model.fit(spec["runs"], design_matrices=designs)
    t["fitted"] = time.perf_counter()
    zmaps = {}
    for name, value in spec["contrasts"].items():
        z = model.compute_contrast(_contrast(value, designs[0].shape[1]), output_type="z_score")
        zmaps[name] = np.asarray(z.get_fdata(), dtype=np.float32)
    t["contrasts"] = time.perf_counter()
    _save_zmaps(spec["zmaps"], zmaps)
    return {"phases_s": {"import": t["imported"] - t["start"], "fit": t["fitted"] - t["imported"],
                         "contrasts": t["contrasts"] - t["fitted"]}}


class _Timeline:
    """Named wall-clock intervals (time.time(), comparable with the workers' task stream).

    With a ``probe`` (a callable returning CPU seconds by process), each interval
    also records the CPU time each process spent in it: unlike wall time, that
    is not inflated by other users of a shared machine.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []
        self.cpu: dict[str, dict[str, float]] = {}
        self.probe: Any = None

    def wrap(self, label: str, func: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            before = self.probe() if self.probe else None
            start = time.time()
            try:
                return func(*args, **kwargs)
            finally:
                self.spans.append((label, start, time.time()))
                if before is not None:
                    after = self.probe()
                    spent = self.cpu.setdefault(label, {})
                    for who, value in after.items():
                        spent[who] = spent.get(who, 0.0) + value - before.get(who, value)
        return timed

    def total(self, label: str) -> float:
        return sum(b - a for name, a, b in self.spans if name == label)


def _process_cpu() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def _cpu_probe(client: Any) -> Any:
    """CPU seconds of this process (client and, for a LocalCluster, scheduler) and of each worker."""
    def probe() -> dict[str, float]:
        workers = client.run(_process_cpu)
        return {"client+scheduler": _process_cpu(),
                **{f"worker{i}": workers[w] for i, w in enumerate(sorted(workers))}}
    return probe


def _cluster_info(client: Any) -> dict:
    workers = client.scheduler_info(n_workers=-1)["workers"] if client is not None else {}
    return {"n_workers": len(workers),
            "threads": sum(w.get("nthreads", 0) for w in workers.values()),
            "memory_limit_per_worker": sorted({w.get("memory_limit") for w in workers.values()})}


def _task_profile(tasks: list[dict], spans: list[tuple[str, float, float]], n_workers: int) -> dict:
    """Worker compute seconds per phase and per task prefix; busy = compute / (wall * workers)."""
    from dask.utils import key_split

    phases: dict[str, dict] = {}
    for name, a, b in spans:
        entry = phases.setdefault(name, {"wall_s": 0.0, "compute_s": 0.0, "transfer_s": 0.0,
                                         "tasks": 0, "by_prefix": {}})
        entry["wall_s"] += b - a
        for task in tasks:
            for ss in task.get("startstops", ()):
                if not a <= ss["start"] < b:
                    continue
                dt = ss["stop"] - ss["start"]
                if ss["action"] == "compute":
                    entry["compute_s"] += dt
                    entry["tasks"] += 1
                    prefix = key_split(task["key"])
                    entry["by_prefix"][prefix] = entry["by_prefix"].get(prefix, 0.0) + dt
                else:
                    entry["transfer_s"] += dt
    for entry in phases.values():
        entry["busy"] = entry["compute_s"] / max(entry["wall_s"] * max(n_workers, 1), 1e-9)
        entry["by_prefix"] = dict(sorted(entry["by_prefix"].items(), key=lambda kv: -kv[1])[:6])
    return phases


def _work_bytes(spec: dict) -> int:
    """The data size ``FirstLevelModel.fit`` gives its embedded cluster: the bytes its ingestion reads."""
    from daskglm.io.nifti import inspect_run
    from daskglm.store.ingest import read_bytes

    return read_bytes([inspect_run(run) for run in spec["runs"]], spec["mask"], spec["smoothing_fwhm"])


def _worker_daskglm(spec: dict) -> dict:
    t0 = time.time()
    import contextlib

    import numpy as np

    import daskglm.models.first_level as model_module
    from daskglm.runtime.cluster import get_client

    timeline = _Timeline()
    timeline.spans.append(("import", t0, time.time()))
    model_module.ingest_runs = timeline.wrap("ingest", model_module.ingest_runs)
    model_module.save_fits = timeline.wrap("fit_compute", model_module.save_fits)
    designs = _designs(spec)
    stream = None
    start = time.time()
    manager = get_client(None, n_workers=spec["workers"], memory_limit=spec["memory_limit_per_worker"],
                         work_bytes=_work_bytes(spec))
    client = manager.__enter__()
    try:
        timeline.spans.append(("cluster_start", start, time.time()))
        info = _cluster_info(client)
        with contextlib.ExitStack() as stack:
            if spec["profile"]:
                from distributed import get_task_stream

                stream = stack.enter_context(get_task_stream(client))
                timeline.probe = _cpu_probe(client)
            model = model_module.FirstLevelModel(
                mask_img=spec["mask"], smoothing_fwhm=spec["smoothing_fwhm"], minimize_memory=True,
                store=spec["store"], client=client, noise_model=spec.get("noise_model", "ar1"))
            timeline.wrap("fit", model.fit)(spec["runs"], design_matrices=designs)
            zmaps = {}
            for name, value in spec["contrasts"].items():
                z = timeline.wrap("contrasts", model.compute_contrast)(
                    _contrast(value, designs[0].shape[1]), output_type="z_score")
                zmaps[name] = np.asarray(z.get_fdata(), dtype=np.float32)
    finally:
        closing = time.time()
        manager.__exit__(None, None, None)
        timeline.spans.append(("cluster_close", closing, time.time()))
    _save_zmaps(spec["zmaps"], zmaps)
    fit = timeline.total("fit")
    phases = {name: timeline.total(name) for name in
              ("import", "cluster_start", "ingest", "fit_compute", "contrasts", "cluster_close")}
    phases["fit_other"] = fit - phases["ingest"] - phases["fit_compute"]
    out = {"phases_s": phases, "cluster": info,
           "stores": [str(result.attrs["store"]) for result in model.results_]}
    if stream is not None:
        spans = [s for s in timeline.spans if s[0] not in ("fit", "import")]
        out["task_profile"] = _task_profile(stream.data, spans, info["n_workers"])
        for phase, spent in timeline.cpu.items():
            if phase in out["task_profile"]:
                out["task_profile"][phase]["cpu_s"] = {k: round(v, 2) for k, v in spent.items()}
    return out


def _pinv_block(Y: Any, P: Any = None) -> Any:
    """One pinv(X) @ Y on a voxel column; returns a (1, v) reduction so nothing big travels."""
    return (P @ Y).sum(axis=0, keepdims=True)


def _warm_up() -> None:
    """Import on a worker what the first task of the fit would import."""
    from importlib import import_module

    for name in ("daskglm.kernels.regression", "daskglm.glm.contrasts", "daskglm.glm.fit", "daskglm.store.ingest"):
        import_module(name)


def _worker_roofline(spec: dict) -> dict:
    """Roofline pass, then the fit alone, on the stores of a finished daskglm run.

    Wall and CPU seconds (all processes of the cluster) of each: on a shared
    machine the CPU ratio is the steadier of the two.
    """
    import numpy as np

    import daskglm.models.first_level as model_module
    from daskglm.runtime.cluster import compute, get_client
    from daskglm.store.zarrio import open_run

    timeline = _Timeline()
    model_module.save_fits = timeline.wrap("fit_compute", model_module.save_fits)
    designs = _designs(spec)
    with get_client(None, n_workers=spec["workers"], memory_limit=spec["memory_limit_per_worker"],
                    work_bytes=_work_bytes(spec)) as client:
        info = _cluster_info(client)
        client.run(_warm_up)  # worker-side imports: not part of either figure
        probe = _cpu_probe(client)

        def cpu_since(before: dict) -> float:
            after = probe()
            return sum(after[k] - before.get(k, after[k]) for k in after)

        rooflines, roofline_cpu = [], []
        for _ in range(2):  # the better of two passes: a floor
            before, start = probe(), time.perf_counter()
            passes = []
            for store, design in zip(spec["stores"], designs):
                Y = open_run(store, columns=True)["bold"].data
                P = np.linalg.pinv(design.to_numpy(np.float64))
                passes.append(Y.map_blocks(_pinv_block, P=P, chunks=((1,), Y.chunks[1]), dtype=np.float64).sum())
            compute(*passes, client=client)
            rooflines.append(time.perf_counter() - start)
            roofline_cpu.append(cpu_since(before))
        n_blocks = sum(len(open_run(s, columns=True)["bold"].data.chunks[1]) for s in spec["stores"])
        model = model_module.FirstLevelModel(
            mask_img=spec["mask"], smoothing_fwhm=spec["smoothing_fwhm"], minimize_memory=True,
            store=spec["store"], client=client)
        before, start = probe(), time.perf_counter()
        model.fit(spec["runs"], design_matrices=designs)
        fit_alone = time.perf_counter() - start
        fit_alone_cpu = cpu_since(before)
    best = int(np.argmin(rooflines))
    return {"roofline_s": rooflines[best], "roofline_cpu_s": roofline_cpu[best], "roofline_passes_s": rooflines,
            "fit_alone_s": fit_alone, "fit_alone_cpu_s": fit_alone_cpu, "fit_compute_s": timeline.total("fit_compute"),
            "voxel_blocks": n_blocks, "cluster": info}


#: The 6 motion parameters of fMRIPrep's confounds, as a nilearn user's loop selects them.
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


def _worker_loop(spec: dict) -> dict:
    """A nilearn user's subject loop (``first_level_from_bids``, ``fit``, ``compute_contrast``, z maps
    saved), with nilearn's imports or daskglm's (``spec["lib"]``); the script is the same otherwise."""
    t0 = time.time()
    if spec["lib"] == "nilearn":
        from nilearn.glm.first_level import first_level_from_bids
    else:
        from daskglm import first_level_from_bids
    import warnings

    import numpy as np

    warnings.simplefilter("ignore")  # nilearn's StartTime and contrast warnings, every subject
    imported = time.time()
    models, imgs, events, confounds = first_level_from_bids(
        spec["root"], spec["task"], space_label="MNI152NLin2009cAsym", derivatives_folder="derivatives/fmriprep",
        smoothing_fwhm=spec["smoothing_fwhm"], noise_model="ar1", minimize_memory=True)
    zmaps = {}
    for model, img, ev, conf in zip(models, imgs, events, confounds):
        model.fit(img, events=ev, confounds=[c[MOTION] for c in conf])
        for name, expression in spec["contrasts"].items():
            z = model.compute_contrast(expression, output_type="z_score")
            path = Path(spec["out"]) / f"sub-{model.subject_label}_contrast-{name}_stat-z_statmap.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            z.to_filename(path)
            zmaps[f"{model.subject_label}-{name}"] = np.asarray(z.get_fdata())  # float64: nilearn's agreement
    _save_zmaps(spec["zmaps"], zmaps)
    return {"phases_s": {"import": imported - t0, "subjects": time.time() - imported}, "subjects": len(models)}


def _worker_bids(spec: dict) -> dict:
    """``daskglm bids`` on the same dataset and contrasts, with its default outputs, as the command
    runs it (its worker processes forked from a server that imports their modules while it plans)."""
    t0 = time.time()
    from daskglm.__main__ import main

    argv = ["bids", spec["root"], "--task", spec["task"], "--out", spec["out"], "--derivatives-folder",
            "derivatives/fmriprep", "--smoothing-fwhm", str(spec["smoothing_fwhm"]), "--confounds-strategy",
            "motion", "--confounds-motion", "basic", "--store", spec["store"], "--verbose", "0"]
    for name, expression in spec["contrasts"].items():
        argv += ["--contrast", f"{name}={expression}"]
    imported = time.time()
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"daskglm bids exited {code}")
    import nibabel as nib
    import numpy as np

    zmaps = {}
    for path in sorted(Path(spec["out"]).glob("sub-*/*_stat-z_statmap.nii.gz")):
        label = path.name.split("_")[0][4:]
        name = path.name.split("contrast-")[1].split("_")[0]
        zmaps[f"{label}-{name}"] = np.asarray(nib.load(path).get_fdata())
    _save_zmaps(spec["zmaps"], zmaps)
    return {"phases_s": {"import": imported - t0, "subjects": time.time() - imported}, "subjects": len(zmaps) // 2}


WORKERS = {"nilearn": _worker_nilearn, "daskglm": _worker_daskglm, "roofline": _worker_roofline,
           "loop": _worker_loop, "bids": _worker_bids}


def _child_main(kind: str, spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = WORKERS[kind](spec)
    Path(out_path).write_text(json.dumps(result))
    return 0
