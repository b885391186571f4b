"""Benchmark: calibration and sensitivity of first-level noise models on simulated null data.

On simulated data with no effect anywhere, the false-positive rate (FPR) of the
one-sided test of contrast ``"task"`` (z > norm.isf(p)) at p < 0.001 and
p < 0.01, as a ratio to nominal (rate / p), for

- ``ols``, ``ar1``, ``ar2`` (any ``arN``): nilearn 0.14's ``FirstLevelModel``;
- ``arma11``: ``daskglm.FirstLevelModel(noise_model="arma11")``;
  ``daskglm-<noise>`` (e.g. ``daskglm-ar1``): daskglm with that noise model
  (daskglm's ``ar1`` should match nilearn's: a check of this script);
- ``gls``: the oracle, generalised least squares with each voxel's TRUE noise
  covariance (Toeplitz of the exact autocovariance, Cholesky whitening, OLS on
  the whitened data, Student t with n - rank(X) dof).

Then the sensitivity: the same null noise (same seeds) plus a task effect in
every voxel, the true-positive rate (TPR) at p < 0.001. The effect of a voxel is
the oracle's critical t (p = 0.001) times the oracle's true standard error of
the task beta there, so that the oracle detects each voxel with probability
~50% (the exact figure, from the noncentral t, is printed). All models see the
same images.

Data, all simulated here with numpy (seeded): a volume of ``--shape`` voxels
(default 30 x 30 x 24, a mask of ones given to every model as ``mask_img``),
``--n-scans`` scans (300) at TR 1 s, a baseline of 100 plus noise of variance 1
(every model at its default ``signal_scaling=0``, mean scaling), independent
across voxels. Every model is ``FirstLevelModel(t_r=1.0, mask_img=mask,
noise_model=..., hrf_model="glover", drift_model="cosine", high_pass=0.01,
smoothing_fwhm=None, signal_scaling=0, minimize_memory=True)`` (other
parameters at each library's default: nilearn's ``n_jobs=1``, daskglm's
embedded cluster), ``.fit(img, events=events)``, then
``.compute_contrast("task", output_type="z_score")``. The oracle uses nilearn's
``make_first_level_design_matrix`` on the frame times FirstLevelModel uses
(checked equal to a fitted nilearn model's design matrix).

Designs (one condition ``"task"``): ``block``, on/off alternating blocks of
uniform random length 20-60 s starting with rest (``--n-block``, default 4);
``event``, 1 s events at onset-to-onset intervals uniform in 2-8 s
(``--n-event``, default 3). Each design has its own seed.

Noise generators (parameters ramp along x and y, quantised to at most 10 values
per axis, so that the oracle whitens voxels sharing parameters together):

- ``ar1white``: AR(1) plus white noise, AR coefficient 0.3-0.9 along x, white
  share of the variance 0.3-0.8 along y, the AR part started from its
  stationary distribution; autocovariance (1 - w) phi^h for h > 0.
- ``ar2``: stationary AR(2), phi1 0.3-0.7 along x, phi2 0.1-0.25 along y, the
  first two samples from the stationary distribution; autocovariance from the
  Yule-Walker recursion.
- ``zarahn``: the "1/f plus white" spectrum of Zarahn, Aguirre & D'Esposito
  (1997, NeuroImage 5:179), S(f) = A / max(f, f0) + B with f0 = 1 / (n TR), the
  1/f share of the variance 0.2-0.8 ramping along x + y; white noise filtered
  in the frequency domain on a series 4 times as long, then cropped. That
  series is circulant, so its exact autocovariance is the inverse FFT of S.

Reported (markdown, to paste): per generator x design type (and pooled over
both), FPR / nominal at p < 0.001 and p < 0.01 with the count of voxels over
threshold and a Clopper-Pearson 95% interval of the ratio (voxels and designs
are independent draws), TPR at p < 0.001 per model with the oracle's alongside,
and the wall time of each model (fit + contrast, summed over fits; the oracle's
is its whitening and solves). daskglm's stores go to a temporary
``$DASKGLM_CACHE``, emptied after each fit (so every daskglm fit ingests) and
removed at the end.

    python benchmarks/calibration.py --json calibration.json
    python benchmarks/calibration.py --models ols,ar1,ar2,daskglm-ar1,gls
    python benchmarks/calibration.py --quick --models ols,ar1,daskglm-ar1,gls   # a smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, stats

T_R = 1.0
BASELINE = 100.0
ALPHAS = (0.001, 0.01)
#: The power analysis's threshold, and the oracle's power there by construction of the effect.
POWER_ALPHA = 0.001
DEFAULT_MODELS = "ols,ar1,ar2,arma11,gls"
#: Stable codes of generators and design kinds in the seeds: a subset selects the same data.
GENERATOR_CODES = {"ar1white": 1, "ar2": 2, "zarahn": 3}
KIND_CODES = {"block": 1, "event": 2}
#: Generator names as printed in the tables.
GENERATOR_TITLES = {"ar1white": "AR(1)+white", "ar2": "AR(2)", "zarahn": "1/f+white (Zarahn 1997)"}


# ---------------------------------------------------------------- noise generators


@dataclass
class Noise:
    """A noise generator's parameters over a volume.

    Attributes
    ----------
    groups : ndarray of int, shape (n_voxels,)
        The parameter set of each voxel (C order over the volume).
    params : list of dict
        The parameter sets, indexed by ``groups``.
    """

    groups: np.ndarray
    params: list[dict[str, float]]

    def per_voxel(self, name: str) -> np.ndarray:
        """Parameter ``name`` of every voxel."""
        return np.array([p[name] for p in self.params])[self.groups]


def _ramp(length: int, low: float, high: float, levels: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A linear ramp from ``low`` to ``high`` over ``length`` positions, quantised.

    Returns
    -------
    level : ndarray of int, shape (length,)
        The level of each position, 0 .. ``levels`` - 1 (fewer when ``length`` is smaller).
    values : ndarray, shape (n_levels,)
        The value of each level.
    """
    n_levels = max(1, min(levels, length))
    level = (np.arange(length) * n_levels) // length
    values = np.linspace(low, high, n_levels) if n_levels > 1 else np.array([(low + high) / 2])
    return level, values


