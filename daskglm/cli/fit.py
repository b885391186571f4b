"""``daskglm fit``: fit runs, compute contrasts, write maps under nilearn's BIDS-derivatives names.

Everything cheap is checked before any run is read or a cluster started: the
files exist, the runs' headers are 4D, design matrices have one row per scan,
events build valid designs (nilearn's ``make_first_level_design_matrix``, the
same call :meth:`daskglm.FirstLevelModel.fit` makes), and every contrast
parses against every run's design columns. Then the model is fitted on the
cluster, and its outputs are written by :mod:`daskglm.bids.outputs`, the
writer of ``daskglm bids``'s subjects too (its docstring compares them with
nilearn 0.14's ``save_glm_to_bids``): per contrast the five maps of
``compute_contrast(output_type="all")``, its cluster table and the table's
parameters, and the mask, the design matrices with their sidecars and
``statmap.json``. With ``--report``, ``report.html`` is nilearn's own report
(the model *is* a nilearn ``FirstLevelModel``: its ``generate_report``, given
the report options the user set and nilearn's defaults otherwise; the
cluster tables are thresholded with the same options, as
``save_glm_to_bids``), written as nilearn's ``HTMLReport.save_as_html``
writes it.

File names are nilearn 0.14's own: its ``BaseGLM._generate_filenames_output``
(what :func:`nilearn.glm.save_glm_to_bids` calls) runs on a small stand-in
holding the run file names. So
``contrast-<camelCase name>_stat-<effect|t|F|variance|z|p>_statmap.nii.gz``,
``contrast-<name>_clusters.tsv`` / ``.json``, ``[run-<i>_]design.tsv`` /
``design.json`` and ``mask.nii.gz``, prefixed by the runs' BIDS entities
(``sub-01_task-x_...``, in a ``sub-01/`` folder; the model's
``subject_label`` is then ``01``) when the run file names carry one subject
label, or by ``--prefix``; ``statmap.json`` and ``report.html`` carry only
``--prefix``, as nilearn's.

Output safety (:mod:`daskglm.io.outputs`): ``--out`` may be a new folder, an
empty one, or one holding other files, but daskglm replaces only files it
wrote itself. Each folder it writes into gets a manifest,
``.daskglm-outputs.json``, listing the files it wrote there (size and
SHA-256). Before anything is read or fitted, every output file is checked: an
existing one must be listed in the manifest and unchanged since, else the
command stops with one line naming it (choose another ``--out``, or remove the
file). An output that is one of the command's inputs (runs, events, confounds,
design matrices, mask, ``--bg-img``) is refused the same way, naming both.
Other files in the folder are never touched; an existing
``dataset_description.json`` daskglm did not write is left as it is (one it
wrote gains its ``GeneratedBy`` entry if it lacks it).
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..bids.outputs import (
    DESCRIPTION,
    Writer,
    contrast_labels,
    join,
    model_outputs,
    write_dataset_description,
    write_model,
)
from ..io.nifti import inspect_run
from ..io.outputs import OutputConflict, OutputPlan
from ..kernels.regression import parse_noise_model
from .common import (
    UsageError,
    add_cluster_options,
    add_common_options,
    cluster,
    finite_float,
    input_path,
    nonnegative_float,
    nonnegative_int,
    one_line,
    positive_float,
    positive_int,
    say,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["add_fit_parser", "run_fit", "contrast_arg", "load_design_matrix"]

HRF_MODELS = ("glover", "spm", "glover + derivative", "spm + derivative", "glover + derivative + dispersion",
              "spm + derivative + dispersion", "fir", "none")
#: Options that only shape designs built from events, with the model's defaults.
EVENT_OPTIONS = {"t_r": None, "slice_time_ref": 0.0, "hrf_model": "glover", "drift_model": "cosine",
                 "high_pass": 0.01, "drift_order": 1, "fir_delays": None, "min_onset": -24.0}
#: Options of --report, with the defaults of nilearn's generate_report (None: nilearn's 3.09 with no height control).
REPORT_OPTIONS = {"height_control": "fpr", "alpha": 0.001, "threshold": None, "cluster_threshold": 0,
                  "bg_img": "MNI152TEMPLATE"}


# ------------------------------------------------------------------ argument types


def contrast_arg(text: str) -> tuple[str, Any]:
    """``NAME=EXPR`` as ``(name, definition)``.

    ``EXPR`` is a nilearn expression over design column names (a ``str``), or
    weights: ``-1,-1,1,1`` is a t contrast (1D array), rows separated by ``;``
    (``1,0;0,1``) an F contrast (2D array). Without ``NAME=``, the expression
    is its own name, as nilearn names a contrast given as a string.
    """
    name, sep, expr = text.partition("=")
    if not sep:
        name = expr = text
    name, expr = name.strip(), expr.strip()
    if not name or not expr:
        raise argparse.ArgumentTypeError(f"expected NAME=EXPR, e.g. effect=1,0,-1 (one weight per design column) or "
                                         f"'DStDSp-SStSSp=DStDSp - SStSSp'; got {text!r}")
    rows = [row for row in expr.split(";") if row.strip()]
    try:
        weights = [[float(v) for v in row.split(",")] for row in rows]
    except ValueError:
        return name, expr  # not numbers: a string expression, checked against the design columns later
    if not all(math.isfinite(v) for row in weights for v in row):
        raise argparse.ArgumentTypeError(f"contrast {name!r}: weights must be finite; got {expr!r}")
    if len({len(row) for row in weights}) != 1:
        raise argparse.ArgumentTypeError(f"contrast {name!r}: the rows of an F contrast must have the same "
                                         f"number of weights; got {expr!r}")
    matrix = np.array(weights, dtype=np.float64)
    return name, matrix[0] if matrix.shape[0] == 1 else matrix


def _fir_delays(text: str) -> list[int]:
    try:
        delays = [int(v) for v in text.split(",")]
    except ValueError:
        delays = [-1]
    if not delays or min(delays) < 0:
        raise argparse.ArgumentTypeError(f"must be scan delays >= 0 separated by commas, e.g. 0,1,2; got {text!r}")
    return delays


def _noise_model(text: str) -> str:

    try:
        parse_noise_model(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(one_line(exc)) from None
    return text


def _alpha(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1); got {text!r}")
    return value


def _slice_time_ref(text: str) -> float:
    value = nonnegative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1]; got {text!r}")
    return value


def _bg_img(text: str) -> str:
    if text.strip().lower() == "none":
        return "none"
    if "://" in text:  # nilearn's plotting reads local images only
        raise argparse.ArgumentTypeError(f"must be a local image file or 'none'; got {text!r}")
    return input_path(text)


def _run_path(text: str) -> str:
    """A run: an existing file or a URL, not a GIFTI surface file (its hemispheres and mesh are not one file)."""
    if text.endswith(".gii"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a GIFTI surface file: daskglm fit reads NIfTI runs and CIFTI-2 dense time series "
            "(.dtseries.nii); fit GIFTI runs with 'daskglm bids --space fsaverage5', or in Python as nilearn "
            "SurfaceImage runs of daskglm.FirstLevelModel")
    return input_path(text)


_SIGNAL_SCALING = {"0": 0, "0,1": (0, 1), "none": False}


# ------------------------------------------------------------------ parser


def add_fit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``fit`` to ``subparsers``; ``args.func(args)`` runs it."""
    p = subparsers.add_parser(
        "fit", help="fit runs and write contrast maps with BIDS-derivatives names",
        description="Fit a first-level GLM (nilearn's FirstLevelModel, out of core on Dask) on one or more "
                    "runs, compute contrasts, and write each contrast's effect, variance, t/F, z and p maps, "
                    "the design matrices (TSV) and the mask under the names nilearn's save_glm_to_bids gives "
                    "them. Designs come from --design-matrix files, or are built from --events files. "
                    "Outputs never replace a file daskglm did not write, nor an input: --out is a new or empty "
                    "folder, or one holding other files none of which has an output's name, or daskglm's own "
                    "output folder (its .daskglm-outputs.json lists what it wrote there, which a rerun may "
                    "replace); anything else is refused before any work, in one line naming the file.",
        epilog="Example: daskglm fit run1.nii.gz run2.nii.gz --events ev1.tsv --events ev2.tsv --t-r 2.5 "
               "--mask mask.nii.gz --smoothing-fwhm 5 --contrast 'language=DStDSp - SStSSp' "
               "--contrast 'DSp_minus_SSp=DStDSp - DStSSp + SStDSp - SStSSp' --out results --report")
    p.add_argument("runs", nargs="+", type=_run_path, metavar="RUN",
                   help="4D NIfTI runs (.nii, .nii.gz, or fsspec URLs) or CIFTI-2 dense time series "
                        "(.dtseries.nii), fitted together (fixed effects)")
    p.add_argument("--out", "--output", "-o", dest="out", required=True, metavar="DIR",
                   help="output folder (created; required): new, empty, or holding no file of an output's "
                        "name that daskglm did not write there itself (see above)")
    design = p.add_argument_group("design: --design-matrix files, or --events files (one per run, in run order)")
    design.add_argument("--design-matrix", action="append", type=input_path, default=None, metavar="FILE",
                        help="design matrix of a run (repeat per run): .tsv/.csv with a header of column "
                             "names, or .npz with an array X (n_scans, n_regressors) and optionally "
                             "'conditions' (column names) (default: none)")
    design.add_argument("--events", action="append", type=input_path, default=None, metavar="FILE",
                        help="events TSV of a run (repeat per run): onset, duration, trial_type (default: none)")
    design.add_argument("--confounds", action="append", type=input_path, default=None, metavar="FILE",
                        help="confounds .tsv/.csv of a run (repeat per run), added to designs built from "
                             "events (default: none)")
    design.add_argument("--t-r", type=positive_float, default=None, metavar="SECONDS",
                        help="repetition time, with --events (default: the first run's header)")
    design.add_argument("--slice-time-ref", type=_slice_time_ref, default=None, metavar="FRACTION",
                        help="with --events: reference time of the slices as a fraction of TR (default: 0.0)")
    design.add_argument("--hrf-model", choices=HRF_MODELS, default=None, metavar="MODEL",
                        help=f"with --events: HRF model, one of {', '.join(repr(m) for m in HRF_MODELS)} "
                             "(default: glover)")
    design.add_argument("--drift-model", choices=("cosine", "polynomial", "none"), default=None,
                        help="with --events: drift model (default: cosine)")
    design.add_argument("--high-pass", type=positive_float, default=None, metavar="HZ",
                        help="with --events: cut-off frequency of the cosine drifts (default: 0.01)")
    design.add_argument("--drift-order", type=positive_int, default=None, metavar="N",
                        help="with --events: order of the polynomial drift (default: 1)")
    design.add_argument("--fir-delays", type=_fir_delays, default=None, metavar="D0,D1,...",
                        help="with --events and --hrf-model fir: delays in scans (default: 0)")
    design.add_argument("--min-onset", type=float, default=None, metavar="SECONDS",
                        help="with --events: minimal onset relative to the first scan (default: -24)")
    model = p.add_argument_group("model")
    model.add_argument("--mask", type=input_path, default=None, metavar="MASK",
                       help="brain mask image (default: nilearn's compute_epi_mask of the first run)")
    model.add_argument("--smoothing-fwhm", type=nonnegative_float, default=None, metavar="MM",
                       help="Gaussian smoothing FWHM in mm (default: no smoothing)")
    model.add_argument("--noise-model", type=_noise_model, default="ar1", metavar="MODEL",
                       help="ols, ar1, arN (nilearn's), or arma11 (an ARMA(1,1) per voxel by REML, calibrated "
                            "p-values; see the docs' 'Choosing a noise model') (default: %(default)s)")
    model.add_argument("--signal-scaling", choices=tuple(_SIGNAL_SCALING), default="0", metavar="SCALING",
                       help="0: each voxel's time series scaled by its mean; '0,1': grand-mean scaling; "
                            "none: no scaling (default: %(default)s)")
    model.add_argument("--random-state", type=int, default=None, metavar="SEED",
                       help="KMeans seed for arN with N > 1 (default: none)")
    model.add_argument("--store", default=None, metavar="DIR",
                       help="folder (or fsspec URL) of the zarr run stores, reused while a run is unchanged "
                            "(default: $DASKGLM_CACHE, else ~/.cache/daskglm/stores)")
    model.add_argument("--t-chunk", type=positive_int, default=None, metavar="N",
                       help="scans per chunk of the stores (default: planned from the data size)")
    model.add_argument("--v-chunk", type=positive_int, default=None, metavar="N",
                       help="voxels per chunk of the stores (default: planned from the data size)")
    model.add_argument("--overwrite", action="store_true",
                       help="rebuild the runs' stores even if complete and up to date, as after a damaged-store error "
                            "(default: reuse them)")
    out = p.add_argument_group("contrasts and outputs")
    out.add_argument("--contrast", action="append", type=contrast_arg, required=True, metavar="NAME=EXPR",
                     help="a contrast (required; repeatable): EXPR is a nilearn expression over design "
                          "column names, e.g. 'DStDSp - SStSSp', or weights, e.g. -1,-1,1,1 (t), with rows "
                          "separated by ';' for an F contrast, e.g. '1,0,0;0,1,0'. Short weight vectors are "
                          "zero-padded. NAME becomes contrast-<camelCase NAME> in file names, as nilearn")
    out.add_argument("--prefix", default=None,
                     help="prefix of the file names, as save_glm_to_bids (default: the BIDS entities of the "
                          "runs' file names when they name one subject, else none)")
    out.add_argument("--report", action="store_true",
                     help="also write report.html, nilearn's generate_report of the contrasts; its thresholds "
                          "also make the cluster tables, as save_glm_to_bids (default: off)")
    out.add_argument("--height-control", choices=("fpr", "fdr", "bonferroni", "none"), default=None,
                     help="with --report: multiple-comparison control of the z thresholds (default: fpr)")
    out.add_argument("--alpha", type=_alpha, default=None,
                     help="with --report and a height control: its p or q value (default: 0.001)")
    out.add_argument("--threshold", type=finite_float, default=None, metavar="Z",
                     help="with --report and --height-control none: the z threshold (default: nilearn's, "
                          "3.09 in nilearn 0.14)")
    out.add_argument("--cluster-threshold", type=nonnegative_int, default=None, metavar="VOXELS",
                     help="with --report: minimum cluster size in voxels (default: 0)")
    out.add_argument("--bg-img", type=_bg_img, default=None, metavar="IMAGE",
                     help="with --report: background image (local file) of the mask and maps, or 'none' "
                          "(default: nilearn's MNI152 template, which only fits MNI-space data)")
    add_cluster_options(p)
    add_common_options(p)
    p.set_defaults(func=run_fit)
    return p


