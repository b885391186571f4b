"""Benchmark: an HCP-sized CIFTI first-level GLM, daskglm against what a user does today by hand.

The workload: two runs of 1200 scans × 91,282 grayordinates (fsLR-91k sizes,
TR 0.72 s, simulated by ``daskglm.datasets.simulate_cifti``), AR(1), fixed
effects over the two runs, eight t contrasts over the FIAC conditions, each
z map written as a ``.dscalar.nii``. Two tools:

- ``byhand``: what a user does with nibabel and nilearn 0.14 (which reads no
  CIFTI): per run, ``nib.load(path).get_fdata(dtype=np.float32)`` (the
  1200 × 91,282 matrix), nilearn's ``make_first_level_design_matrix`` (the frame
  times, HRF and drift of ``FirstLevelModel``'s defaults), ``mean_scaling``,
  ``run_glm(Y, X, noise_model="ar1", n_jobs=N)``, the results kept as
  ``SimpleRegressionResults`` (as ``FirstLevelModel(minimize_memory=True)``
  does); per contrast ``compute_fixed_effect_contrast`` over the two runs, its
  z score saved with nibabel on the runs' brain-model axis. It runs once per
  ``--byhand-jobs`` value (default ``1,2``: ``byhand-j1``, ``byhand-j2``); the
  faster median is the baseline of the ratio (what a careful user would pick).
- ``daskglm``: ``FirstLevelModel(t_r=0.72, noise_model="ar1").fit(runs,
  events=...)`` on the embedded cluster ``fit`` makes (or ``--workers N``), a
  fresh store folder per repeat (ingestion is measured), then
  ``compute_contrast(expression)`` per contrast (a ``Cifti2Image`` dense
  scalar), saved with ``nib.save``. With ``--in-process``, also
  ``daskglm-inprocess``: the same with ``daskglm.threads-below`` raised in
  dask's config, so that the embedded cluster is one worker of a thread per
  core inside the process (at this size daskglm's default is worker
  processes). ``--profile`` records the task stream and each process's CPU
  time, per phase.

Each tool runs in a child process of this script (``compare.py``'s
``Measured``): wall time is the child's whole life (interpreter start, imports,
cluster start-up and shut-down included), peak memory the largest sum of
resident set sizes over the child and all its descendants (joblib's workers,
dask's scheduler, nannies and workers), sampled every 50 ms. The order of the
configurations rotates from one repeat to the next; before each child its
inputs are read once (``--cache warm``, not timed). The z maps of every
configuration are compared with daskglm's in each repeat (max |dz|,
correlation): nilearn bins the AR(1) coefficients of float32 scaled data,
daskglm of float64, so a few grayordinates can fall in a neighbouring bin.

    python benchmarks/cifti.py --repeat 3 --json cifti.json
    python benchmarks/cifti.py --repeat 3 --in-process --tools daskglm --profile
    python benchmarks/cifti.py --size tiny --byhand-jobs 1 --cache asis    # CI-sized

Data are simulated once into ``$DASKGLM_BENCH_DATA`` (default
``~/.cache/daskglm/bench``, as ``compare.py``), outside git.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# benchmarks/ is sys.path[0] when this runs as a script
from compare import _data_root, _line, _print_machine, _print_task_profile, _run_child, _set_cache

#: size -> simulate_cifti arguments
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"layout": "small", "n_runs": 2, "n_scans": 60, "t_r": 2.0},
    "hcp": {"layout": "91k", "n_runs": 2, "n_scans": 1200, "t_r": 0.72},
}
TOOLS = ("byhand", "daskglm")
#: Eight t contrasts over the FIAC conditions, as expressions on the design's columns.
CONTRASTS: dict[str, str] = {
    "SStSSp_minus_DStDSp": "SStSSp - DStDSp",
    "DStDSp_minus_SStSSp": "DStDSp - SStSSp",
    "DSt_minus_SSt": "DStSSp + DStDSp - SStSSp - SStDSp",
    "DSp_minus_SSp": "SStDSp + DStDSp - SStSSp - DStSSp",
    "DSt_minus_SSt_for_DSp": "DStDSp - SStDSp",
    "DSp_minus_SSp_for_DSt": "DStDSp - DStSSp",
    "Deactivation": "4 * FirstSt - SStSSp - SStDSp - DStSSp - DStDSp",
    "Sentences": "SStSSp + SStDSp + DStSSp + DStDSp",
}
#: Targets of the issue: daskglm this many times faster than by hand, and its peak over all processes.
TARGET_SPEEDUP, TARGET_PEAK_MIB = 3.0, 1024
#: ``--in-process``: the dask config of the ``daskglm-inprocess`` configuration, whose embedded cluster is
#: one worker of a thread per core inside the process (daskglm's choice below ``daskglm.threads-below``).
IN_PROCESS_CONFIG = {"daskglm.threads-below": "1 TiB"}


# ----------------------------------------------------------------------------- children


def _worker_byhand(spec: dict) -> dict:
    """nibabel + nilearn's GLM functions, as a user writes them (see the module docstring)."""
    t = {"start": time.perf_counter()}
    import nibabel as nib
    import numpy as np
    import pandas as pd
    from nibabel.cifti2 import cifti2_axes
    from nilearn.glm.contrasts import compute_fixed_effect_contrast, expression_to_contrast_vector
    from nilearn.glm.first_level import make_first_level_design_matrix, mean_scaling, run_glm
    from nilearn.glm.regression import SimpleRegressionResults

    t["imported"] = time.perf_counter()
    phases = {"import": t["imported"] - t["start"], "load": 0.0, "design_scaling": 0.0, "run_glm": 0.0}
    labels, results, designs = [], [], []
    models = None
    for run, events in zip(spec["runs"], spec["events"]):
        a = time.perf_counter()
        img = nib.load(run)
        Y = img.get_fdata(dtype=np.float32)  # (n_scans, n_grayordinates)
        models = img.header.get_axis(1)
        del img
        b = time.perf_counter()
        n_scans, t_r = Y.shape[0], spec["t_r"]
        frame_times = np.linspace(0.0, (n_scans - 1) * t_r, n_scans)  # FirstLevelModel's, slice_time_ref=0
        X = make_first_level_design_matrix(frame_times, pd.read_csv(events, sep="\t"), hrf_model="glover",
                                           drift_model="cosine", high_pass=0.01)
        Y, _ = mean_scaling(Y)
        c = time.perf_counter()
        run_labels, run_results = run_glm(Y, X.to_numpy(), noise_model="ar1", n_jobs=spec["n_jobs"])
        del Y
        labels.append(run_labels)
        results.append({k: SimpleRegressionResults(v) for k, v in run_results.items()})
        designs.append(X)
        del run_results
        d = time.perf_counter()
        phases["load"] += b - a
        phases["design_scaling"] += c - b
        phases["run_glm"] += d - c
    a = time.perf_counter()
    zmaps = {}
    for name, expression in spec["contrasts"].items():
        con_vals = [expression_to_contrast_vector(expression, X.columns) for X in designs]
        zmaps[name] = compute_fixed_effect_contrast(labels, results, con_vals, "t").z_score()
    b = time.perf_counter()
    out = Path(spec["zmaps"])
    out.mkdir(parents=True, exist_ok=True)
    for name, z in zmaps.items():
        img = nib.Cifti2Image(np.asarray(z, dtype=np.float32)[None], header=(cifti2_axes.ScalarAxis([name]), models))
        img.nifti_header.set_intent("ConnDenseScalar")
        nib.save(img, out / f"{name}.dscalar.nii")
    c = time.perf_counter()
    phases.update(contrasts=b - a, write=c - b)
    return {"phases_s": phases, "n_jobs": spec["n_jobs"]}