def _grid(shape: tuple[int, int, int], x_range: tuple[float, float], y_range: tuple[float, float],
          names: tuple[str, str]) -> Noise:
    """Two parameters, one ramping along x, the other along y (constant along z)."""
    lx, vx = _ramp(shape[0], *x_range)
    ly, vy = _ramp(shape[1], *y_range)
    ix, iy, _ = np.meshgrid(lx, ly, np.arange(shape[2]), indexing="ij")
    groups = (ix * len(vy) + iy).ravel()
    params = [{names[0]: float(a), names[1]: float(b)} for a in vx for b in vy]
    return Noise(groups, params)


def ar1white_params(shape: tuple[int, int, int]) -> Noise:
    """AR(1) + white: ``phi`` 0.3-0.9 along x, white share ``w`` of the variance 0.3-0.8 along y."""
    return _grid(shape, (0.3, 0.9), (0.3, 0.8), ("phi", "w"))


def ar1white_autocov(p: dict[str, float], n: int) -> np.ndarray:
    """Autocovariance at lags 0 .. n-1 of AR(1) (variance 1 - w) plus white noise (variance w)."""
    gamma = (1 - p["w"]) * p["phi"] ** np.arange(n)
    gamma[0] = 1.0
    return gamma


def ar1white_simulate(noise: Noise, n: int, rng: np.random.Generator) -> np.ndarray:
    """AR(1) + white noise of variance 1, shape (n, n_voxels), the AR part started stationary."""
    phi, w = noise.per_voxel("phi"), noise.per_voxel("w")
    innovations = rng.standard_normal((n, phi.size))
    white = rng.standard_normal((n, phi.size))
    ar = np.empty((n, phi.size))
    ar[0] = np.sqrt(1 - w) * innovations[0]
    scale = np.sqrt((1 - w) * (1 - phi**2))
    for t in range(1, n):
        ar[t] = phi * ar[t - 1] + scale * innovations[t]
    return ar + np.sqrt(w) * white


