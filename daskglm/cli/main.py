"""The ``daskglm`` command line.

``daskglm demo``     nilearn's two-run walkthrough on simulated FIAC-shaped data: per-run maps,
                     fixed effects, the multi-run fit, eight contrasts and ``report.html``.
``daskglm convert``  convert one run into a zarr store (alias: ``ingest``).
``daskglm fit``      fit runs from design matrices or events, write contrast maps under
                     nilearn's BIDS-derivatives names (see :mod:`daskglm.cli.fit`).
``daskglm bids``     every subject of a BIDS dataset (see :mod:`daskglm.cli.bids`, :mod:`daskglm.bids.batch`).
``daskglm simulate-bids``  a small simulated BIDS dataset with a known effect, to try ``daskglm bids`` on.

Each runs on the Dask cluster given by ``--scheduler`` (an address, a scheduler
file, or a local scheduler name such as ``sync``), else on the one named by
``DASK_SCHEDULER_ADDRESS``, else on an embedded ``LocalCluster`` sized by
``--n-workers`` and ``--memory-limit`` (see :func:`daskglm.runtime.cluster.get_client`).

Errors are one line on stderr, ``daskglm: error: ...``: exit status 2 for a
bad command line (argparse's, and options that do not go together), 1 for a
problem found while running (a file that is not a 4D run, a contrast naming no
design column, an unreachable scheduler...).
A cluster lost mid-way (no worker left for ``daskglm.no-workers-timeout``, the
scheduler stopped) is such a problem: one line naming the scheduler, exit status 1.
``--debug`` (or ``DASKGLM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..bids.outputs import report_html
from ..io.maps import save_nifti, write_bytes
from ..io.nifti import inspect_run
from ..store.ingest import ingest_run, mean_image
from .bids import add_bids_parser
from .cache import add_cache_parser
from .common import (
    Parser,
    UsageError,
    add_cluster_options,
    add_common_options,
    cluster,
    input_path,
    nonnegative_float,
    one_line,
    positive_int,
    say,
    warnings_as_lines,
)
from .fit import add_fit_parser

__all__ = ["main", "build_parser", "WALKTHROUGH_CONTRASTS"]

#: Errors reported as one line (daskglm's, nilearn's, dask's and the file system's); others show a traceback.
ERRORS = (ValueError, TypeError, OSError, NotImplementedError, IndexError, KeyError, RuntimeError)


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"shape must be three positive integers like 64x64x30; got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


#: The walkthrough's contrasts (plot_two_runs_model), on the 13 FIAC design columns.
WALKTHROUGH_CONTRASTS = {
    "SStSSp_minus_DStDSp": [[1, 0, 0, -1]],
    "DStDSp_minus_SStSSp": [[-1, 0, 0, 1]],
    "DSt_minus_SSt": [[-1, -1, 1, 1]],
    "DSp_minus_SSp": [[-1, 1, -1, 1]],
    "DSt_minus_SSt_for_DSp": [[0, -1, 0, 1]],
    "DSp_minus_SSp_for_DSt": [[0, 0, -1, 1]],
    "Deactivation": [[-1, -1, -1, -1, 4]],
    "Effects_of_interest": "eye5",
}


def _walkthrough_contrasts(n_columns: int) -> dict:
    return {name: np.eye(n_columns)[:5] if con == "eye5" else np.array(con, dtype=float)
            for name, con in WALKTHROUGH_CONTRASTS.items()}


def _demo(args: argparse.Namespace) -> int:
    """nilearn's plot_two_runs_model walkthrough, with daskglm, on simulated data."""
    # Imported here, not at the top: they load nilearn, scikit-learn and matplotlib.
    from ..datasets.fiac import load_fiac_design_matrix, simulate_fiac
    from ..glm.fixed_effects import compute_fixed_effects
    from ..models.first_level import FirstLevelModel

    out = Path(args.output).resolve()
    maps = out / "maps"
    start = time.perf_counter()
    data = simulate_fiac(data_dir=out / "data", shape=args.shape, n_scans=args.n_scans, seed=args.seed,
                         verbose=max(0, args.verbose - 1))
    say(args, 1, f"simulated FIAC-shaped data in {out / 'data'}")
    runs = [data["func1"], data["func2"]]
    # Named columns (the files' 'conditions'): nilearn's report plots fail on integer column names.
    designs = [load_fiac_design_matrix(data[f"design_matrix{r}"]) for r in (1, 2)]
    work_bytes = sum(inspect_run(run).data_bytes for run in runs)
    with cluster(args, work_bytes) as client:
        where = f"dask's local {args.scheduler} scheduler" if client is None else (
            getattr(client, "cluster", None) or client)
        say(args, 1, f"running on {where}")
        model = FirstLevelModel(mask_img=data["mask"], smoothing_fwhm=args.smoothing_fwhm or None,
                                minimize_memory=True, store=out / "stores", client=client,
                                verbose=max(0, args.verbose))
        with warnings.catch_warnings():
            # The walkthrough's short contrasts are zero-padded and used for both runs, by design.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            contrast_val = [[-1, -1, 1, 1]]
            per_run = []
            for index, (run, design) in enumerate(zip(runs, designs), start=1):
                stats = model.fit(run, design_matrices=design).compute_contrast(contrast_val, output_type="all")
                for name, img in stats.items():
                    save_nifti(img, maps / f"run-{index}_DSt_minus_SSt_{name}.nii.gz")
                per_run.append(stats)
                say(args, 1, f"run {index}: DSt_minus_SSt peak |z| = {np.abs(stats['z_score'].get_fdata()).max():.2f}")
            fixed = compute_fixed_effects([s["effect_size"] for s in per_run],
                                          [s["effect_variance"] for s in per_run], data["mask"], client=client)
            for name, img in zip(("effect", "variance", "stat", "z_score"), fixed):
                save_nifti(img, maps / f"fixed_DSt_minus_SSt_{name}.nii.gz")
            peak = np.abs(fixed[2].get_fdata()).max()
            say(args, 1, f"fixed effects (compute_fixed_effects): peak |stat| = {peak:.2f}")
            model.fit(runs, design_matrices=designs)
            z_map = model.compute_contrast([np.array(contrast_val)] * 2, output_type="z_score")
            say(args, 1, f"multi-run fit: DSt_minus_SSt peak |z| = {np.abs(z_map.get_fdata()).max():.2f}")
            contrasts = _walkthrough_contrasts(designs[0].shape[1])
            for index, (name, con) in enumerate(contrasts.items(), start=1):
                z_map = model.compute_contrast(con, output_type="z_score")
                path = maps / f"{name}_z_map.nii.gz"
                save_nifti(z_map, path)
                say(args, 1, f"  contrast {index:02d}/{len(contrasts)} {name:24s} "
                             f"peak |z| {np.abs(z_map.get_fdata()).max():6.2f} -> {path}")
            if not args.no_report:
                # nilearn's generate_report, over the first run's mean as the walkthrough (not MNI-space data).
                report = model.generate_report(contrasts, title="daskglm demo: two runs of simulated FIAC data",
                                               bg_img=mean_image(runs[0], client=client))
                write_bytes(str(out / "report.html"), report_html(report))
                say(args, 1, f"report -> {out / 'report.html'}")
    say(args, 1, f"done in {time.perf_counter() - start:.1f} s; maps in {maps}")
    return 0