# ------------------------------------------------------------------ inputs


def load_design_matrix(path: str) -> pd.DataFrame:
    """A design matrix file as a DataFrame: .tsv/.csv (header = column names) or .npz (``X``, ``conditions``)."""
    import pandas as pd

    name = path.lower()
    if name.endswith((".tsv", ".csv")):
        return pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
    if not name.endswith(".npz"):
        raise ValueError(f"design matrix {path!r}: expected a .tsv, .csv or .npz file")
    with np.load(path, allow_pickle=False) as npz:
        if "X" not in npz.files:
            raise ValueError(f"design matrix {path!r} has no array 'X' (arrays: {npz.files})")
        X = npz["X"]
        names = npz["conditions"] if "conditions" in npz.files else None
    if X.ndim != 2:
        raise ValueError(f"design matrix {path!r}: X must be 2D (n_scans, n_regressors); got shape {X.shape}")
    if names is not None:
        names = [c.decode() if isinstance(c, bytes) else str(c) for c in np.ravel(names)]
        if len(names) != X.shape[1]:
            raise ValueError(f"design matrix {path!r}: {len(names)} 'conditions' for {X.shape[1]} columns of X")
    return pd.DataFrame(X, columns=names)


def _check_options(args: argparse.Namespace) -> None:
    """Options given where they mean nothing are errors, not silently ignored."""
    def given(names: dict) -> list[str]:
        return ["--" + k.replace("_", "-") for k in names if getattr(args, k) is not None]

    if args.design_matrix and args.events:
        raise UsageError("give either --design-matrix or --events, not both")
    if not args.design_matrix and not args.events:
        raise UsageError("give the runs' designs: --design-matrix FILE or --events FILE (one per run)")
    if args.design_matrix and (args.confounds or given(EVENT_OPTIONS)):
        extra = (["--confounds"] if args.confounds else []) + given(EVENT_OPTIONS)
        raise UsageError(f"{', '.join(extra)} only apply to designs built from --events; with --design-matrix, "
                         "put those regressors in the design matrices")
    if not args.report and given(REPORT_OPTIONS):
        extra = given(REPORT_OPTIONS)
        raise UsageError(f"{', '.join(extra)} only {'applies' if len(extra) == 1 else 'apply'} with --report")
    if args.height_control == "none" and args.alpha is not None:
        raise UsageError(f"--alpha {args.alpha} only applies with a height control (fpr, fdr or bonferroni); "
                         "with --height-control none, give --threshold")
    if args.threshold is not None and args.height_control != "none":
        raise UsageError(f"--threshold {args.threshold} only applies with --height-control none; with "
                         f"--height-control {args.height_control or 'fpr'} the threshold comes from --alpha")
    n = len(args.runs)
    for option, files in (("--design-matrix", args.design_matrix), ("--events", args.events),
                          ("--confounds", args.confounds)):
        if files and len(files) != n:
            raise UsageError(f"{n} run(s) but {len(files)} {option} file(s): give one per run, in run order")
    names = [name for name, _ in args.contrast]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"contrast names given more than once: {dupes}")