def ar2_params(shape: tuple[int, int, int]) -> Noise:
    """AR(2): ``phi1`` 0.3-0.7 along x, ``phi2`` 0.1-0.25 along y (all stationary: checked)."""
    noise = _grid(shape, (0.3, 0.7), (0.1, 0.25), ("phi1", "phi2"))
    for p in noise.params:
        roots = np.roots([-p["phi2"], -p["phi1"], 1.0])  # of 1 - phi1 z - phi2 z^2
        if not np.all(np.abs(roots) > 1):
            raise ValueError(f"AR(2) parameters {p} are not stationary")
    return noise


def _ar2_rho(phi1: np.ndarray | float, phi2: np.ndarray | float) -> tuple[Any, Any, Any]:
    """Lag-1 and lag-2 autocorrelations of a stationary AR(2), and its innovation variance for variance 1."""
    rho1 = phi1 / (1 - phi2)
    rho2 = phi1 * rho1 + phi2
    return rho1, rho2, 1 - phi1 * rho1 - phi2 * rho2


def ar2_autocov(p: dict[str, float], n: int) -> np.ndarray:
    """Autocovariance at lags 0 .. n-1 of the AR(2) of variance 1 (Yule-Walker recursion)."""
    rho1, _, _ = _ar2_rho(p["phi1"], p["phi2"])
    gamma = np.empty(n)
    gamma[0] = 1.0
    if n > 1:
        gamma[1] = rho1
    for h in range(2, n):
        gamma[h] = p["phi1"] * gamma[h - 1] + p["phi2"] * gamma[h - 2]
    return gamma


def ar2_simulate(noise: Noise, n: int, rng: np.random.Generator) -> np.ndarray:
    """AR(2) noise of variance 1, shape (n, n_voxels), its first two samples drawn stationary."""
    phi1, phi2 = noise.per_voxel("phi1"), noise.per_voxel("phi2")
    rho1, _, sigma2 = _ar2_rho(phi1, phi2)
    e = rng.standard_normal((n, phi1.size))
    x = np.empty((n, phi1.size))
    x[0] = e[0]
    x[1] = rho1 * x[0] + np.sqrt(1 - rho1**2) * e[1]
    sigma = np.sqrt(sigma2)
    for t in range(2, n):
        x[t] = phi1 * x[t - 1] + phi2 * x[t - 2] + sigma * e[t]
    return x


#: The zarahn series is simulated this many times longer than the analysed one, then cropped.
ZARAHN_PAD = 4


def zarahn_params(shape: tuple[int, int, int]) -> Noise:
    """1/f + white: the 1/f share ``s`` of the variance 0.2-0.8, ramping along x + y."""
    lx, _ = _ramp(shape[0], 0, 1)
    ly, _ = _ramp(shape[1], 0, 1)
    level = (lx[:, None, None] + ly[None, :, None] + np.zeros(shape[2], dtype=int)).ravel()
    top = max(int(level.max()), 1)
    return Noise(level, [{"s": 0.2 + 0.6 * k / top} for k in range(top + 1)])


def _zarahn_spectrum(p: dict[str, float], n: int) -> np.ndarray:
    """S(f) = A / max(f, f0) + B on the rfft grid of ``ZARAHN_PAD * n`` scans, scaled to variance 1."""
    size = ZARAHN_PAD * n
    f0 = 1.0 / (n * T_R)
    inverse = 1.0 / np.maximum(np.abs(np.fft.fftfreq(size, T_R)), f0)
    a = p["s"] / inverse.mean()  # the variance of a circulant process is the mean of its spectrum
    return a / np.maximum(np.fft.rfftfreq(size, T_R), f0) + (1 - p["s"])


def zarahn_autocov(p: dict[str, float], n: int) -> np.ndarray:
    """Exact autocovariance at lags 0 .. n-1 of the cropped circulant series: the inverse FFT of S."""
    return np.fft.irfft(_zarahn_spectrum(p, n), n=ZARAHN_PAD * n)[:n]


