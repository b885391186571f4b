"""The ``daskglm`` command line.

``daskglm demo``    nilearn's two-run walkthrough on simulated FIAC-shaped data
                    (per-run maps, fixed effects, multi-run fit, eight contrasts
                    written as .nii.gz), on an embedded LocalCluster (or ``--scheduler``).
``daskglm ingest``  convert one run into a zarr store.

Both run on the Dask cluster given by ``--scheduler`` (an address, a scheduler
file, or a local scheduler name such as ``sync``), else on the one named by
``DASK_SCHEDULER_ADDRESS``, else on an embedded ``LocalCluster`` sized by
``--workers`` and ``--memory-limit`` (see :func:`daskglm.cluster.get_client`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"shape must look like 64x64x30; got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


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


def _demo(args: argparse.Namespace) -> int:
    """nilearn's plot_two_runs_model walkthrough, with daskglm, on simulated data."""
    import warnings

    import numpy as np
    import pandas as pd

    from .cluster import get_client
    from .datasets import simulate_fiac
    from .fixed_effects import compute_fixed_effects
    from .maps import save_nifti
    from .model import FirstLevelModel

    out = Path(args.output).resolve()
    maps = out / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = simulate_fiac(data_dir=out / "data", shape=args.shape, n_scans=args.n_scans, seed=args.seed)
    print(f"simulated FIAC-shaped data in {out / 'data'}")
    runs = [data["func1"], data["func2"]]
    designs = [pd.DataFrame(np.load(data[f"design_matrix{r}"])["X"]) for r in (1, 2)]
    with get_client(args.scheduler, n_workers=args.workers, memory_limit=args.memory_limit) as client:
        where = "dask's local threads" if client is None else getattr(client, "cluster", None) or client
        print(f"running on {where}")
        model = FirstLevelModel(mask_img=data["mask"], smoothing_fwhm=args.smoothing_fwhm,
                                minimize_memory=True, store=out / "stores", client=client)
        warnings.simplefilter("ignore", UserWarning)
        contrast_val = [[-1, -1, 1, 1]]
        per_run = []
        for index, (run, design) in enumerate(zip(runs, designs), start=1):
            stats = model.fit(run, design_matrices=design).compute_contrast(contrast_val, output_type="all")
            for name, img in stats.items():
                save_nifti(img, maps / f"run-{index}_DSt_minus_SSt_{name}.nii.gz")
            per_run.append(stats)
            print(f"run {index}: DSt_minus_SSt peak |z| = {np.abs(stats['z_score'].get_fdata()).max():.2f}")
        fixed = compute_fixed_effects([s["effect_size"] for s in per_run],
                                      [s["effect_variance"] for s in per_run], data["mask"], client=client)
        for name, img in zip(("effect", "variance", "stat", "z_score"), fixed):
            save_nifti(img, maps / f"fixed_DSt_minus_SSt_{name}.nii.gz")
        print(f"fixed effects (compute_fixed_effects): peak |stat| = {np.abs(fixed[2].get_fdata()).max():.2f}")
        model.fit(runs, design_matrices=designs)
        z_map = model.compute_contrast([np.array(contrast_val)] * 2, output_type="z_score")
        print(f"multi-run fit: DSt_minus_SSt peak |z| = {np.abs(z_map.get_fdata()).max():.2f}")
        n_columns = designs[0].shape[1]
        for index, (name, con) in enumerate(WALKTHROUGH_CONTRASTS.items(), start=1):
            con = np.eye(n_columns)[:5] if con == "eye5" else np.array(con)
            z_map = model.compute_contrast(con, output_type="z_score")
            path = maps / f"{name}_z_map.nii.gz"
            save_nifti(z_map, path)
            print(f"  contrast {index:02d}/8 {name:24s} peak |z| {np.abs(z_map.get_fdata()).max():6.2f} -> {path}")
    print(f"done in {time.perf_counter() - start:.1f} s; maps in {maps}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from .cluster import get_client
    from .store import ingest_run

    # One client for the whole command (gzip index, mean volume, blocks), not one per step.
    with get_client(args.scheduler, n_workers=args.workers, memory_limit=args.memory_limit) as client:
        ds = ingest_run(
            args.run, args.store, mask_img=args.mask, smoothing_fwhm=args.smoothing_fwhm,
            t_chunk=args.t_chunk, v_chunk=args.v_chunk, client=client,
        )
    print(ds)
    return 0


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler", default=None,
        help="Dask scheduler address (tcp://host:port), scheduler file, or local scheduler name "
             "(sync, threads); default: DASK_SCHEDULER_ADDRESS, else an embedded LocalCluster",
    )
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="worker processes of the embedded LocalCluster (default: one per core)")
    parser.add_argument("--memory-limit", default=None,
                        help="memory limit per worker of the embedded LocalCluster, e.g. 4GiB "
                             "(default: the available memory split between the workers)")


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daskglm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="two-run analysis on simulated FIAC-shaped data")
    demo.add_argument("--output", default="daskglm_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--shape", type=_shape, default=(64, 64, 30), help="volume shape, e.g. 64x64x30")
    demo.add_argument("--n-scans", type=int, default=191)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--smoothing-fwhm", type=float, default=5.0)
    _add_cluster_options(demo)
    demo.set_defaults(func=_demo)

    ingest = sub.add_parser("ingest", help="convert one 4D run into a zarr store")
    ingest.add_argument("run", help="4D NIfTI run (.nii or .nii.gz)")
    ingest.add_argument("store", help="zarr store path or fsspec URL")
    ingest.add_argument("--mask", default=None, help="mask image (default: compute_epi_mask)")
    ingest.add_argument("--smoothing-fwhm", type=float, default=None)
    ingest.add_argument("--t-chunk", type=int, default=None)
    ingest.add_argument("--v-chunk", type=int, default=None)
    _add_cluster_options(ingest)
    ingest.set_defaults(func=_ingest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``daskglm`` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
