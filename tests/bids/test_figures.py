"""The contrast-matrix PNGs of :mod:`daskglm.bids.outputs`: nilearn's figure, drawn once per process for
what it shows (a batch's subjects share their design's columns and contrasts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from daskglm.bids import outputs


@pytest.fixture
def counted(monkeypatch):
    """nilearn's plot_contrast_matrix with a call count, and an empty figure cache."""
    from nilearn.plotting import plot_contrast_matrix

    monkeypatch.setattr(outputs, "_CONTRAST_PNGS", type(outputs._CONTRAST_PNGS)(4 * 2**20, size_of=len))
    calls = []

    def plot(*args, **kwargs):
        calls.append(args)
        return plot_contrast_matrix(*args, **kwargs)

    return plot, calls


def _design(columns):
    return pd.DataFrame(np.random.default_rng(0).normal(size=(20, len(columns))), columns=columns)


def test_a_contrast_figure_is_drawn_once_for_what_it_shows(counted):
    plot, calls = counted
    weights = np.array([1.0, -1.0, 0.0])
    first = outputs._contrast_png("a-b", weights, _design(["a", "b", "constant"]), plot)
    # another subject's run: other values, the same columns and contrast -> the same figure, not drawn again
    again = outputs._contrast_png("a-b", weights.copy(), _design(["a", "b", "constant"]) * 3, plot)
    assert again == first and len(calls) == 1
    assert first.startswith(b"\x89PNG")
    # what the figure shows differs (weights, name, columns): drawn anew, another image
    for name, w, columns in [("a-b", np.array([1.0, 0.0, -1.0]), ["a", "b", "constant"]),
                             ("b-a", weights, ["a", "b", "constant"]),
                             ("a-b", weights, ["a", "c", "constant"])]:
        assert outputs._contrast_png(name, w, _design(columns), plot) != first
    outputs._contrast_png("a-b", weights[None], _design(["a", "b", "constant"]), plot)  # a (1, k) matrix: its own key
    assert len(calls) == 5


def test_a_cached_figure_is_the_figure_drawn_fresh(counted):
    """The bytes kept are those a new drawing gives (matplotlib's PNG has no timestamp)."""
    plot, _ = counted
    dm = _design(["a", "b", "constant"])
    cached = outputs._contrast_png("a", np.array([1.0, 0.0, 0.0]), dm, plot)
    outputs._CONTRAST_PNGS.clear()
    assert outputs._contrast_png("a", np.array([1.0, 0.0, 0.0]), dm, plot) == cached