def zarahn_simulate(noise: Noise, n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f + white noise of variance 1, shape (n, n_voxels): filtered white noise, cropped."""
    white = rng.standard_normal((ZARAHN_PAD * n, noise.groups.size))
    out = np.empty((n, noise.groups.size))
    for g, p in enumerate(noise.params):
        idx = np.flatnonzero(noise.groups == g)
        spectrum = np.fft.rfft(white[:, idx], axis=0) * np.sqrt(_zarahn_spectrum(p, n))[:, None]
        out[:, idx] = np.fft.irfft(spectrum, n=ZARAHN_PAD * n, axis=0)[:n]
    return out


@dataclass
class Generator:
    """A noise generator: its parameters over a volume, simulation and exact autocovariance."""

    params: Callable[[tuple[int, int, int]], Noise]
    simulate: Callable[[Noise, int, np.random.Generator], np.ndarray]
    autocov: Callable[[dict[str, float], int], np.ndarray]


GENERATORS: dict[str, Generator] = {
    "ar1white": Generator(ar1white_params, ar1white_simulate, ar1white_autocov),
    "ar2": Generator(ar2_params, ar2_simulate, ar2_autocov),
    "zarahn": Generator(zarahn_params, zarahn_simulate, zarahn_autocov),
}


# ---------------------------------------------------------------- designs


def block_events(rng: np.random.Generator, duration: float) -> pd.DataFrame:
    """Alternating rest / task blocks of uniform random length 20-60 s, starting with rest."""
    rows, t, on = [], 0.0, False
    while t < duration:
        length = rng.uniform(20, 60)
        if on:
            rows.append((t, min(length, duration - t)))
        t, on = t + length, not on
    return pd.DataFrame({"onset": [r[0] for r in rows], "duration": [r[1] for r in rows], "trial_type": "task"})


def event_events(rng: np.random.Generator, duration: float) -> pd.DataFrame:
    """1 s events at onset-to-onset intervals uniform in 2-8 s."""
    onsets, t = [], rng.uniform(2, 8)
    while t < duration - 1:
        onsets.append(t)
        t += rng.uniform(2, 8)
    return pd.DataFrame({"onset": onsets, "duration": 1.0, "trial_type": "task"})


def design_matrix(events: pd.DataFrame, n_scans: int) -> pd.DataFrame:
    """nilearn's design matrix of ``events`` as FirstLevelModel makes it (glover, cosine drift at 0.01 Hz)."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    frame_times = np.linspace(0, (n_scans - 1) * T_R, n_scans)  # FirstLevelModel's, slice_time_ref=0
    return make_first_level_design_matrix(frame_times, events, hrf_model="glover", drift_model="cosine",
                                          high_pass=0.01)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


# ---------------------------------------------------------------- the oracle


@dataclass
class Oracle:
    """GLS with each voxel group's true covariance, prepared for one design and one generator's parameters.

    Attributes
    ----------
    whiteners : list of ndarray
        Per parameter group, the lower Cholesky factor L of its covariance V = L L'.
    q, r : list of ndarray
        Per group, the QR decomposition of L^-1 X.
    se : ndarray, shape (n_voxels,)
        The true standard error of the task beta in every voxel (noise of variance 1).
    dof : int
        n - rank(X).
    seconds : float
        Time spent preparing.
    """

    noise: Noise
    contrast: np.ndarray
    whiteners: list[np.ndarray] = field(default_factory=list)
    q: list[np.ndarray] = field(default_factory=list)
    r: list[np.ndarray] = field(default_factory=list)
    se: np.ndarray | None = None
    dof: int = 0
    seconds: float = 0.0


def prepare_oracle(X: np.ndarray, contrast: np.ndarray, noise: Noise, autocov: Callable) -> Oracle:
    """Whiten the design with every group's true covariance (Toeplitz of the exact autocovariance)."""
    start = time.perf_counter()
    n = X.shape[0]
    oracle = Oracle(noise, contrast, dof=n - int(np.linalg.matrix_rank(X)))
    se = np.empty(noise.groups.size)
    for g, p in enumerate(noise.params):
        L = linalg.cholesky(linalg.toeplitz(autocov(p, n)), lower=True)
        q, r = linalg.qr(linalg.solve_triangular(L, X, lower=True), mode="economic")
        oracle.whiteners.append(L)
        oracle.q.append(q)
        oracle.r.append(r)
        se[noise.groups == g] = np.linalg.norm(linalg.solve_triangular(r, contrast, trans="T"))
    oracle.se = se
    oracle.seconds = time.perf_counter() - start
    return oracle


def oracle_t(oracle: Oracle, Y: np.ndarray) -> np.ndarray:
    """The GLS t statistic of the contrast in every voxel of ``Y`` (n_scans, n_voxels)."""
    t = np.empty(Y.shape[1])
    for g, (L, q, r) in enumerate(zip(oracle.whiteners, oracle.q, oracle.r)):
        idx = np.flatnonzero(oracle.noise.groups == g)
        yw = linalg.solve_triangular(L, Y[:, idx], lower=True)
        qty = q.T @ yw
        beta = linalg.solve_triangular(r, qty)
        rss = np.sum(yw**2, axis=0) - np.sum(qty**2, axis=0)  # |yw|^2 - |projection|^2
        s2 = np.maximum(rss, 0) / oracle.dof
        var = np.sum(linalg.solve_triangular(r, oracle.contrast, trans="T") ** 2)
        t[idx] = (oracle.contrast @ beta) / np.sqrt(s2 * var)
    return t


# ---------------------------------------------------------------- models


def model_kind(name: str) -> tuple[str, str]:
    """(library, noise_model) of a ``--models`` name: nilearn, daskglm or the oracle ``gls``."""
    if name == "gls":
        return "oracle", ""
    if name == "arma11":
        return "daskglm", "arma11"
    if name.startswith("daskglm-") and len(name) > len("daskglm-"):
        return "daskglm", name[len("daskglm-"):]
    if name == "ols" or re.fullmatch(r"ar[1-9]\d*", name):
        return "nilearn", name
    raise ValueError(f"unknown model {name!r}: ols, arN (nilearn), arma11, daskglm-<noise model>, gls")


def fit_z(name: str, img: Any, events: pd.DataFrame, mask: Any, cache: Path) -> tuple[np.ndarray, float, Any]:
    """Fit model ``name`` (nilearn or daskglm) and return the task z map's values, the seconds and the model."""
    library, noise_model = model_kind(name)
    if library == "daskglm":
        import daskglm

        cls = daskglm.FirstLevelModel
    else:
        from nilearn.glm.first_level import FirstLevelModel as cls
    start = time.perf_counter()
    model = cls(t_r=T_R, mask_img=mask, noise_model=noise_model, hrf_model="glover", drift_model="cosine",
                high_pass=0.01, smoothing_fwhm=None, signal_scaling=0, minimize_memory=True)
    model.fit(img, events=events)
    z = np.asarray(model.compute_contrast("task", output_type="z_score").get_fdata(), dtype=np.float64).ravel()
    seconds = time.perf_counter() - start
    if library == "daskglm":  # every daskglm fit ingests its image: no store reused by the next model
        for child in cache.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
    return z, seconds, model


def probe(name: str, n_scans: int, cache: Path) -> str | None:
    """Fit model ``name`` on a 2 x 2 x 2 volume of white noise: None, or the ValueError it raised."""
    import nibabel as nib

    data = BASELINE + _rng(0).standard_normal((2, 2, 2, n_scans))
    mask = nib.Nifti1Image(np.ones((2, 2, 2), dtype=np.int8), np.eye(4))
    try:
        fit_z(name, nib.Nifti1Image(data.astype(np.float32), np.eye(4)), block_events(_rng(0), n_scans * T_R),
              mask, cache)
    except ValueError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace, cache: Path) -> dict:
    """Simulate every generator x design, fit every model on its null and effect images, count detections."""
    import nibabel as nib

    shape, n = args.shape, args.n_scans
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    mask = nib.Nifti1Image(np.ones(shape, dtype=np.int8), affine)
    thresholds = {a: stats.norm.isf(a) for a in ALPHAS}
    designs = [(kind, d) for kind in args.designs for d in range(args.n_block if kind == "block" else args.n_event)]
    seconds = {m: 0.0 for m in args.models}
    fits = {m: 0 for m in args.models}
    checks: list[dict] = []
    records = []
    for gen_name in args.generators:
        gen = GENERATORS[gen_name]
        noise = gen.params(shape)
        for kind, d in designs:
            events = (block_events if kind == "block" else event_events)(
                _rng(args.seed, 1, KIND_CODES[kind], d), n * T_R)
            frame = design_matrix(events, n)
            X = frame.to_numpy(dtype=np.float64)
            contrast = (frame.columns == "task").astype(np.float64)
            oracle = prepare_oracle(X, contrast, noise, gen.autocov)
            if "gls" in seconds:
                seconds["gls"] += oracle.seconds
            null = gen.simulate(noise, n, _rng(args.seed, 2, GENERATOR_CODES[gen_name], KIND_CODES[kind], d))
            effect = stats.t.isf(POWER_ALPHA, oracle.dof) * oracle.se  # oracle power ~50% in every voxel
            data = {"null": (BASELINE + null).astype(np.float32),
                    "effect": (BASELINE + null + X[:, [list(frame.columns).index("task")]] * effect).astype(
                        np.float32)}
            record: dict[str, Any] = {"generator": gen_name, "kind": kind, "design": d, "n_voxels": int(null.shape[1]),
                                      "n_events": len(events), "dof": oracle.dof, "models": {}}
            for which, Y in data.items():
                img = nib.Nifti1Image(np.ascontiguousarray(Y.T).reshape(*shape, n), affine)
                zs: dict[str, np.ndarray] = {}
                for name in args.models:
                    if name == "gls":
                        start = time.perf_counter()
                        t = oracle_t(oracle, Y.astype(np.float64))
                        seconds[name] += time.perf_counter() - start
                        over = {a: int(np.sum(t > stats.t.isf(a, oracle.dof))) for a in ALPHAS}
                    else:
                        z, took, model = fit_z(name, img, events, mask, cache)
                        seconds[name] += took
                        zs[name] = z
                        over = {a: int(np.sum(z > thresholds[a])) for a in ALPHAS}
                        if model_kind(name)[0] == "nilearn" and not record.get("design_checked"):
                            fitted = model.design_matrices_[0]
                            if list(fitted.columns) != list(frame.columns) or not np.allclose(
                                    fitted.to_numpy(dtype=np.float64), X, rtol=0, atol=1e-10):
                                raise AssertionError(f"the oracle's design differs from nilearn's ({kind} {d})")
                            record["design_checked"] = True
                    fits[name] += 1
                    record["models"].setdefault(name, {})[which] = {str(a): over[a] for a in ALPHAS}
                for name, z in zs.items():  # daskglm-X against nilearn's X, when both ran
                    library, noise_model = model_kind(name)
                    if library == "daskglm" and noise_model in zs and model_kind(noise_model)[0] == "nilearn":
                        dz = np.abs(z - zs[noise_model])
                        checks.append({"generator": gen_name, "kind": kind, "design": d, "data": which,
                                       "models": [name, noise_model], "max_abs_dz": float(np.nanmax(dz)),
                                       "n_dz_over_0.01": int(np.sum(dz > 0.01))})
            records.append(record)
            print(f"  {gen_name} {kind} {d}: {len(events)} events; "
                  + ", ".join(f"{m} {record['models'][m]['null'][str(ALPHAS[0])]}/"
                              f"{record['models'][m]['effect'][str(POWER_ALPHA)]}" for m in args.models)
                  + f" (null / effect voxels at p<{ALPHAS[0]})", file=sys.stderr, flush=True)
    oracle_power = float(stats.nct.sf(stats.t.isf(POWER_ALPHA, records[0]["dof"]), records[0]["dof"],
                                      stats.t.isf(POWER_ALPHA, records[0]["dof"]))) if records else float("nan")
    return {"records": records, "seconds": seconds, "fits": fits, "checks": checks, "oracle_power": oracle_power}


