"""Chunk planning: properties checked against brute force with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daskglm.runtime import plan as _plan


@given(length=st.integers(1, 5000), chunk=st.integers(1, 700))
def test_block_bounds_tile_the_range_exactly(length, chunk):
    bounds = _plan.block_bounds(length, chunk)
    covered = [t for start, stop in bounds for t in range(start, stop)]
    assert covered == list(range(length))  # each index once, in order
    assert all(0 < stop - start <= chunk for start, stop in bounds)
    assert len(bounds) == -(-length // chunk)


@given(
    n_scans=st.integers(1, 3000),
    n_voxels=st.integers(1, 400_000),
    volume_size=st.integers(1, 1_200_000),
    budget=st.integers(2**20, 2**30),
)
def test_plan_within_data_and_budget(n_scans, n_voxels, volume_size, budget):
    volume_size = max(volume_size, n_voxels)
    plan = _plan.plan_chunks(n_scans, n_voxels, volume_size, task_bytes=budget)
    assert 1 <= plan.t_chunk <= n_scans
    assert 1 <= plan.v_chunk <= n_voxels
    step = _plan.volumes_per_read(volume_size, plan.t_chunk, task_bytes=budget)
    assert 1 <= step <= plan.t_chunk
    # Ingestion working set (row buffer + volumes being read) within budget,
    # unless a single row or a single volume alone exceeds its share.
    row_buffer = 4 * n_voxels * plan.t_chunk
    read_set = _plan.READ_BYTES_PER_VOXEL * volume_size * step
    assert plan.t_chunk == 1 or row_buffer <= 3 * budget // 4
    assert step == 1 or read_set <= budget // 4
    # Fit working set within budget unless the minimum block size forces more.
    assert plan.v_chunk <= _plan.MIN_V_CHUNK or _plan.FIT_BYTES_PER_VALUE * n_scans * plan.v_chunk <= budget


def test_fiac_and_hcp_plans_are_sensible():
    fiac = _plan.plan_chunks(191, 40_000, 64 * 64 * 30)
    assert fiac.t_chunk == 48  # 4 ingest tasks
    assert fiac.v_chunk == 17_567  # 3 fit tasks: 191 scans x 40 bytes x 17,567 = 128 MiB
    assert _plan.volumes_per_read(64 * 64 * 30, fiac.t_chunk) == 22
    hcp = _plan.plan_chunks(1200, 280_000, 91 * 109 * 91)
    assert hcp.t_chunk == 89  # float32 rows of 280,000 voxels: 96 MiB
    assert _plan.volumes_per_read(91 * 109 * 91, hcp.t_chunk) == 3  # 3 x 902,629 x 12 bytes: 32 MiB
    assert hcp.v_chunk == 2796  # 1200 scans x 40 bytes per value: 128 MiB
    # chunks of ~1 MB: a column is 14 reads, not hundreds
    assert 4 * hcp.t_chunk * hcp.v_chunk > 2**20 - 2**17


def test_explicit_sizes_are_clipped_and_validated():
    assert _plan.plan_chunks(10, 50, 100, t_chunk=64, v_chunk=7) == (10, 7)
    for bad in (0, -3, 2.5, "8"):
        with pytest.raises(ValueError, match="t_chunk"):
            _plan.plan_chunks(10, 50, 100, t_chunk=bad)
        with pytest.raises(ValueError, match="v_chunk"):
            _plan.plan_chunks(10, 50, 100, v_chunk=bad)


def test_compiled_smoothing_only_for_runs_that_pay_for_numba():
    # FIAC-sized: 64 x 64 x 30 crop, 191 scans -> scipy; a 3 mm fMRIPrep run: 59 x 77 x 63, 240 scans, and
    # HCP-sized: 79 x 107 x 87, 1200 scans -> compiled
    assert not _plan.compiled_smoothing_pays(64 * 64 * 30, 191)
    assert _plan.compiled_smoothing_pays(59 * 77 * 63, 240)
    assert _plan.compiled_smoothing_pays(79 * 107 * 87, 1200)
    limit = _plan.COMPILED_SMOOTHING_MIN_VOXELS
    assert _plan.compiled_smoothing_pays(limit, 1) and not _plan.compiled_smoothing_pays(limit - 1, 1)
