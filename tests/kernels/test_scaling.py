"""Tests of daskglm.kernels.scaling against nilearn 0.14's ``mean_scaling`` (and, for the
float32 rounding, the fit of nilearn's ``run_glm`` on the scaled data)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, dataset  # the kernels' simulated blocks

from daskglm.kernels import regression as K
from daskglm.kernels import scaling as Sc

nilearn = pytest.importorskip("nilearn")
from nilearn.glm.first_level import mean_scaling, run_glm  # noqa: E402 - once nilearn is known installed


def test_scale_signal_voxel_mean_matches_mean_scaling():
    Y, _ = dataset()
    ours, mean = Sc.scale_signal(Y, 0)
    ref, ref_mean = mean_scaling(Y, 0)
    assert ours.dtype == np.float64
    assert_close(ours, ref)
    assert_close(mean, ref_mean)


def test_scale_signal_grand_mean_from_block_parts():
    import dask.array as da

    from daskglm.glm.fit import _grand_mean

    Y, _ = dataset()
    ref, ref_mean = mean_scaling(Y, (0, 1))
    grand = float(_grand_mean(da.from_array(Y, chunks=(17, 7))).compute())  # the fit's reduction over blocks
    blocks = [Sc.scale_signal(Y[:, s], (0, 1), grand)[0] for s in (slice(0, 100), slice(100, None))]
    assert_close(np.hstack(blocks), ref)
    assert_close(Sc.scale_signal(Y, (0, 1))[1], ref_mean)


def test_scale_signal_small_zero_negative_means_and_false():
    Y, _ = dataset()
    Y = Y[:, :6].copy()
    Y[:, 0] = 0.0
    Y[:, 1] -= Y[:, 1].mean()  # mean ~0, not exactly: no warning from this column
    Y[:, 2] = 0.5
    Y[:, 3] = -3.0
    with pytest.warns(UserWarning, match="Mean values of 0 observed"):
        ref, ref_mean = mean_scaling(Y, 0)
    with pytest.warns(UserWarning, match="Mean values of 0 observed"):
        ours, mean = Sc.scale_signal(Y, 0)
    assert_close(ours, ref)
    assert_close(mean, ref_mean)
    assert np.all(mean >= 1)
    unscaled, none = Sc.scale_signal(Y.astype(np.float32), False)
    assert none is None and unscaled.dtype == np.float64
    np.testing.assert_array_equal(unscaled, Y.astype(np.float32))
    with pytest.raises(ValueError, match="got 1"):
        Sc.scale_signal(Y, 1)


def test_scale_signal_float32_rounds_exactly_as_nilearn():
    """nilearn scales the masker's float32 output in float32: reproduce it bit for bit,
    block by block (a per-voxel mean does not depend on the other voxels)."""
    Y, X = dataset()
    Y32 = (Y + 1000).astype(np.float32)
    ref, _ = mean_scaling(Y32, 0)
    ours, _ = Sc.scale_signal(Y32, 0)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
    parts = [Sc.scale_signal(Y32[:, s], 0)[0] for s in (slice(0, 7), slice(7, 8), slice(8, None))]
    np.testing.assert_array_equal(np.hstack(parts), ref)
    # ...and the fit on it equals run_glm on nilearn's scaled data.
    _, results = run_glm(ref, X, "ols")
    fit = K.fit_block(Y32, X, "ols")
    assert_close(fit.beta, results[0.0].theta, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", [0, (0, 1), False])
def test_scaled_rows_are_the_rows_of_scale_signal_bit_for_bit(dtype, mode):
    """Rows scaled a few at a time (as the AR(1) moments stream them) equal the whole block's
    scaling cast to float64, for every mode and data type, whatever the split."""
    Y, _ = dataset()
    Y = (Y + 1000).astype(dtype)
    whole, _ = Sc.scale_signal(Y, mode)
    mean = Sc.scaling_mean(Y, mode)
    assert (mean is None) == (mode is False)
    out = np.full(Y.shape, np.nan)
    for start, stop in [(0, 1), (1, 8), (8, 9), (9, Y.shape[0])]:
        Sc.scaled_rows(Y, mean, start, stop, out[start:stop])
    np.testing.assert_array_equal(out, whole.astype(np.float64))


def test_scaling_mean_warns_and_floors_as_scale_signal():
    Y, _ = dataset()
    Y = Y[:, :4].copy()
    Y[:, 0] = 0.0
    Y[:, 1] = 0.25
    with pytest.warns(UserWarning, match="Mean values of 0 observed"):
        mean = Sc.scaling_mean(Y, 0)
    np.testing.assert_array_equal(mean[:2], [1.0, 1.0])
    with pytest.raises(ValueError, match="got 1"):
        Sc.scaling_mean(Y, 1)