def _ratio_interval(k: int, total: int, alpha: float) -> tuple[float, float, float]:
    """Rate ratio k / total / alpha and its Clopper-Pearson 95% interval."""
    low = stats.beta.ppf(0.025, k, total - k + 1) if k > 0 else 0.0
    high = stats.beta.ppf(0.975, k + 1, total - k) if k < total else 1.0
    return k / total / alpha, low / alpha, high / alpha


def summarise(result: dict, models: list[str]) -> list[dict]:
    """Counts pooled per generator x design kind, and per generator over all designs."""
    rows = []
    records = result["records"]
    generators = list(dict.fromkeys(r["generator"] for r in records))
    for gen in generators:
        kinds = list(dict.fromkeys(r["kind"] for r in records if r["generator"] == gen))
        for kind in kinds + (["all"] if len(kinds) > 1 else []):
            chosen = [r for r in records if r["generator"] == gen and kind in ("all", r["kind"])]
            total = sum(r["n_voxels"] for r in chosen)
            row: dict[str, Any] = {"generator": gen, "kind": kind, "n_designs": len(chosen), "n_voxels": total,
                                   "models": {}}
            for m in models:
                out: dict[str, Any] = {}
                for a in ALPHAS:
                    k = sum(r["models"][m]["null"][str(a)] for r in chosen)
                    ratio, low, high = _ratio_interval(k, total, a)
                    out[f"fpr_{a}"] = {"count": k, "ratio": ratio, "ci95": [low, high]}
                tp = sum(r["models"][m]["effect"][str(POWER_ALPHA)] for r in chosen)
                out[f"tpr_{POWER_ALPHA}"] = {"count": tp, "rate": tp / total}
                row["models"][m] = out
            rows.append(row)
    return rows