def _simulate_bids(args: argparse.Namespace) -> int:
    """A BIDS dataset for ``daskglm bids`` to try: :func:`daskglm.datasets.simulate_bids`."""
    from ..datasets.bids_sim import simulate_bids  # loads scikit-learn

    data = simulate_bids(args.root, n_subjects=args.n_subjects, n_runs=args.n_runs, task=args.task,
                         shape=args.shape, n_scans=args.n_scans, group_effect=args.group_effect, seed=args.seed,
                         overwrite=args.overwrite, verbose=max(0, args.verbose - 1), space=args.space,
                         cifti_layout=args.cifti_layout)
    root = data["root"]
    say(args, 1, f"simulated BIDS dataset in {root}: {len(data['subjects'])} subjects x {args.n_runs} run(s) of "
                 f"task {data['task']!r} (TR {data['t_r']} s), fMRIPrep-style runs in "
                 f"{os.path.join(root, data['derivatives_folder'])}, the simulation's truth in "
                 f"{os.path.dirname(data['truth'])}")
    space = "" if data["space"] == "MNI152NLin2009cAsym" else f" --space {data['space']}"
    say(args, 1, f"conditions: DStDSp DStSSp FirstSt SStDSp SStSSp; try: daskglm bids {args.root} --task "
                 f"{data['task']}{space} --contrast 'language=DStDSp + DStSSp - SStDSp - SStSSp' --out "
                 f"{os.path.join(args.root, 'derivatives', 'daskglm')}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    if args.store_pos and args.store and args.store_pos != args.store:
        raise UsageError(f"two stores given: {args.store_pos!r} and --store {args.store!r}")
    store = args.store or args.store_pos
    if not store:
        raise UsageError("--store STORE is required (the zarr store to write)")
    # One client for the whole command (gzip index, mean volume, blocks), not one per step.
    with cluster(args) as client:
        say(args, 1, f"converting {args.run} -> {store}")
        ds = ingest_run(args.run, store, mask_img=args.mask, smoothing_fwhm=args.smoothing_fwhm or None,
                        t_chunk=args.t_chunk, v_chunk=args.v_chunk, client=client, overwrite=args.overwrite)
    bold = ds["bold"]
    chunks = tuple(c[0] for c in bold.chunks) if bold.chunks else None
    say(args, 1, f"done: {store}: bold (time={bold.shape[0]}, voxel={bold.shape[1]}) {bold.dtype}, chunks {chunks}")
    say(args, 2, str(ds))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``daskglm`` parser with its subcommands (``args.func(args)`` runs one)."""
    parser = Parser(prog="daskglm", description="First-level fMRI GLM (nilearn's FirstLevelModel) out of core "
                                                "on Dask.",
                    epilog="Errors are one line on stderr; --debug or DASKGLM_DEBUG=1 shows the traceback.")
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the Python traceback of an error (default: off; or set DASKGLM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the two-run walkthrough on simulated FIAC-shaped data",
                          description="nilearn's plot_two_runs_model walkthrough with daskglm, on simulated "
                                      "FIAC-shaped data: per-run maps, compute_fixed_effects, the multi-run "
                                      "fit, the eight contrasts' z maps (in OUT/maps) and OUT/report.html.")
    demo.add_argument("--out", "--output", dest="output", default="daskglm_demo", metavar="DIR",
                      help="output folder: data/, stores/, maps/, report.html (default: %(default)s)")
    demo.add_argument("--shape", type=_shape, default=(64, 64, 30), metavar="XxYxZ",
                      help="volume shape of the simulated runs (default: 64x64x30)")
    demo.add_argument("--n-scans", type=positive_int, default=191, metavar="N",
                      help="scans per simulated run, >= 20 (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="simulation seed (default: %(default)s)")
    demo.add_argument("--smoothing-fwhm", type=nonnegative_float, default=5.0, metavar="MM",
                      help="smoothing FWHM in mm, 0 for none (default: %(default)s)")
    demo.add_argument("--no-report", action="store_true",
                      help="skip report.html, nilearn's report of the eight contrasts (default: write it)")
    add_cluster_options(demo)
    add_common_options(demo)
    demo.set_defaults(func=_demo)

    convert = sub.add_parser("convert", aliases=["ingest"], help="convert one 4D run into a zarr store",
                             description="Convert one 4D NIfTI run into a chunked zarr store: smoothed, masked "
                                         "voxel time series bold(time, voxel), as nilearn's NiftiMasker gives "
                                         "them. A complete store of the same run and options is reused.")
    convert.add_argument("run", type=input_path, metavar="RUN", help="4D NIfTI run (.nii, .nii.gz, or fsspec URL)")
    convert.add_argument("store_pos", nargs="?", default=None, metavar="STORE",
                         help="the zarr store, as a second argument (same as --store)")
    convert.add_argument("--store", default=None, help="zarr store path or fsspec URL to write (required, "
                                                       "here or as STORE)")
    convert.add_argument("--mask", type=input_path, default=None,
                         help="mask image (default: nilearn's compute_epi_mask of the run's mean)")
    convert.add_argument("--smoothing-fwhm", type=nonnegative_float, default=None, metavar="MM",
                         help="Gaussian smoothing FWHM in mm (default: no smoothing)")
    convert.add_argument("--t-chunk", type=positive_int, default=None, metavar="N",
                         help="scans per chunk (default: planned from the data size)")
    convert.add_argument("--v-chunk", type=positive_int, default=None, metavar="N",
                         help="voxels per chunk (default: planned from the data size)")
    convert.add_argument("--overwrite", action="store_true",
                         help="rebuild the store even when it is complete (default: reuse it)")
    add_cluster_options(convert)
    add_common_options(convert)
    convert.set_defaults(func=_convert)

    add_fit_parser(sub)
    add_bids_parser(sub)
    add_cache_parser(sub)

    simulate = sub.add_parser("simulate-bids", help="write a small simulated BIDS dataset to try 'daskglm bids' on",
                              description="Write a small valid BIDS dataset (raw runs, events, fMRIPrep-style "
                                          "preprocessed runs, brain masks and confounds under "
                                          "derivatives/fmriprep; with --space, fsaverage5 GIFTI or fsLR CIFTI "
                                          "runs instead of volumes) with a known effect: each subject's 'sentence' "
                                          "blob responds to DSt > SSt, its 'speaker' blob to DSp > SSp. The same "
                                          "options give byte-identical files; a folder holding this simulation "
                                          "is reused.")
    simulate.add_argument("root", metavar="DIR", help="the dataset's folder (new, empty, or a previous simulation)")
    simulate.add_argument("--n-subjects", type=positive_int, default=3, metavar="N",
                          help="subjects (default: %(default)s)")
    simulate.add_argument("--n-runs", type=positive_int, default=2, metavar="N",
                          help="runs per subject (default: %(default)s)")
    simulate.add_argument("--task", default="language", help="task label (default: %(default)s)")
    simulate.add_argument("--shape", type=_shape, default=(24, 28, 16), metavar="XxYxZ",
                          help="volume shape (default: 24x28x16)")
    simulate.add_argument("--n-scans", type=positive_int, default=80, metavar="N",
                          help="scans per run, >= 20 (default: %(default)s)")
    simulate.add_argument("--group-effect", type=nonnegative_float, default=0.1, metavar="SIZE",
                          help="the subjects' mean effect size: peak fractional signal change of a blob "
                               "(default: %(default)s, seen in each subject's z map; the Python function's "
                               "default, 0.03, is sized for group analyses)")
    simulate.add_argument("--seed", type=int, default=0, help="simulation seed (default: %(default)s)")
    simulate.add_argument("--space", choices=("MNI152NLin2009cAsym", "fsaverage5", "fsLR"),
                          default="MNI152NLin2009cAsym",
                          help="space of the preprocessed runs: volumes with brain masks (default), fsaverage5 "
                               "(GIFTI runs, one file per hemisphere) or fsLR (CIFTI-2 dense time series, "
                               "den-91k)")
    simulate.add_argument("--cifti-layout", choices=("91k", "small"), default="91k",
                          help="grayordinates of the fsLR runs: fsLR-91k's 91,282 (default), or 'small': "
                               "fsaverage5-sized cortex and two thalami, 19,158, named den-19k (quick tests)")
    simulate.add_argument("--overwrite", action="store_true",
                          help="simulate again even when DIR holds this simulation (default: reuse it)")
    add_common_options(simulate)
    simulate.set_defaults(func=_simulate_bids)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``daskglm`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("DASKGLM_DEBUG", "").strip() not in ("", "0")
    try:
        with warnings_as_lines(getattr(args, "verbose", 1)):
            return int(args.func(args))
    except KeyboardInterrupt:
        print("daskglm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, ERRORS + _cluster_errors()):
            raise
        if debug:
            traceback.print_exc()
        print(f"daskglm: error: {one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


def _cluster_errors() -> tuple[type[BaseException], ...]:
    """Dask's errors about the cluster, reported as one line too (daskglm's own
    :class:`daskglm.runtime.cluster.ClusterLostError` is a ``RuntimeError``): a future
    cancelled (distributed's ``FutureCancelledError``, e.g. the scheduler's connection
    lost), a task whose workers all died (``KilledWorker``), no worker left
    (``NoWorkerError``). Not imported here if nothing imported distributed."""
    from concurrent.futures import CancelledError

    errors: list[type[BaseException]] = [CancelledError]
    if "distributed" in sys.modules:
        from distributed import KilledWorker
        from distributed.scheduler import NoWorkerError

        errors += [KilledWorker, NoWorkerError]
    return tuple(errors)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
