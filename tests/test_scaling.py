"""Tests of daskglm._scaling against nilearn 0.14's ``mean_scaling`` (and, for the
float32 rounding, the fit of nilearn's ``run_glm`` on the scaled data) and its masker's
standardization, ``nilearn.signal.clean(..., detrend=False, standardize=...)``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from daskglm import _kernels as K
from daskglm import _scaling as Sc

nilearn = pytest.importorskip("nilearn")
from nilearn.glm.first_level import mean_scaling, run_glm
from nilearn.signal import clean
from test_kernels import assert_close, dataset  # the kernels' simulated blocks


def test_scale_signal_voxel_mean_matches_mean_scaling():
    Y, _ = dataset()
    ours, mean = Sc.scale_signal(Y, 0)
    ref, ref_mean = mean_scaling(Y, 0)
    assert ours.dtype == np.float64
    assert_close(ours, ref)
    assert_close(mean, ref_mean)


def test_scale_signal_grand_mean_from_block_parts():
    Y, _ = dataset()
    ref, ref_mean = mean_scaling(Y, (0, 1))
    parts = [Sc.grand_mean_parts(Y[:, s]) for s in (slice(0, 7), slice(7, 150), slice(150, None))]
    grand = sum(p[0] for p in parts) / sum(p[1] for p in parts)
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


# ----------------------------------------------------------------------------- standardize
def standardize_block(dtype, n: int = 120, v: int = 37, seed: int = 4) -> np.ndarray:
    """Voxels of various means and spreads, a constant one, an all-zero one and a zero-mean one."""
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((n, v)) * rng.uniform(0.5, 60, v) + rng.uniform(-50, 2000, v)
    Y[:, 3] = 431.5  # its sums are exact: centred to exactly 0
    Y[:, 4] = 0.0
    Y[:, 5] -= Y[:, 5].mean()
    Y[:, 5] -= Y[:, 5].mean()
    return Y.astype(dtype)


def nilearn_clean(Y: np.ndarray, standardize) -> tuple[np.ndarray, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = clean(Y, detrend=False, standardize=standardize)
    return out, [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("standardize", ["zscore_sample", "psc"])
def test_standardize_is_signal_clean_bit_for_bit(standardize, dtype):
    """The whole block, its rows streamed in any steps and any column subset (a voxel block of the
    run) give nilearn's values exactly, in nilearn's dtype, constant and zero-mean voxels included."""
    Y = standardize_block(dtype)
    ref, their_warnings = nilearn_clean(Y, standardize)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours, mean = Sc.scale_signal(Y, False, standardize=standardize)
    assert mean is None and ours.dtype == ref.dtype == dtype
    np.testing.assert_array_equal(ours, ref)
    psc_zero = [(UserWarning, msg) for cat, msg in their_warnings if "psc" in msg]
    assert [(w.category, str(w.message)) for w in caught] == psc_zero
    assert bool(psc_zero) == (standardize == "psc")  # the all-zero voxel's mean is 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        params = Sc.row_parameters(Y, False, None, standardize)
    for step in (1, 7, 64, 500):
        rows = np.empty(Y.shape)
        for start in range(0, Y.shape[0], step):
            Sc.scaled_rows(Y, params, start, min(start + step, Y.shape[0]), rows[start:start + step])
        np.testing.assert_array_equal(rows, ref.astype(np.float64))
    for cols in (np.arange(2, 9), np.array([5, 30]), np.arange(10, 37, 3), np.array([7])):  # any voxel block
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            part = Sc.scale_signal(np.ascontiguousarray(Y[:, cols]), False, standardize=standardize)[0]
        np.testing.assert_array_equal(part, ref[:, cols])
        sub = np.empty((Y.shape[0], cols.size))
        Sc.scaled_rows(Y[:, cols], Sc.select_columns(params, cols), 0, Y.shape[0], sub)
        np.testing.assert_array_equal(sub, ref[:, cols].astype(np.float64))
    if standardize == "zscore_sample":
        np.testing.assert_array_equal(ours[:, [3, 4]], 0.0)  # std below eps: floored at 1, centred to 0
        np.testing.assert_allclose(ours[:, 6:].std(axis=0, ddof=1), 1.0, rtol=1e-4)
    else:
        np.testing.assert_array_equal(ours[:, 4], 0.0)


def test_standardize_options_and_warnings_as_nilearn():
    """True is 'zscore_sample' and False None, each with nilearn's FutureWarning; 'zscore' is
    refused as nilearn 0.14 refuses it; one scan is left as is with nilearn's warning; a signal
    scaling besides is refused (nilearn's FirstLevelModel never combines them)."""
    Y = standardize_block(np.float32, n=30)
    for value, same_as in ((True, "zscore_sample"), (False, None)):
        ref, their_warnings = nilearn_clean(Y, value)
        with pytest.warns(FutureWarning) as caught:
            ours = Sc.scale_signal(Y, False, standardize=value)[0]
        assert [str(w.message) for w in caught] == [msg for cat, msg in their_warnings if cat is FutureWarning]
        np.testing.assert_array_equal(ours, ref)
        assert Sc.check_standardize(same_as) == same_as
    with pytest.raises(ValueError) as theirs:
        clean(Y, detrend=False, standardize="zscore")
    with pytest.raises(ValueError) as ours:
        Sc.scale_signal(Y, False, standardize="zscore")
    assert str(ours.value) == str(theirs.value)
    for value in ("zscore_sample", "psc"):
        ref, their_warnings = nilearn_clean(Y[:1], value)
        with pytest.warns(UserWarning) as caught:
            ours = Sc.scale_signal(Y[:1], False, standardize=value)[0]
        assert [str(w.message) for w in caught] == [msg for _, msg in their_warnings]
        np.testing.assert_array_equal(ours, ref)
        for mode in (0, (0, 1)):
            with pytest.raises(ValueError, match="needs signal_scaling=False"):
                Sc.scale_signal(Y, mode, standardize=value)
    assert Sc.row_parameters(Y, False, standardize=None) is None
    with pytest.warns(UserWarning, match="Mean values of 0"):  # the all-zero voxel
        np.testing.assert_array_equal(Sc.row_parameters(Y, 0), Sc.scaling_mean(Y, 0))