def _table(rows: list[dict], models: list[str], cell: Callable[[dict], str], title: str) -> list[str]:
    """A markdown table, a row per summary row, a column per model (``cell`` of its summary)."""
    lines = [f"**{title}**", "", "| noise | designs | voxels | " + " | ".join(models) + " |",
             "|---|---|--:|" + "--:|" * len(models)]
    for row in rows:
        label = f"{row['kind']} ({row['n_designs']})"
        lines.append(f"| {GENERATOR_TITLES[row['generator']]} | {label} | {row['n_voxels']:,} | "
                     + " | ".join(cell(row["models"][m]) for m in models) + " |")
    return lines + [""]


def report(rows: list[dict], result: dict, models: list[str]) -> str:
    """The markdown tables: FPR / nominal at each alpha, TPR at POWER_ALPHA, wall times."""
    names = {m: (f"{m} (nilearn)" if model_kind(m)[0] == "nilearn" else m if m.startswith("daskglm")
                 else f"{m} (daskglm)" if model_kind(m)[0] == "daskglm" else "GLS oracle") for m in models}
    lines: list[str] = []
    for a in ALPHAS:
        def fpr(cell: dict, a: float = a) -> str:
            f = cell[f"fpr_{a}"]
            return f"{f['ratio']:.2f} [{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}] ({f['count']})"

        lines += _table(rows, models, fpr,
                        f"False positives at p < {a}, rate / nominal [95% CI] (count), null data")
    lines += _table(rows, models, lambda c: f"{100 * c[f'tpr_{POWER_ALPHA}']['rate']:.1f}%",
                    f"True-positive rate at p < {POWER_ALPHA}, effect for ~{100 * result['oracle_power']:.1f}% "
                    "oracle power in every voxel")
    lines += ["**Wall time** (fit + z map, summed over fits)", "", "| model | fits | total s | s per fit |",
              "|---|--:|--:|--:|"]
    for m in models:
        fits = result["fits"][m]
        total = result["seconds"][m]
        lines.append(f"| {names[m]} | {fits} | {total:.1f} | {total / max(fits, 1):.2f} |")
    # columns are the --models names; say which library each is
    lines += ["", "Columns: " + ", ".join(f"`{m}` = {names[m]}" for m in models) + "."]
    return "\n".join(lines)


