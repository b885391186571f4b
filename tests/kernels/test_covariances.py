"""Tests of daskglm.kernels.covariances: the per-label covariances of beta against
one pseudo-inverse per label. Their agreement with nilearn's
``normalized_cov_beta`` (and of ``merge_ar_clusters`` with nilearn's AR(p>1)
labels) is tested with the fits in tests/kernels/test_kernels.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from daskglm.kernels import ar1_moments as M
from daskglm.kernels import covariances as C


def test_label_covariances_equal_one_label_at_a_time():
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.standard_normal((50, 3)), np.ones(50)])
    table = np.array([[-0.3], [0.0], [0.42]])
    got = C.label_covariances(X, table)
    for row, coeffs in enumerate(table):
        np.testing.assert_allclose(got[row], C.label_covariance(X, coeffs).cov, rtol=1e-12)
    np.testing.assert_allclose(C.label_covariances(X, np.zeros((1, 0)))[0], np.linalg.pinv(X) @ np.linalg.pinv(X).T,
                               rtol=1e-10, atol=1e-14)


def test_ar1_label_covariances_equal_the_svd_pseudo_inverses():
    """Oracle: pinv(WX) pinv(WX)' from one SVD per label (nilearn's definition) for every label,
    FIAC-like designs (whose labels next to rho = 1 take the SVD); a design the moments refuse
    gets the SVD everywhere."""
    rng = np.random.default_rng(3)
    for n, p, bins in ((191, 13, 100), (60, 4, 7), (1200, 13, 100)):
        t = np.arange(n)
        X = np.column_stack([np.cos(np.pi * (k + 1) * t / n) for k in range(p - 2)]
                            + [rng.normal(size=n) * 50.0, np.ones(n)])
        design = M.prepare(X, bins)
        assert design is not None and design.covariances is not None
        assert not design.covariances.flags.writeable
        assert (design.label_error <= M.MAX_COVARIANCE_ERROR).sum() > bins  # most labels: no SVD
        grid = (np.arange(-bins, bins + 1) / bins)[:, None]
        expected = C.label_covariances(X, grid)
        got = C.ar1_label_covariances(X, bins)
        scale = np.abs(expected).max(axis=(1, 2))[:, None, None]
        np.testing.assert_allclose(got / scale, expected / scale, rtol=0, atol=1e-11)
    X = np.column_stack([np.ones(50), np.arange(50.0), np.arange(50.0) + 1e-9 * np.sin(np.arange(50.0))])
    assert M.prepare(X, 10) is None
    np.testing.assert_array_equal(C.ar1_label_covariances(X, 10),
                                  C.label_covariances(X, (np.arange(-10, 11) / 10)[:, None]))


@pytest.mark.parametrize("n, p, bins", [(30, 4, 100), (8, 3, 100), (5, 7, 10), (2, 2, 100)])
def test_ar1_label_covariances_of_short_runs_cover_their_wider_grid(n, p, bins):
    """Runs of at most bins + 1 scans: one covariance per value of ar1_grid(bins, n) (labels beyond
    +-1), from the moment design where it applies, else SVDs; nilearn's normalized_cov_beta."""
    from nilearn.glm.regression import ARModel

    rng = np.random.default_rng(n)
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    grid = M.ar1_grid(bins, n)
    got = C.ar1_label_covariances(X, bins)
    assert got.shape == (grid.size, p, p) and grid.size == 2 * M.ar1_half_width(bins, n) + 1 > 2 * bins + 1
    expected = C.label_covariances(X, grid[:, None])
    scale = np.abs(expected).max(axis=(1, 2))[:, None, None]
    np.testing.assert_allclose(got / scale, expected / scale, rtol=0, atol=1e-11)
    for row in (0, grid.size // 3, grid.size - 1):
        ref = ARModel(X, grid[row]).normalized_cov_beta
        np.testing.assert_allclose(got[row], ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