def _worker_daskglm(spec: dict) -> dict:
    """daskglm's ``FirstLevelModel`` on the dense time series, as a user writes it.

    With ``profile``, the cluster ``fit`` would make is made here first (the same
    ``get_client`` call) and given to the model, so that the task stream and the CPU
    time of every process can be recorded; it then closes after the contrasts, not
    at the end of ``fit``.
    """
    t0 = time.time()
    import contextlib

    import nibabel as nib
    from _compare_children import _cluster_info, _cpu_probe, _task_profile, _Timeline, _work_bytes

    import daskglm.models.first_level as model_module
    from daskglm.runtime.cluster import get_client, n_workers_from_n_jobs

    timeline = _Timeline()
    timeline.spans.append(("import", t0, time.time()))
    # Ingestion and the fit's computation, timed inside fit (compare.py's phases)
    model_module.ingest_runs = timeline.wrap("ingest", model_module.ingest_runs)
    model_module.save_fits = timeline.wrap("fit_compute", model_module.save_fits)
    options = {} if spec["n_jobs"] is None else {"n_jobs": spec["n_jobs"]}
    if spec.get("dask_config"):
        import dask

        dask.config.set(spec["dask_config"])
    out = Path(spec["zmaps"])
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        client = stream = None
        if spec.get("profile"):
            from distributed import get_task_stream

            start = time.time()
            client = stack.enter_context(get_client(None, n_workers=n_workers_from_n_jobs(spec["n_jobs"] or -1),
                                                    work_bytes=_work_bytes(spec)))
            timeline.spans.append(("cluster_start", start, time.time()))
            stack.callback(lambda: timeline.spans.append(("cluster_close", time.time(), time.time())))
            stream = stack.enter_context(get_task_stream(client))
            timeline.probe = _cpu_probe(client)
            model_module.fit_run = timeline.wrap("fit_graph", model_module.fit_run)
        model = model_module.FirstLevelModel(t_r=spec["t_r"], noise_model="ar1", store=spec["store"],
                                             client=client, **options)
        if client is not None:
            model._designs = timeline.wrap("designs", model._designs)
        timeline.wrap("fit", model.fit)(spec["runs"], events=spec["events"])
        for name, expression in spec["contrasts"].items():
            z = timeline.wrap("contrasts", model.compute_contrast)(expression, output_type="z_score")
            timeline.wrap("write", nib.save)(z, out / f"{name}.dscalar.nii")
        if stream is not None:
            info = _cluster_info(client)
    phases = {name: timeline.total(name) for name in ("import", "ingest", "fit_compute", "contrasts", "write")}
    phases["fit_other"] = timeline.total("fit") - phases["ingest"] - phases["fit_compute"]
    result = {"phases_s": phases, "stores": [str(result.attrs["store"]) for result in model.results_]}
    if stream is not None:
        phases.update({name: timeline.total(name) for name in ("cluster_start", "designs", "fit_graph")})
        spans = [s for s in timeline.spans if s[0] not in ("fit", "import", "cluster_close")]
        result["cluster"] = info
        result["task_profile"] = _task_profile(stream.data, spans, info["n_workers"])
        for phase, spent in timeline.cpu.items():
            if phase in result["task_profile"]:
                result["task_profile"][phase]["cpu_s"] = {k: round(v, 2) for k, v in spent.items()}
    return result