def _check_contrasts(contrasts: dict[str, Any], designs: list[pd.DataFrame]) -> dict[str, str]:
    """Parse every contrast against every run's columns; the stat type of each (nilearn's naming rule)."""
    from ..glm import design as _design

    try:
        contrast_labels(contrasts)
    except ValueError as exc:  # two names written as one contrast-<label>
        raise UsageError(str(exc)) from None
    stat_types = {}
    for name, definition in contrasts.items():
        stat_types[name] = "t" if isinstance(definition, str) or definition.ndim == 1 else "F"
        columns = [[str(c) for c in dm.columns] for dm in designs]
        if not isinstance(definition, str):
            # On the command line the design is not seen: weights must match its columns one for one
            # (nilearn pads a short vector with zeros and warns; here that map would be another contrast).
            for index, cols in enumerate(columns):
                if np.shape(definition)[-1] != len(cols):
                    run = f"run {index + 1}'s design" if len(columns) > 1 else "the design"
                    raise ValueError(
                        f"contrast {name!r} has {np.shape(definition)[-1]} weights but {run} has {len(cols)} "
                        f"columns, in this order: {', '.join(cols)}; give one weight per column, or an "
                        f"expression of column names (e.g. {name}={cols[0]} - {cols[-1]})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # compute_contrast warns later, once
                _design.nonnull_runs([definition] * len(designs), columns)
                for cols in columns:
                    _design.parse_contrast(definition, cols, stat_types[name])
        except (ValueError, TypeError) as exc:
            shown = definition if isinstance(definition, str) else np.asarray(definition).tolist()
            raise ValueError(f"contrast {name!r} ({shown}): {one_line(exc)}") from exc
    return stat_types


def _output_plan(args: argparse.Namespace, outputs: Any) -> Any:
    """Every file ``run_fit`` will write, checked before any work (see the module docstring).

    Raises
    ------
    UsageError
        An output that would replace an input of the command, or a file
        daskglm cannot prove it wrote.
    """

    description = join(args.out, DESCRIPTION)
    plan = OutputPlan([description, *outputs.paths()], optional=[description])
    inputs = [("run", run) for run in args.runs]
    for what, option in (("design matrix", args.design_matrix), ("events", args.events),
                         ("confounds", args.confounds)):
        inputs += [(f"{what} file", path) for path in option or []]
    inputs += [("--mask", args.mask)]
    if args.bg_img not in (None, "none"):
        inputs.append(("--bg-img", args.bg_img))
    try:
        plan.check_inputs(inputs)
        plan.check()
    except OutputConflict as exc:
        raise UsageError(str(exc)) from None
    return plan


# ------------------------------------------------------------------ the command


def _designs(args: argparse.Namespace, runs: list[str], infos: list) -> tuple[list[pd.DataFrame], dict, dict]:
    """The runs' design matrices (checked as ``fit`` will), ``fit``'s keyword arguments, the design parameters."""
    n_scans = [info.n_scans for info in infos]
    if args.design_matrix:
        designs = [load_design_matrix(path) for path in args.design_matrix]
        for path, dm, run, n in zip(args.design_matrix, designs, runs, n_scans):
            if dm.shape[0] != n:
                raise ValueError(f"design matrix {path!r} has {dm.shape[0]} rows but run {run!r} has {n} scans")
        from ..glm import design as _design

        designs = _design.run_design_matrices(n_scans, None, design_matrices=designs)  # nilearn's checks
        return designs, {"design_matrices": designs}, {}
    params = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in EVENT_OPTIONS.items()}
    for key in ("hrf_model", "drift_model"):
        params[key] = None if params[key] == "none" else params[key]
    if params["t_r"] is None:
        params["t_r"] = infos[0].t_r
        if params["t_r"] is None:
            raise UsageError(f"--t-r is required: the header of {runs[0]!r} gives no repetition time")
        say(args, 2, f"t_r = {params['t_r']} s (from the header of {runs[0]})")
    fit_kwargs = {"events": list(args.events), "confounds": list(args.confounds) if args.confounds else None}
    from ..glm import design as _design

    # nilearn's warnings about the events (no trial_type column, events beyond the run...) are shown
    # here, before the contrasts are checked against the columns they explain; the fit's repeat of
    # them is shown once (``warnings_as_lines`` prints each text once).
    designs = _design.run_design_matrices(n_scans, **params, **fit_kwargs)
    return designs, fit_kwargs, params


