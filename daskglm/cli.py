"""The ``daskglm`` command line.

``daskglm demo``    the two-run FIAC-shaped analysis on simulated data, on an
                    embedded LocalCluster (or ``--scheduler``).
``daskglm ingest``  convert one run into a zarr store.
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


def _demo(args: argparse.Namespace) -> int:
    from .cluster import get_client
    from .datasets import simulate_fiac
    from .store import ingest_run

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = simulate_fiac(
        data_dir=out / "data", shape=args.shape, n_scans=args.n_scans, seed=args.seed
    )
    print(f"simulated FIAC-shaped data in {out / 'data'}:")
    for key in ("func1", "func2", "mask", "design_matrix1", "design_matrix2"):
        print(f"  {key:15s} {data[key]}")
    with get_client(args.scheduler, n_workers=args.workers) as client:
        where = "dask's local threads" if client is None else getattr(client, "cluster", None) or client
        print(f"running on {where}")
        for run in (1, 2):
            store = out / f"run-{run}.zarr"
            ds = ingest_run(
                data[f"func{run}"], store, mask_img=data["mask"],
                smoothing_fwhm=args.smoothing_fwhm, client=client,
            )
            bold = ds["bold"]
            print(
                f"run {run}: {store}\n  bold{tuple(bold.dims)} {bold.shape} {bold.dtype}, "
                f"chunks {bold.data.chunksize}, {bold.nbytes / 2**20:.1f} MiB, t_r={ds.attrs['t_r']}"
            )
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from .store import ingest_run

    ds = ingest_run(
        args.run, args.store, mask_img=args.mask, smoothing_fwhm=args.smoothing_fwhm,
        t_chunk=args.t_chunk, v_chunk=args.v_chunk, client=args.scheduler,
    )
    print(ds)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daskglm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="two-run analysis on simulated FIAC-shaped data")
    demo.add_argument("--output", default="daskglm_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--shape", type=_shape, default=(64, 64, 30), help="volume shape, e.g. 64x64x30")
    demo.add_argument("--n-scans", type=int, default=191)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--smoothing-fwhm", type=float, default=5.0)
    demo.add_argument("--workers", type=int, default=None, help="workers of the embedded LocalCluster")
    demo.add_argument("--scheduler", default=None, help="scheduler address (default: embedded LocalCluster)")
    demo.set_defaults(func=_demo)

    ingest = sub.add_parser("ingest", help="convert one 4D run into a zarr store")
    ingest.add_argument("run", help="4D NIfTI run (.nii or .nii.gz)")
    ingest.add_argument("store", help="zarr store path or fsspec URL")
    ingest.add_argument("--mask", default=None, help="mask image (default: compute_epi_mask)")
    ingest.add_argument("--smoothing-fwhm", type=float, default=None)
    ingest.add_argument("--t-chunk", type=int, default=None)
    ingest.add_argument("--v-chunk", type=int, default=None)
    ingest.add_argument("--scheduler", default=None, help="scheduler address (default: embedded LocalCluster)")
    ingest.set_defaults(func=_ingest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``daskglm`` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
