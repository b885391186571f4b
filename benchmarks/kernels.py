"""Micro-benchmark of the two hot kernels, each against the implementation it replaces.

* the AR(1) fit of one HCP-sized voxel column (1200 scans x 2782 voxels, the
  FIAC design at HCP length): the exact path (OLS, residuals, Yule-Walker, a
  whitened GEMM per AR label) against the moment fit of daskglm.kernels.ar1_moments;
* smoothing and masking of HCP-sized volumes (91 x 109 x 91 int16, 5 mm FWHM at
  2 mm, a brain-shaped mask): scipy's gaussian_filter1d against the compiled
  filter of daskglm.kernels.smoothing.

Both pairs are timed in this process, one BLAS thread, interleaved, median of
``--repeat`` rounds; the results of each pair are compared (same labels, betas
to 1e-12; smoothing bit for bit).

    python benchmarks/kernels.py --repeat 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread, as a dask worker has

import numpy as np  # noqa: E402


def _timed(func, repeat: int) -> list[float]:
    func()  # warm: caches, compiled code
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        out.append(time.perf_counter() - start)
    return out


def _design(n: int) -> np.ndarray:
    """The simulated FIAC design (13 columns: nilearn's, from simulated events) at ``n`` scans."""
    from daskglm.datasets.fiac import fiac_design_matrix, fiac_events

    return fiac_design_matrix(fiac_events(n, 2.5), n, 2.5).to_numpy(dtype=np.float64)


def fit_pair(repeat: int) -> dict:
    from daskglm.kernels import ar1_moments as _ar1_moments
    from daskglm.kernels import regression as _kernels
    from daskglm.kernels import scaling as _scaling

    rng = np.random.default_rng(0)
    n, v = 1200, 2782
    X = _design(n)
    rho = rng.uniform(-0.1, 0.6, v)
    e = rng.standard_normal((n, v))
    for t in range(1, n):
        e[t] += rho * e[t - 1]
    Y = (1000 + X @ rng.normal(0, 5, (X.shape[1], v)) + 15 * e).astype(np.float32)
    Ys = np.asarray(_scaling.scale_signal(Y, 0)[0], dtype=np.float64)
    design = _ar1_moments.prepare(X, 100)
    exact = _kernels._ar1_exact(Ys, X, 100)
    fast = _ar1_moments.ar1_fit_moments(Ys, design)
    assert not fast.redo.any() and np.array_equal(fast.label, exact[2])
    rel = float(np.abs(fast.beta - exact[0]).max() / np.abs(exact[0]).max())
    assert rel < 1e-12, rel
    times = {"exact": [], "moments": [], "fit_block": []}
    for _ in range(repeat):  # interleaved, so both see the same machine
        times["exact"] += _timed(lambda: _kernels._ar1_exact(Ys, X, 100), 1)
        times["moments"] += _timed(lambda: _ar1_moments.ar1_fit_moments(Ys, design), 1)
        times["fit_block"] += _timed(lambda: _kernels.fit_block(Y, X), 1)
    return {"shape": [n, v], "beta_max_rel_diff": rel, **{k: statistics.median(t) for k, t in times.items()}}


def smoothing_pair(repeat: int, volumes: int = 12) -> dict:
    from daskglm.kernels import smoothing as _smoothing
    from daskglm.kernels import volume as _volume

    rng = np.random.default_rng(1)
    shape = (91, 109, 91)
    grid = np.indices(shape).astype(float)
    centre = np.array(shape)[:, None, None, None] / 2
    mask = (((grid - centre) / (np.array([38, 48, 36])[:, None, None, None])) ** 2).sum(0) < 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    sigma = _volume.fwhm_to_sigma(5.0, affine)
    crop = _volume.smoothing_crop(mask, sigma)
    plan = _volume.mask_plan(crop, sigma)
    data = np.asfortranarray(rng.integers(500, 1500, size=(*shape, volumes)).astype(np.int16))
    if not _smoothing.AVAILABLE:
        return {"skipped": "numba is not installed"}
    a = _volume.smooth_and_mask(data, crop, sigma, plan=plan, compiled=False)
    b = _volume.smooth_and_mask(data, crop, sigma, plan=plan, compiled=True)
    assert np.array_equal(a, b)
    times = {"scipy": [], "compiled": []}
    for _ in range(repeat):
        times["scipy"] += _timed(lambda: _volume.smooth_and_mask(data, crop, sigma, plan=plan, compiled=False), 1)
        times["compiled"] += _timed(lambda: _volume.smooth_and_mask(data, crop, sigma, plan=plan, compiled=True), 1)
    per_volume = {k: statistics.median(t) / volumes for k, t in times.items()}
    return {"mask_voxels": int(mask.sum()), "crop": list(crop.mask.shape), "identical": True,
            **{f"{k}_s_per_volume": v for k, v in per_volume.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    fit = fit_pair(args.repeat)
    print(f"AR(1) fit of a {fit['shape'][0]} x {fit['shape'][1]} column (median of {args.repeat}): "
          f"exact path {fit['exact'] * 1e3:.1f} ms, moments {fit['moments'] * 1e3:.1f} ms "
          f"({fit['exact'] / fit['moments']:.1f}x); fit_block (scaling included) {fit['fit_block'] * 1e3:.1f} ms; "
          f"max |d beta| / max |beta| = {fit['beta_max_rel_diff']:.1e}, same labels")
    smooth = smoothing_pair(args.repeat)
    if "skipped" in smooth:
        print(f"smoothing: {smooth['skipped']}")
    else:
        print(f"smoothing + masking, HCP-sized volume (crop {smooth['crop']}, {smooth['mask_voxels']} mask voxels): "
              f"scipy {smooth['scipy_s_per_volume'] * 1e3:.1f} ms, "
              f"compiled {smooth['compiled_s_per_volume'] * 1e3:.1f} ms per volume "
              f"({smooth['scipy_s_per_volume'] / smooth['compiled_s_per_volume']:.1f}x), bit-identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