def _report_options(args: argparse.Namespace) -> dict[str, Any]:
    """``generate_report``'s keyword arguments the user gave (others: nilearn's defaults).

    Only options given on the command line are passed, so nilearn warns about
    nothing the user did not ask for.
    """
    options = {k: getattr(args, k) for k in REPORT_OPTIONS if getattr(args, k) is not None}
    for key in ("height_control", "bg_img"):  # "none": nilearn's None (no height control, no background)
        if options.get(key) == "none":
            options[key] = None
    return options


def run_fit(args: argparse.Namespace) -> int:
    """Handler of ``daskglm fit``; returns the exit status."""
    _check_options(args)  # the heavy imports come as late as they can: mistakes are reported at once

    runs = list(args.runs)
    contrasts = dict(args.contrast)
    infos = [inspect_run(run) for run in runs]
    designs, fit_kwargs, design_params = _designs(args, runs, infos)
    stat_types = _check_contrasts(contrasts, designs)
    outputs = model_outputs(args.out, runs, contrasts, stat_types, args.prefix, report=args.report)

    plan = _output_plan(args, outputs)  # before any run is read or a cluster started

    params = dict(mask_img=args.mask, smoothing_fwhm=args.smoothing_fwhm or None, noise_model=args.noise_model,
                  signal_scaling=_SIGNAL_SCALING[args.signal_scaling], random_state=args.random_state,
                  store=args.store, t_chunk=args.t_chunk, v_chunk=args.v_chunk, overwrite=args.overwrite,
                  minimize_memory=True, subject_label=outputs.subject,
                  verbose=max(0, args.verbose), **design_params)
    with plan.writing():  # the folders now: one that cannot be created fails before any work
        _fit_and_write(args, plan, outputs, runs, contrasts, infos, designs, fit_kwargs, params, stat_types)
    say(args, 1, f"done: maps in {outputs.folder}")
    return 0