def _shape(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"three positive integers, e.g. 30,30,24; got {text!r}")
    return values  # type: ignore[return-value]


def _names(choices: tuple[str, ...] | None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if choices is not None and v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"comma-separated subset of {','.join(choices or ())}; got {text!r}")
        return list(dict.fromkeys(values))
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--generators", type=_names(tuple(GENERATORS)), default=list(GENERATORS),
                        help="noise generators (default: all, %(default)s)")
    parser.add_argument("--designs", type=_names(tuple(KIND_CODES)), default=list(KIND_CODES),
                        help="design kinds (default: block,event)")
    parser.add_argument("--models", type=_names(None), default=DEFAULT_MODELS.split(","),
                        help=f"ols, arN (nilearn), arma11, daskglm-<noise> (daskglm), gls (oracle); "
                             f"default {DEFAULT_MODELS}")
    parser.add_argument("--shape", type=_shape, default=None, help="volume, default 30,30,24 (--quick 12,12,10)")
    parser.add_argument("--n-scans", type=int, default=300, help="scans per run (default 300, TR 1 s)")
    parser.add_argument("--n-block", type=int, default=None, help="block designs (default 4, --quick 2)")
    parser.add_argument("--n-event", type=int, default=None, help="event-related designs (default 3, --quick 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of designs and noise (default 0)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 12x12x10 voxels, 2 block + 1 event design")
    parser.add_argument("--json", default=None, metavar="PATH", help="write all results as JSON to PATH")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.shape = args.shape or ((12, 12, 10) if args.quick else (30, 30, 24))
    args.n_block = args.n_block if args.n_block is not None else (2 if args.quick else 4)
    args.n_event = args.n_event if args.n_event is not None else (1 if args.quick else 3)
    try:
        for m in args.models:
            model_kind(m)
    except ValueError as exc:
        parser.error(str(exc))
    if args.n_scans < 20 or args.n_block < 0 or args.n_event < 0:
        parser.error("--n-scans must be at least 20, --n-block and --n-event non-negative")

    cache = Path(tempfile.mkdtemp(prefix="daskglm-calibration-"))
    os.environ["DASKGLM_CACHE"] = str(cache)  # before daskglm is imported (in fit_z)
    warnings.filterwarnings("ignore", message=".*Generation of a mask has been requested.*")
    warnings.filterwarnings("ignore", message=".*Sending large graph.*")

    from compare import _print_machine  # benchmarks/ is sys.path[0] when this runs as a script

    machine = _print_machine()
    import nilearn

    versions = {"nilearn": nilearn.__version__, "numpy": np.__version__}
    if any(model_kind(m)[0] == "daskglm" for m in args.models):
        import daskglm

        versions["daskglm"] = getattr(daskglm, "__version__", "?")
    print(f"versions: {versions}; shape {args.shape}, {args.n_scans} scans, seed {args.seed}; "
          f"designs {args.n_block} block + {args.n_event} event", flush=True)
    start = time.perf_counter()
    try:
        for name in args.models:
            if model_kind(name)[0] == "daskglm":
                refused = probe(name, args.n_scans, cache)
                if refused:
                    print(f"error: {name}: daskglm refuses noise_model={model_kind(name)[1]!r} ({refused}); "
                          "drop it from --models", file=sys.stderr)
                    return 2
        result = run(args, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    elapsed = time.perf_counter() - start
    rows = summarise(result, args.models)
    print()
    print(report(rows, result, args.models))
    for name in dict.fromkeys(tuple(c["models"]) for c in result["checks"]):
        worst = max(c["max_abs_dz"] for c in result["checks"] if tuple(c["models"]) == name)
        differ = sum(c["n_dz_over_0.01"] for c in result["checks"] if tuple(c["models"]) == name)
        print(f"\ncheck {name[0]} against {name[1]}: max |dz| {worst:.2e}, {differ} voxels with |dz| > 0.01 "
              "(over all maps)")
    print(f"\ntotal wall time {elapsed:.0f} s")
    if args.json:
        record = {"command": " ".join(["python", "benchmarks/calibration.py", *argv]), "machine": machine,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": versions,
                  "options": {k: v for k, v in vars(args).items()}, "wall_seconds": elapsed,
                  "summary": rows, **result}
        Path(args.json).write_text(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
