"""daskglm.kernels.packing: named row blocks of packed (rows, voxels) arrays."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskglm.kernels.packing import (
    ROW,
    RowLayout,
    contrast_rows,
    effect_rows,
    fit_rows,
    fixed_effects_rows,
    group_contrast,
    group_rows,
    pack_contrast,
)
from daskglm.kernels.stats import contrast_stats

#: A block's size: one row, a count of rows (0 included) or a nested layout.
_sizes = st.recursive(
    st.one_of(st.none(), st.integers(0, 5)),
    lambda inner: st.dictionaries(st.text("abcdef", min_size=1, max_size=3), inner, min_size=1, max_size=4)
    .map(lambda sizes: RowLayout.of(**sizes)),
    max_leaves=6,
)
_layouts = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), _sizes, min_size=1, max_size=6).map(
    lambda sizes: RowLayout.of(**sizes))


def _block(size, v, rng):
    if size is ROW:
        return rng.standard_normal(v)
    rows = size.rows if isinstance(size, RowLayout) else size
    return rng.standard_normal((rows, v))


@settings(max_examples=200, deadline=None)
@given(layout=_layouts, v=st.integers(0, 7), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(layout, v, seed):
    rng = np.random.default_rng(seed)
    blocks = {name: _block(size, v, rng) for name, size in zip(layout.names, layout.sizes)}
    packed = layout.pack(**blocks)
    assert packed.shape == (layout.rows, v) and packed.dtype == np.float64
    unpacked = layout.unpack(packed)
    assert list(unpacked) == list(layout.names)
    for name, values in unpacked.items():
        np.testing.assert_array_equal(values, blocks[name])
        assert values.shape == blocks[name].shape
        assert values.base is packed or values.size == 0  # views, not copies
    # the blocks tile the rows in order, without gaps or overlaps
    rows = np.zeros(layout.rows, int)
    for name in layout.names:
        where = layout.slice(name)
        rows[where] += 1
    assert (rows == 1).all()


@settings(max_examples=50, deadline=None)
@given(layout=_layouts, v=st.integers(1, 9), chunk=st.integers(1, 4))
def test_unpacking_a_dask_array_is_lazy_slicing(layout, v, chunk):
    rng = np.random.default_rng(0)
    values = layout.pack(**{name: _block(size, v, rng) for name, size in zip(layout.names, layout.sizes)})
    packed = da.from_array(values, chunks=(-1, chunk))
    lazy = layout.unpack(packed)
    for name, array in lazy.items():
        assert isinstance(array, da.Array)
        assert array.name == packed[layout.slice(name)].name  # plain indexing of packed: nothing else
        np.testing.assert_array_equal(array.compute(scheduler="sync"), values[layout.slice(name)])


def test_daskglm_layouts():
    assert fit_rows(3).names == ("beta", "sigma2", "label_index") and fit_rows(3).rows == 5
    assert fit_rows(3).slice("beta") == slice(0, 3) and fit_rows(3).slice("label_index") == 4
    assert effect_rows(2).rows == 3
    assert contrast_rows(2).names == ("effect", "variance", "stat", "p_value", "z_score")
    assert contrast_rows(2).rows == 6 and contrast_rows(2).names[:2] == effect_rows(2).names
    assert fixed_effects_rows(1).names == ("effect", "variance", "stat", "z_score") and fixed_effects_rows(1).rows == 4
    group = group_rows(4, [1, 3])
    assert group.names == ("theta", "dispersion", group_contrast(0), group_contrast(1))
    assert group.rows == 4 + 1 + 5 + 7
    assert group.slice(group_contrast(1)) == slice(10, 17)


@pytest.mark.parametrize("stat_type", ["t", "F"])
def test_pack_contrast(stat_type):
    rng = np.random.default_rng(1)
    q = 1 if stat_type == "t" else 3
    effect = rng.standard_normal(6) if q == 1 else rng.standard_normal((q, 6))
    res = contrast_stats(effect, rng.uniform(0.5, 2.0, 6), 20.0, stat_type)
    rows = contrast_rows(q).unpack(pack_contrast(res))
    np.testing.assert_array_equal(rows["effect"], np.atleast_2d(res.effect))
    for name in ("variance", "stat", "p_value", "z_score"):
        np.testing.assert_array_equal(rows[name], getattr(res, name))


def test_bad_layouts_and_blocks():
    with pytest.raises(ValueError, match="size"):
        RowLayout.of(a=-1)
    with pytest.raises(ValueError, match="size"):
        RowLayout.of(a=True)
    with pytest.raises(ValueError, match="distinct"):
        RowLayout(("a", "a"), (1, 1))
    layout = RowLayout.of(a=2, b=ROW)
    with pytest.raises(ValueError, match="pack needs the blocks"):
        layout.pack(a=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="block 'a' has shape"):
        layout.pack(a=np.zeros((3, 3)), b=np.zeros(3))
    with pytest.raises(ValueError, match="block 'b' has shape"):
        layout.pack(a=np.zeros((2, 3)), b=np.zeros(4))
    with pytest.raises(ValueError, match="has 4 rows"):
        layout.unpack(np.zeros((4, 3)))
    with pytest.raises(KeyError, match="no block 'c'"):
        layout.slice("c")
