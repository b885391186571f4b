"""Packed rows: several per-voxel results in one ``(rows, voxels)`` float64 array.

A block task returns one array instead of several, so that a result of ``k``
variables is one task (and one graph key) per voxel block instead of ``k``.
:class:`RowLayout` names the blocks of rows of such an array, packs a block's
results into it and gives them back as views (numpy) or lazy slices (dask:
``packed[layout.slice(name)]`` is plain indexing, no task of its own).

The layouts of daskglm's packed arrays are defined here, once:

* :func:`fit_rows` — a run's fit ``[beta (p); sigma2; label_index]``;
* :func:`effect_rows` — a run's contrast before statistics ``[effect (q); variance]``;
* :func:`contrast_rows` — a contrast with statistics
  ``[effect (q); variance; stat; p_value; z_score]``;
* :func:`fixed_effects_rows` — fixed effects of runs ``[effect (q); variance; stat; z_score]``;
* :func:`group_rows` — the group OLS fit and its contrasts
  ``[theta (p); dispersion; contrast 0 (contrast_rows); contrast 1; ...]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ROW", "RowLayout", "contrast_rows", "effect_rows", "fit_rows", "fixed_effects_rows", "group_contrast",
           "group_rows", "pack_contrast"]

#: The size of a block of one row given back as a vector ``(v,)`` (an int size gives ``(size, v)``).
ROW = None


@dataclass(frozen=True)
class RowLayout:
    """Named blocks of consecutive rows of a packed ``(rows, voxels)`` array.

    Build one with :meth:`of`. A block's size is :data:`ROW` (one row, a vector
    ``(v,)`` when unpacked), an int ``n`` (``n`` rows, ``(n, v)`` when unpacked,
    even for ``n == 1``) or another :class:`RowLayout` (its rows, ``(rows, v)``
    when unpacked: unpack that with the inner layout).

    Attributes
    ----------
    names : tuple of str
    sizes : tuple of (None, int or RowLayout)
    """

    names: tuple[str, ...]
    sizes: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.sizes) or len(set(self.names)) != len(self.names):
            raise ValueError(f"a row layout needs distinct names, one per size; got {self.names}, {self.sizes}")
        for name, size in zip(self.names, self.sizes):
            if not (size is ROW or isinstance(size, RowLayout)
                    or (isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0)):
                raise ValueError(f"block {name!r}: a size is None (one row), a count >= 0 or a RowLayout; "
                                 f"got {size!r}")

    @classmethod
    def of(cls, **sizes: Any) -> RowLayout:
        """The layout of these blocks, in the order given: ``RowLayout.of(beta=p, sigma2=ROW)``."""
        return cls(tuple(sizes), tuple(sizes.values()))

    def __add__(self, other: RowLayout) -> RowLayout:
        """This layout's blocks, then ``other``'s."""
        return RowLayout(self.names + other.names, self.sizes + other.sizes)

    @staticmethod
    def _count(size: Any) -> int:
        return 1 if size is ROW else size.rows if isinstance(size, RowLayout) else int(size)

    @property
    def rows(self) -> int:
        """Rows of the packed array."""
        return sum(self._count(size) for size in self.sizes)

    def slice(self, name: str) -> slice | int:
        """Where block ``name`` lies: a row index for a :data:`ROW` block, else a slice of rows."""
        start = 0
        for block, size in zip(self.names, self.sizes):
            if block == name:
                return start if size is ROW else slice(start, start + self._count(size))
            start += self._count(size)
        raise KeyError(f"no block {name!r} in the row layout {self.names}")

    def unpack(self, packed: Any) -> dict[str, Any]:
        """Each block of ``packed`` (numpy views, or lazy slices of a dask array), by name."""
        if packed.shape[0] != self.rows:
            raise ValueError(f"the packed array has {packed.shape[0]} rows; the layout {self.names} has {self.rows}")
        return {name: packed[self.slice(name)] for name in self.names}

    def pack(self, **arrays: Any) -> np.ndarray:
        """One ``(rows, v)`` array of the blocks, each given by name: ``(v,)`` for a :data:`ROW`
        block, ``(n, v)`` (or ``(v,)`` when ``n`` is 1) for the others.

        The dtype is numpy's promotion of the blocks' dtypes (float64 for daskglm's results).
        """
        if set(arrays) != set(self.names):
            raise ValueError(f"pack needs the blocks {self.names}; got {tuple(arrays)}")
        values = {name: np.asarray(arrays[name]) for name in self.names}
        v = values[self.names[0]].shape[-1] if self.names else 0
        out = np.empty((self.rows, v), dtype=np.result_type(*values.values()) if values else np.float64)
        for name, block in values.items():
            rows = out[self.slice(name)]
            if block.shape[-1:] != (v,) or block.size != rows.size:
                raise ValueError(f"block {name!r} has shape {block.shape}; the layout wants {rows.shape}")
            rows[...] = block.reshape(rows.shape)
        return out


def fit_rows(p: int) -> RowLayout:
    """A run's fit: ``beta`` (p rows), ``sigma2``, ``label_index`` (the voxel's row of the fit's
    ``cov`` table, as float64)."""
    return RowLayout.of(beta=p, sigma2=ROW, label_index=ROW)


def effect_rows(q: int) -> RowLayout:
    """A contrast before its statistics: ``effect`` (q rows; 1 for t), ``variance``. The first rows
    of :func:`contrast_rows`."""
    return RowLayout.of(effect=q, variance=ROW)


#: What :func:`contrast_rows` adds to :func:`effect_rows`.
_CONTRAST_STATISTICS = RowLayout.of(stat=ROW, p_value=ROW, z_score=ROW)


def contrast_rows(q: int) -> RowLayout:
    """A contrast with its statistics: ``effect`` (q rows), ``variance``, ``stat``, ``p_value``, ``z_score``."""
    return effect_rows(q) + _CONTRAST_STATISTICS


def fixed_effects_rows(q: int) -> RowLayout:
    """Fixed effects of runs: ``effect`` (q rows), ``variance``, ``stat``, ``z_score``."""
    return effect_rows(q) + RowLayout.of(stat=ROW, z_score=ROW)


def group_rows(p: int, qs: Sequence[int]) -> RowLayout:
    """The group OLS fit and its contrasts: ``theta`` (p rows), ``dispersion``, then
    ``contrast0``, ``contrast1``... (:func:`contrast_rows` of q rows each: 1 for t)."""
    return RowLayout.of(theta=p, dispersion=ROW, **{group_contrast(n): contrast_rows(q) for n, q in enumerate(qs)})


def group_contrast(n: int) -> str:
    """The name of contrast ``n``'s block in :func:`group_rows`."""
    return f"contrast{n}"


def pack_contrast(res: Any) -> np.ndarray:
    """A contrast's ``effect``, ``variance``, ``stat``, ``p_value`` and ``z_score`` (attributes of
    ``res``, e.g. a :class:`daskglm.kernels.stats.ContrastStats`) packed as :func:`contrast_rows`."""
    layout = contrast_rows(np.atleast_2d(res.effect).shape[0])
    return layout.pack(**{name: getattr(res, name) for name in layout.names})
