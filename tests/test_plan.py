"""Chunk planning: properties checked against brute force with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daskglm import _plan


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
    # Ingestion working set within budget unless one volume alone exceeds it.
    assert plan.t_chunk == 1 or 8 * volume_size * plan.t_chunk <= budget
    # Fit working set within budget unless the minimum block size forces more.
    assert plan.v_chunk <= _plan.MIN_V_CHUNK or 32 * n_scans * plan.v_chunk <= budget


def test_fiac_and_hcp_plans_are_sensible():
    fiac = _plan.plan_chunks(191, 40_000, 64 * 64 * 30)
    assert fiac.t_chunk == 48 and fiac.v_chunk == 20_000  # 4 ingest tasks, 2 fit tasks
    hcp = _plan.plan_chunks(1200, 280_000, 91 * 109 * 91)
    assert hcp.t_chunk == 18  # 18 full volumes of 902,629 voxels: 130 MB
    assert hcp.v_chunk == 3495  # 1200 scans in float64 with copies: 134 MB


def test_explicit_sizes_are_clipped_and_validated():
    assert _plan.plan_chunks(10, 50, 100, t_chunk=64, v_chunk=7) == (10, 7)
    for bad in (0, -3, 2.5, "8"):
        with pytest.raises(ValueError, match="t_chunk"):
            _plan.plan_chunks(10, 50, 100, t_chunk=bad)
        with pytest.raises(ValueError, match="v_chunk"):
            _plan.plan_chunks(10, 50, 100, v_chunk=bad)