WORKERS = {"byhand": _worker_byhand, "daskglm": _worker_daskglm}


def _child_main(kind: str, spec_path: str, out_path: str) -> int:
    import warnings

    warnings.simplefilter("ignore")  # the same for both tools: nilearn's "same contrast for all runs", ...
    spec = json.loads(Path(spec_path).read_text())
    Path(out_path).write_text(json.dumps(WORKERS[kind](spec)))
    return 0


# ----------------------------------------------------------------------------- parent


def _generate(size: str) -> dict:
    from daskglm.datasets import simulate_cifti

    start = time.perf_counter()
    data = simulate_cifti(_data_root(), **SIZES[size])
    print(f"[{size}] data: {Path(data['func1']).parent} ({time.perf_counter() - start:.1f} s to generate or find)",
          flush=True)
    return data


def _configs(args: argparse.Namespace) -> list[tuple[str, int | None, str]]:
    """(tool, n_jobs, tag) of every measured configuration."""
    configs: list[tuple[str, int | None, str]] = []
    if "byhand" in args.tools:
        configs += [("byhand", jobs, f"byhand-j{jobs}") for jobs in args.byhand_jobs]
    if "daskglm" in args.tools:
        configs.append(("daskglm", args.workers, "daskglm"))
        if args.in_process:
            configs.append(("daskglm", args.workers, "daskglm-inprocess"))
    return configs


def _run_order(configs: list, rep: int) -> list:
    """Repeat ``rep`` (1-based) runs the configurations rotated by ``rep - 1``: each comes first once."""
    shift = (rep - 1) % len(configs)
    return configs[shift:] + configs[:shift]