def _fit_and_write(args: argparse.Namespace, plan: Any, outputs: Any, runs: list[str], contrasts: dict[str, Any],
                   infos: list, designs: list, fit_kwargs: dict, params: dict, stat_types: dict[str, str]) -> None:
    """Fit on the cluster, then write the files of ``outputs`` (``plan``, claimed first)."""
    from ..models.first_level import FirstLevelModel
    from ..store.ingest import read_bytes

    def wrote(path: str) -> None:
        say(args, 2, f"  wrote {path}")

    def computed(number: int, name: str, maps: dict) -> None:
        peak = float(np.abs(maps["z_score"].get_fdata()).max())
        z_map = outputs.path(outputs.names["statistical_maps"][name]["z_score"])
        say(args, 1, f"  contrast {number}/{len(contrasts)} {name} ({stat_types[name]}): peak |z| {peak:.2f} "
                     f"-> {z_map}")

    with cluster(args, read_bytes(infos, params["mask_img"], params["smoothing_fwhm"])) as client:
        where = f"dask's local {args.scheduler} scheduler" if client is None else client
        say(args, 1, f"fitting {len(runs)} run(s) ({args.noise_model}, {designs[0].shape[1]} regressors) on {where}")
        model = FirstLevelModel(client=client, **params)
        model.fit(runs, **fit_kwargs)
        plan.claim()  # checked again: nothing of another's appeared during the fit
        writer = Writer(plan, on_write=wrote)
        write_dataset_description(writer, args.out)  # another tool's is left as it is
        write_model(model, outputs, contrasts, stat_types, writer, runs,
                    report_options=_report_options(args) if args.report else None, client=client,
                    on_contrast=computed)
        if args.report:
            say(args, 1, f"  report -> {outputs.path(outputs.report_html)}")
