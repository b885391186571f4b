"""The contrast-matrix PNGs of :mod:`daskglm.bids.outputs`: nilearn's figure, drawn once per process for
what it shows (a batch's subjects share their design's columns and contrasts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from daskglm.bids import outputs


@pytest.fixture
def counted(monkeypatch):
    """nilearn's plot_contrast_matrix with a call count (the calls), and an empty figure cache."""
    import nilearn.plotting

    monkeypatch.setattr(outputs, "_CONTRAST_PNGS", type(outputs._CONTRAST_PNGS)(4 * 2**20, size_of=len))
    calls = []
    plot_contrast_matrix = nilearn.plotting.plot_contrast_matrix

    def plot(*args, **kwargs):
        calls.append(args)
        return plot_contrast_matrix(*args, **kwargs)

    monkeypatch.setattr(nilearn.plotting, "plot_contrast_matrix", plot)
    return calls


def _design(columns):
    return pd.DataFrame(np.random.default_rng(0).normal(size=(20, len(columns))), columns=columns)


def test_a_contrast_figure_is_drawn_once_for_what_it_shows(counted):
    calls = counted
    weights = np.array([1.0, -1.0, 0.0])
    first = outputs._contrast_png("a-b", weights, _design(["a", "b", "constant"]))
    # another subject's run: other values, the same columns and contrast -> the same figure, not drawn again
    again = outputs._contrast_png("a-b", weights.copy(), _design(["a", "b", "constant"]) * 3)
    assert again == first and len(calls) == 1
    assert first.startswith(b"\x89PNG")
    # what the figure shows differs (weights, name, columns): drawn anew, another image
    for name, w, columns in [("a-b", np.array([1.0, 0.0, -1.0]), ["a", "b", "constant"]),
                             ("b-a", weights, ["a", "b", "constant"]),
                             ("a-b", weights, ["a", "c", "constant"])]:
        assert outputs._contrast_png(name, w, _design(columns)) != first
    outputs._contrast_png("a-b", weights[None], _design(["a", "b", "constant"]))  # a (1, k) matrix: its own key
    assert len(calls) == 5


def test_a_cached_figure_is_the_figure_drawn_fresh(counted):
    """The bytes kept are those a new drawing gives (matplotlib's PNG has no timestamp)."""
    dm = _design(["a", "b", "constant"])
    cached = outputs._contrast_png("a", np.array([1.0, 0.0, 0.0]), dm)
    outputs._CONTRAST_PNGS.clear()
    assert outputs._contrast_png("a", np.array([1.0, 0.0, 0.0]), dm) == cached


@pytest.mark.parametrize("two_sided", [False, True])
def test_cluster_tables_of_a_cropped_map_are_nilearns(two_sided):
    """``_cropped`` gives nilearn's ``get_clusters_table`` the same table as the whole volume: clusters at the
    crop's edge, a constant cluster, negative ones, subpeaks (the oracle: nilearn on the uncropped image)."""
    import nibabel as nib
    from nilearn.reporting import get_clusters_table
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    z = gaussian_filter(rng.normal(size=(30, 34, 28)), 1.2) * 9
    z[:4], z[-3:], z[:, :5], z[..., -2:] = 0, 0, 0, 0  # a zero border, as outside a brain mask
    z[4:7, 10:13, 20:23] = 4.5  # constant, at the non-zero bounding box's edge (plane 4)
    affine = np.array([[-2.5, 0, 0, 80], [0, 2.5, 0, -110], [0, 0, 2.5, -70], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.where(np.abs(z) > 3.1, z, 0), affine)
    cropped = outputs._cropped(img)
    assert cropped.shape < img.shape  # the test crops something
    kwargs = dict(stat_threshold=3.1, cluster_threshold=0, min_distance=8.0, two_sided=two_sided)
    ours, theirs = get_clusters_table(cropped, **kwargs), get_clusters_table(img, **kwargs)
    assert len(theirs) > 10
    pd.testing.assert_frame_equal(ours.drop(columns=["X", "Y", "Z"]), theirs.drop(columns=["X", "Y", "Z"]))
    np.testing.assert_allclose(ours[["X", "Y", "Z"]].to_numpy(float), theirs[["X", "Y", "Z"]].to_numpy(float),
                               atol=1e-9)


def test_an_empty_map_is_not_cropped():
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((4, 5, 6)), np.eye(4))
    assert outputs._cropped(img) is img