def _zmap_agreement(a: Path, b: Path, names: list[str]) -> dict:
    """How two tools' z maps (one ``.dscalar.nii`` per contrast) differ, over all contrasts."""
    import nibabel as nib
    import numpy as np

    worst, over, values, corr = 0.0, 0, 0, []
    for name in names:
        img_a, img_b = nib.load(a / f"{name}.dscalar.nii"), nib.load(b / f"{name}.dscalar.nii")
        if img_a.header.get_axis(1) != img_b.header.get_axis(1):
            raise AssertionError(f"{name}: the two z maps are on different brain models")
        za, zb = (np.asarray(img.get_fdata(), dtype=np.float64)[0] for img in (img_a, img_b))
        dz = np.abs(za - zb)
        worst, over, values = max(worst, float(dz.max())), over + int((dz > 1e-2).sum()), values + dz.size
        corr.append(float(np.corrcoef(za, zb)[0, 1]))
    return {"max_abs_dz": worst, "values_dz_over_0.01": over, "values_compared": values,
            "min_correlation": min(corr), "correlations": corr}


def _summary(size: str, records: list[dict], configs: list, n_grayordinates: int, repeat: int) -> dict:
    from _compare_summary import _summarise

    spec = {"shape": [n_grayordinates], **SIZES[size]}
    summary = _summarise(size, spec, records, None)
    tools = summary["tools"]
    byhand = [tag for tool, _, tag in configs if tool == "byhand"]
    if "daskglm" in tools and byhand:
        d = tools["daskglm"]
        best = min(byhand, key=lambda tag: tools[tag]["wall_s_median"])
        ratios = {f"wall_{tag}_over_daskglm": round(tools[tag]["wall_s_median"] / d["wall_s_median"], 2)
                  for tag in byhand}
        ratios.update({f"peak_{tag}_over_daskglm": round(tools[tag]["peak_rss_mib_median"]
                                                         / d["peak_rss_mib_median"], 2) for tag in byhand})
        by_repeat = {}  # the same repeat's runs: the ratio least affected by the machine's drift
        for rep in range(1, repeat + 1):
            walls = {r["tag"]: r["wall_s"] for r in records if r["repeat"] == rep}
            by_repeat[rep] = round(walls[best] / walls["daskglm"], 2)
        summary["best_byhand"] = best
        summary["ratios"] = {"wall_best_byhand_over_daskglm": round(tools[best]["wall_s_median"]
                                                                    / d["wall_s_median"], 2),
                             "wall_best_byhand_over_daskglm_by_repeat": by_repeat, **ratios}
        print(f"  ratio      {best} (the faster by hand) / daskglm: wall "
              f"{summary['ratios']['wall_best_byhand_over_daskglm']:.2f}x (by repeat: "
              f"{', '.join(f'{v:.2f}x' for v in by_repeat.values())}); "
              + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()), flush=True)
        if "daskglm-inprocess" in tools:
            value = round(tools[best]["wall_s_median"] / tools["daskglm-inprocess"]["wall_s_median"], 2)
            summary["ratios"]["wall_best_byhand_over_daskglm_inprocess"] = value
            print(f"  ratio      {best} / daskglm-inprocess: wall {value:.2f}x", flush=True)
    return summary


def _targets(size: str, summary: dict) -> list[dict]:
    """The issue's targets at ``hcp``: wall (the faster by-hand run / daskglm) and daskglm's peak memory."""
    out: list[dict] = []
    d, ratios = summary["tools"].get("daskglm"), summary.get("ratios", {})
    if size != "hcp" or d is None:
        return out
    if "wall_best_byhand_over_daskglm" in ratios:
        value = ratios["wall_best_byhand_over_daskglm"]
        out.append({"target": f"daskglm >= {TARGET_SPEEDUP:g}x faster than by hand ({summary['best_byhand']}, "
                              "medians)", "value": value, "limit": TARGET_SPEEDUP, "met": value >= TARGET_SPEEDUP})
    value = d["peak_rss_mib_median"]
    out.append({"target": f"daskglm peak RSS, all processes <= {TARGET_PEAK_MIB} MiB (median)", "value": value,
                "limit": TARGET_PEAK_MIB, "met": value <= TARGET_PEAK_MIB})
    return out


