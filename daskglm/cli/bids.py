"""``daskglm bids``: every subject of a BIDS dataset, through :func:`daskglm.bids.batch.run_batch`.

The subcommand's parser (:func:`add_bids_parser`, added by
:func:`daskglm.cli.main.build_parser`) and its handler: one ``run_batch`` call on
the cluster of ``--scheduler`` / ``--n-workers`` / ``--memory-limit``, its
failures one line per subject on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..bids.batch import run_batch
from ..runtime.cluster import get_client
from .common import add_cluster_options, add_common_options, one_line, positive_int

__all__ = ["add_bids_parser"]


def _contrast_arg(text: str) -> tuple[str, str]:
    name, sep, expression = text.partition("=")
    name, expression = (name.strip(), expression.strip()) if sep else (text.strip(), text.strip())
    if not name or not expression:
        raise argparse.ArgumentTypeError(f"expected NAME=EXPRESSION (or EXPRESSION); got {text!r}")
    return name, expression


def _filter_arg(text: str) -> tuple[str, str]:
    entity, sep, label = text.partition("=")
    if not sep or not entity.strip() or not label.strip():
        raise argparse.ArgumentTypeError(f"expected ENTITY=LABEL, e.g. desc=preproc; got {text!r}")
    return entity.strip(), label.strip()


def add_bids_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bids`` subcommand to an ``argparse`` subparsers object.

    ``args.func(args)`` runs it and returns the exit code: 0 when every
    subject is done or skipped, 1 when some failed (one line each on stderr),
    2 for a problem shared by all subjects (bad dataset, task, contrast...).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.

    Returns
    -------
    argparse.ArgumentParser
        The ``bids`` parser.
    """
    p = subparsers.add_parser("bids", help="fit every subject of a BIDS dataset; BIDS-derivatives outputs",
                              description="Fit every subject's first-level model of a BIDS dataset, "
                                          "compute contrasts, write BIDS-derivatives outputs (resumable).")
    p.add_argument("dataset", help="root of the BIDS dataset")
    p.add_argument("--task", required=True, help="task label")
    p.add_argument("--contrast", required=True, action="append", type=_contrast_arg, metavar="NAME=EXPR",
                   help="contrast name and expression of design columns (repeatable), e.g. "
                        "'language=DStDSp + DStSSp - SStDSp - SStSSp'")
    p.add_argument("--out", required=True,
                   help="output folder: new, empty, or holding no file of an output's name that daskglm did not "
                        "write there itself (its .daskglm-outputs.json manifests list what it wrote, which a rerun "
                        "may replace); not the dataset or its derivatives folder. Checked before any work")
    p.add_argument("--space", default=None,
                   help="space label (default: MNI152NLin2009cAsym). fsaverage5: fMRIPrep's GIFTI runs (one file "
                        "per hemisphere), each map written as one .gii file per hemisphere under nilearn's names "
                        "(hemi-L and hemi-R, den-10242); a space of CIFTI-2 dense time series, such as fMRIPrep's "
                        "fsLR (den-91k): maps as .dscalar.nii")
    p.add_argument("--sub", action="extend", nargs="+", default=None, metavar="LABEL",
                   help="subject labels (default: all)")
    p.add_argument("--derivatives-folder", default=None, metavar="FOLDER",
                   help="preprocessed runs, relative to the dataset (default: 'derivatives' if it holds subject "
                        "folders, else the one folder under it whose subjects have runs of the task, such as "
                        "derivatives/fmriprep)")
    p.add_argument("--img-filter", action="append", type=_filter_arg, default=None, metavar="ENTITY=LABEL",
                   help="extra BIDS entity filter of the runs (repeatable), e.g. desc=preproc")
    p.add_argument("--confounds-strategy", nargs="+", default=None, metavar="STRATEGY",
                   help="nilearn's load_confounds strategy, e.g. motion wm_csf ('none': no confounds; "
                        "default: every confounds column)")
    p.add_argument("--confounds-motion", choices=("basic", "power2", "derivatives", "full"), default=None,
                   help="nilearn's load_confounds motion with a 'motion' strategy: basic (the 6 parameters), "
                        "power2, derivatives or full (24; nilearn's default)")
    p.add_argument("--smoothing-fwhm", type=float, default=None, help="smoothing FWHM in mm")
    p.add_argument("--noise-model", default=None, help="ar1 (default), ols, ar2..., or arma11 (calibrated p-values)")
    p.add_argument("--mask", default=None, help="mask image, or 'derivatives' for the runs' brain masks")
    p.add_argument("--store", default=None, help="folder for the run stores (default: daskglm's cache)")
    p.add_argument("--max-subjects", type=positive_int, default=None,
                   help="subjects in flight at once (default: the number of workers)")
    p.add_argument("--report", action="store_true",
                   help="also write each subject's report.html: nilearn's generate_report of the contrasts, with "
                        "its defaults (fpr, alpha 0.001, over the MNI152 template); volumes only (refused for "
                        "fsaverage5 and CIFTI spaces)")
    p.add_argument("--no-figures", action="store_true", help="skip the design and contrast PNG figures")
    add_cluster_options(p)  # --scheduler, --n-workers/--workers, --memory-limit: as every command
    add_common_options(p)   # --verbose (1: a line per subject, 2: their warnings), --debug
    p.set_defaults(func=_bids_command)
    return p


def _bids_command(args: argparse.Namespace) -> int:
    """Handler of ``daskglm bids``: the exit code."""
    options = {"smoothing_fwhm": args.smoothing_fwhm, "noise_model": args.noise_model,
               "mask_img": args.mask, "store": args.store, "img_filters": args.img_filter}
    kwargs = {k: v for k, v in options.items() if v is not None}
    if args.confounds_strategy is not None:
        none = [s.lower() for s in args.confounds_strategy] == ["none"]
        kwargs["confounds_strategy"] = None if none else tuple(args.confounds_strategy)
    if args.confounds_motion is not None:
        if "motion" not in (kwargs.get("confounds_strategy") or ()):
            print("daskglm: error: --confounds-motion needs a --confounds-strategy that includes motion",
                  file=sys.stderr)
            return 2
        kwargs["confounds_motion"] = args.confounds_motion
    try:
        with get_client(args.scheduler, n_workers=args.n_workers, memory_limit=args.memory_limit) as client:
            result = run_batch(args.dataset, args.task, dict(args.contrast), args.out, space_label=args.space,
                               sub_labels=args.sub, derivatives_folder=args.derivatives_folder,
                               max_concurrent_subjects=args.max_subjects,
                               client=client if client is not None else args.scheduler,
                               verbose=args.verbose, report=args.report,
                               figures=not args.no_figures, **kwargs)
    except (ValueError, RuntimeError, NotImplementedError, TypeError, OSError) as exc:
        print(f"daskglm: error: {one_line(exc)}", file=sys.stderr)
        return 2
    if result.failures:
        print(f"daskglm bids: {len(result.failures)} of {len(result.subjects)} subjects failed:", file=sys.stderr)
        for label, error in result.failures.items():
            print(f"sub-{label}: {' '.join(error.split())}", file=sys.stderr)
        return 1
    return 0