def _bench(size: str, args: argparse.Namespace, work: Path) -> dict:
    import nibabel as nib

    data = _generate(size)
    n_runs = SIZES[size]["n_runs"]
    runs = [data[f"func{r}"] for r in range(1, n_runs + 1)]
    events = [data[f"events{r}"] for r in range(1, n_runs + 1)]
    n_grayordinates = int(nib.load(runs[0]).shape[1])
    configs = _configs(args)
    records: list[dict] = []
    for rep in range(1, args.repeat + 1):
        rep_dir = work / f"{size}-rep{rep}"
        rep_dir.mkdir(parents=True, exist_ok=True)
        zmaps: dict[str, Path] = {}
        for tool, jobs, tag in _run_order(configs, rep):
            spec = {"runs": runs, "events": events, "t_r": SIZES[size]["t_r"], "contrasts": CONTRASTS,
                    "n_jobs": jobs, "store": str(rep_dir / f"stores-{tag}"), "zmaps": str(rep_dir / f"z-{tag}"),
                    "profile": args.profile, "dask_config": IN_PROCESS_CONFIG if tag == "daskglm-inprocess" else {}}
            _set_cache(args.cache, [*runs, *events])
            result = _run_child(tool, spec, rep_dir, tag, args.timeout, script=Path(__file__))
            print(_line(tag, size, rep, args.repeat, result), flush=True)
            _print_task_profile(result)
            records.append({"size": size, "tool": tool, "tag": tag, "repeat": rep, "n_jobs": jobs, **result})
            zmaps[tag] = Path(spec["zmaps"])
            shutil.rmtree(spec["store"], ignore_errors=True)
        if "daskglm" in zmaps:
            for tag in (t for t in zmaps if t != "daskglm"):
                agreement = _zmap_agreement(zmaps[tag], zmaps["daskglm"], list(CONTRASTS))
                next(r for r in records if r["repeat"] == rep and r["tag"] == tag)["zmap_agreement"] = agreement
                print(f"  z maps, {tag} vs daskglm ({len(CONTRASTS)} contrasts): max |dz| "
                      f"{agreement['max_abs_dz']:.2e}, {agreement['values_dz_over_0.01']} of "
                      f"{agreement['values_compared']} values differ by > 0.01, correlation >= "
                      f"{agreement['min_correlation']:.6f}", flush=True)
        for path in zmaps.values():
            shutil.rmtree(path, ignore_errors=True)
    summary = _summary(size, records, configs, n_grayordinates, args.repeat)
    summary["runs"] = records
    summary["n_grayordinates"] = n_grayordinates
    return summary


def _jobs(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v == 0 for v in values):
        raise argparse.ArgumentTypeError(f"comma-separated non-zero integers (joblib's n_jobs); got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--size", choices=tuple(SIZES), default="hcp",
                        help="hcp: 2 runs x 1200 scans x 91,282 grayordinates; tiny: 2 x 60 x 19,158 "
                             "(default: %(default)s)")
    parser.add_argument("--tools", default="byhand,daskglm", help="comma-separated subset of byhand,daskglm")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every configuration (medians reported)")
    parser.add_argument("--byhand-jobs", type=_jobs, default=[1, 2],
                        help="run_glm's n_jobs, one by-hand configuration each (default: 1,2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="daskglm: FirstLevelModel's n_jobs (default: daskglm's, one worker per core)")
    parser.add_argument("--in-process", action="store_true",
                        help="also run daskglm with its embedded cluster inside the process (one worker, a thread "
                             "per core: daskglm.threads-below raised), as configuration daskglm-inprocess")
    parser.add_argument("--profile", action="store_true",
                        help="daskglm: make the cluster before fit (as fit would) to record the task stream and "
                             "each process's CPU time; print worker compute time per phase")
    parser.add_argument("--cache", choices=("warm", "cold", "asis"), default="warm",
                        help="page-cache state of the inputs before each child (as compare.py; default warm)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per child process")
    parser.add_argument("--json", default=None, metavar="OUT", help="write all results as JSON to OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:
        return _child_main(*argv[1:4])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not args.tools or any(t not in TOOLS for t in args.tools) or args.repeat < 1 \
            or (args.workers is not None and args.workers == 0):
        parser.error(f"invalid --tools/--repeat/--workers: {args.tools}, {args.repeat}, {args.workers}")
    machine = _print_machine()
    work = Path(tempfile.mkdtemp(prefix="daskglm-cifti-"))
    try:
        summary = _bench(args.size, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    targets = _targets(args.size, summary)
    if targets:
        print("\ntargets:")
        for t in targets:
            print(f"  [{'met' if t['met'] else 'NOT met'}] {t['target']}: {t['value']}")
    if args.json:
        options = {k: v for k, v in vars(args).items()}
        record = {"command": " ".join(["python", "benchmarks/cifti.py", *argv]), "machine": machine,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_end": os.getloadavg(),
                  "options": options, "size": summary, "targets": targets}
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
