"""CIFTI-2 dense data: dense time series in, dense scalar maps out.

A CIFTI-2 dense time series (``.dtseries.nii``) is a matrix of scans by
grayordinates: the vertices of each cortical surface and the voxels of each
subcortical structure, listed by its brain-model axis. daskglm's stores are
already ``bold(time, voxel)``, so a grayordinate is one more column. The
rest of the pipeline sees a CIFTI run as a run of ``n_grayordinates x 1 x 1``
"volumes" on an identity grid (grayordinate ``g`` is voxel ``(g, 0, 0)``):
the same ingestion, fit and contrasts, with no smoothing (there is no grid to
smooth on). Only the edges are CIFTI's: reading rows of the file (see
:func:`read_cifti_volumes`), checking that runs share their brain models, and
writing maps back as dense scalars (``.dscalar.nii``) on the input's
brain-model axis.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.cifti2 import Cifti2Header, Cifti2Matrix, cifti2_axes
from nibabel.volumeutils import apply_read_scaling

__all__ = [
    "is_cifti",
    "brain_models",
    "cifti_t_r",
    "as_volumes",
    "read_cifti_volumes",
    "read_cifti_columns",
    "check_same_brain_models",
    "structure_of",
    "to_dscalar",
    "to_dtseries",
    "grid_image",
    "grid_mask",
    "is_cifti_map",
    "CiftiMasker",
]

#: How a CIFTI run looks to the volume pipeline: grayordinate ``g`` is voxel ``(g, 0, 0)`` of this grid.
GRID_AFFINE = np.eye(4)
#: File name endings of CIFTI-2 dense time series and dense scalar maps.
DTSERIES_SUFFIX, DSCALAR_SUFFIX = ".dtseries.nii", ".dscalar.nii"
#: Bytes of a dense time series file :func:`read_cifti_volumes` reads at a time (whole time series of
#: consecutive grayordinates): its memory beyond the scans it returns.
READ_WINDOW_BYTES = 4 * 2**20


def is_cifti(run: Any) -> bool:
    """Whether ``run`` is a CIFTI-2 image, or the path of a dense time series (``.dtseries.nii``).

    Parameters
    ----------
    run : object
        A run as a user gives it: a path, a URL, a nibabel image.

    Returns
    -------
    bool
    """
    if isinstance(run, nib.Cifti2Image):
        return True
    return isinstance(run, (str, os.PathLike)) and os.fspath(run).endswith(DTSERIES_SUFFIX)


def brain_models(img: nib.Cifti2Image, name: str) -> tuple[cifti2_axes.SeriesAxis, cifti2_axes.BrainModelAxis]:
    """The series and brain-model axes of a dense time series, checked.

    Parameters
    ----------
    img : nibabel.Cifti2Image
        A dense time series: scans along its first axis, grayordinates along its second.
    name : str
        How messages name the image (its path).

    Returns
    -------
    series : nibabel.cifti2.cifti2_axes.SeriesAxis
        The scans (``size``, ``step``: the repetition time, ``unit``).
    models : nibabel.cifti2.cifti2_axes.BrainModelAxis
        The grayordinates: each one's structure, and its vertex or voxel.

    Raises
    ------
    ValueError
        The image is not a dense time series (another CIFTI kind, or axes in another order).
    """
    try:
        axes = [img.header.get_axis(i) for i in range(img.ndim)]
    except Exception as exc:
        raise ValueError(f"{name} is not a readable CIFTI-2 image: {exc}") from exc
    kinds = [type(axis).__name__ for axis in axes]
    if len(axes) != 2 or not isinstance(axes[0], cifti2_axes.SeriesAxis) \
            or not isinstance(axes[1], cifti2_axes.BrainModelAxis):
        raise ValueError(f"{name} must be a CIFTI-2 dense time series (axes SeriesAxis, BrainModelAxis: "
                         f"a .dtseries.nii); its axes are {kinds}")
    if len(axes[0]) < 1:
        raise ValueError(f"{name} has no scan")
    return axes[0], axes[1]


def cifti_t_r(series: cifti2_axes.SeriesAxis) -> float | None:
    """The repetition time in seconds of a series axis (None unless its unit is time).

    Parameters
    ----------
    series : nibabel.cifti2.cifti2_axes.SeriesAxis
        A dense time series' first axis.

    Returns
    -------
    float or None
        ``step`` in seconds, or None for a series in another unit, or with no step.
    """
    scale = {"SECOND": 1.0}.get(str(series.unit).upper())
    if scale is None or not series.step:
        return None
    return float(series.step) * scale


def as_volumes(data: np.ndarray) -> np.ndarray:
    """A dense time series' ``(n_scans, n_grayordinates)`` matrix as ``(n_grayordinates, 1, 1, n_scans)`` volumes.

    Parameters
    ----------
    data : ndarray, shape (n_scans, n_grayordinates)
        Rows of the file.

    Returns
    -------
    ndarray, shape (n_grayordinates, 1, 1, n_scans)
        A view of ``data`` (its transpose), the layout the volume pipeline reads.
    """
    return np.asarray(data).T[:, None, None, :]


def read_cifti_volumes(path: str, start: int, stop: int) -> np.ndarray:
    """Read scans ``start:stop`` of a dense time series as volumes.

    On disk the time index varies fastest: each grayordinate's time series is
    contiguous, and scans ``start:stop`` are a short piece of every one of them.
    The file is streamed :data:`READ_WINDOW_BYTES` at a time (the whole time
    series of consecutive grayordinates) and the scans asked for are kept, so
    memory is that of the scans returned plus one window; every call reads the
    whole file (:func:`read_cifti_columns` reads only what it returns). Only
    the NIfTI-2 header is parsed, not the CIFTI-2 XML (the caller has checked
    the brain models). nibabel's proxy parses the XML at every load and reads
    the whole span of the file for a few scans: what that cost an ingestion is
    in BENCHMARKS.md, "HCP-size CIFTI". Files in another layout go through
    nibabel's proxy.

    Parameters
    ----------
    path : str
        A local ``.dtseries.nii`` file.
    start, stop : int
        Half-open range of scans.

    Returns
    -------
    ndarray, shape (n_grayordinates, 1, 1, stop - start)
        In the file's dtype, native byte order (scaled by the header's slope and intercept, if any).

    Raises
    ------
    ValueError
        The file ends before its data do.
    """
    layout = _dense_layout(path)
    if layout is None:
        img = nib.load(path)
        return as_volumes(np.asanyarray(img.dataobj[start:stop]))
    start, stop, _ = slice(start, stop).indices(layout[2])
    out = np.empty((layout[3], max(0, stop - start)), dtype=layout[1].newbyteorder("="))

    def keep(i: int, j: int, series: np.ndarray) -> None:
        out[i:j] = series[:, start:stop]

    _stream_series(path, layout, np.arange(layout[3]), keep)
    return as_volumes(apply_read_scaling(out, layout[4], layout[5]).T)


def read_cifti_columns(path: str, grayordinates: np.ndarray) -> np.ndarray:
    """Read every scan of some grayordinates of a dense time series: columns of its matrix.

    The file's own order (each grayordinate's time series is contiguous), so
    the bytes read are those returned, in :data:`READ_WINDOW_BYTES` reads of
    consecutive grayordinates (gaps between the ones asked for are skipped
    when a window would not cover them); only the NIfTI-2 header is parsed.

    Parameters
    ----------
    path : str
        A local ``.dtseries.nii`` file.
    grayordinates : ndarray of int, shape (k,)
        Increasing indices along the brain-model axis.

    Returns
    -------
    ndarray, shape (n_scans, k)
        Column ``c`` is grayordinate ``grayordinates[c]``, in the file's dtype, native byte order
        (scaled by the header's slope and intercept, if any); Fortran-ordered.

    Raises
    ------
    ValueError
        The indices are not increasing or out of range, or the file ends before its data do.
    """
    grayordinates = np.asarray(grayordinates, dtype=np.int64)
    layout = _dense_layout(path)
    if layout is None:
        return np.asanyarray(nib.load(path).dataobj)[:, grayordinates]
    n_scans, n_columns = layout[2], layout[3]
    if grayordinates.ndim != 1 or (grayordinates.size and (grayordinates[0] < 0 or grayordinates[-1] >= n_columns
                                                           or (np.diff(grayordinates) <= 0).any())):
        raise ValueError(f"grayordinates must be increasing indices below {n_columns}; got {grayordinates}")
    out = np.empty((grayordinates.size, n_scans), dtype=layout[1].newbyteorder("="))

    def keep(i: int, j: int, series: np.ndarray) -> None:
        out[i:j] = series

    _stream_series(path, layout, grayordinates, keep)
    return apply_read_scaling(out, layout[4], layout[5]).T


def _stream_series(path: str, layout: tuple, grayordinates: np.ndarray, keep: Any) -> None:
    """Read the whole time series of ``grayordinates`` (increasing) a window at a time.

    A window starts at the next grayordinate wanted and spans at most
    :data:`READ_WINDOW_BYTES` of the file; ``keep(i, j, series)`` receives the
    series of ``grayordinates[i:j]``, shape ``(j - i, n_scans)`` (a view of the
    window when they are consecutive, valid during the call only).
    """
    offset, dtype, n_scans, n_columns, _, _ = layout
    row = n_scans * dtype.itemsize  # bytes of one grayordinate's time series
    per_window = max(1, READ_WINDOW_BYTES // row)
    window = np.empty(min(per_window, n_columns) * row, dtype=np.uint8)
    with open(path, "rb", buffering=0) as f:
        i = 0
        while i < grayordinates.size:
            first = int(grayordinates[i])
            j = int(np.searchsorted(grayordinates, first + per_window, side="left"))
            last = int(grayordinates[j - 1]) + 1
            view = memoryview(window)[:(last - first) * row]
            f.seek(offset + first * row)
            done = 0
            while done < len(view):
                got = f.readinto(view[done:])
                if not got:
                    raise ValueError(f"{path!r} ends before its data do: grayordinate {first + done // row} "
                                     f"of {n_columns} is cut short ({n_scans} scans of {dtype})")
                done += got
            series = np.frombuffer(view, dtype=dtype).reshape(last - first, n_scans)
            wanted = grayordinates[i:j] - first
            keep(i, j, series if last - first == j - i else series[wanted])
            i = j


def _dense_layout(path: str) -> tuple[int, np.dtype, int, int, float, float] | None:
    """``(data offset, dtype, n_scans, n_grayordinates, slope, intercept)`` of an uncompressed dense
    time series whose data are a NIfTI-2 ``(1, 1, 1, 1, n_scans, n_grayordinates)`` array in Fortran
    order (as CIFTI-2 stores them), from its NIfTI-2 header alone; None for any other file."""
    if os.fspath(path).endswith(".gz"):
        return None
    try:
        img = nib.Nifti2Image.from_filename(path)
    except Exception:  # not a NIfTI-2 file: nibabel's proxy reads it, or says why not
        return None
    proxy = img.dataobj
    shape = tuple(int(n) for n in proxy.shape)
    if len(shape) != 6 or shape[:4] != (1, 1, 1, 1) or getattr(proxy, "order", None) != "F":
        return None
    return int(proxy.offset), np.dtype(proxy.dtype), shape[4], shape[5], proxy.slope, proxy.inter


def structure_of(models: cifti2_axes.BrainModelAxis) -> np.ndarray:
    """Each grayordinate's structure, without nibabel's ``CIFTI_STRUCTURE_`` prefix.

    Parameters
    ----------
    models : nibabel.cifti2.cifti2_axes.BrainModelAxis
        A brain-model axis.

    Returns
    -------
    ndarray of str, shape (n_grayordinates,)
        For example ``"CORTEX_LEFT"``, ``"THALAMUS_RIGHT"``; read-only (made once per axis object,
        like the mapping of :func:`to_dscalar`'s images: every contrast of a model asks for it).
    """
    def build(models: cifti2_axes.BrainModelAxis) -> np.ndarray:
        names = np.array([str(name).removeprefix("CIFTI_STRUCTURE_") for name in models.name])
        names.setflags(write=False)
        return names

    return _of_axis(models, "structures", build)


def _summary(models: cifti2_axes.BrainModelAxis) -> dict[str, tuple[int, str]]:
    """Structure → (grayordinates, kind) of a brain-model axis."""
    return {str(name).removeprefix("CIFTI_STRUCTURE_"): (len(bm), "surface" if bm.surface_mask.all() else "volume")
            for name, _, bm in models.iter_structures()}


def check_same_brain_models(models: list[cifti2_axes.BrainModelAxis], names: list[str]) -> None:
    """Check that runs share their grayordinates, naming the structure that differs.

    Parameters
    ----------
    models : list of nibabel.cifti2.cifti2_axes.BrainModelAxis
        Each run's brain-model axis.
    names : list of str
        Each run's name in messages (its path).

    Raises
    ------
    ValueError
        A run's brain models differ from the first run's: which structure, and how.
    """
    first = models[0]
    for other, name in zip(models[1:], names[1:]):
        if other == first:
            continue
        a, b = _summary(first), _summary(other)
        problems = [f"{s} only in {names[0]}" for s in a if s not in b]
        problems += [f"{s} only in {name}" for s in b if s not in a]
        problems += [f"{s}: {a[s][0]} {a[s][1]} grayordinates in {names[0]}, {b[s][0]} in {name}"
                     for s in a if s in b and a[s] != b[s]]
        if not problems:
            differ = [s for s, part in _parts(first).items() if part != _parts(other).get(s)]
            problems = [f"{s}: other vertices or voxels (or another surface size or volume grid)"
                        for s in differ] or ["the structures are listed in another order"]
        raise ValueError(f"the runs' brain models differ: {name} against {names[0]}: " + "; ".join(problems))


def _parts(models: cifti2_axes.BrainModelAxis) -> dict[str, Any]:
    """Structure → its brain-model axis slice, comparable with ``==``."""
    return {str(name).removeprefix("CIFTI_STRUCTURE_"): bm for name, _, bm in models.iter_structures()}


def to_dscalar(maps: dict[str, np.ndarray], models: cifti2_axes.BrainModelAxis,
               description: str | None = None) -> nib.Cifti2Image:
    """Maps over the grayordinates as one CIFTI-2 dense scalar image (``.dscalar.nii``).

    Parameters
    ----------
    maps : dict of str to ndarray, each of shape (n_grayordinates,) or (q, n_grayordinates)
        Named maps, in order; an F contrast's ``(q, n_grayordinates)`` effect gives ``q`` rows
        named ``name_0``...
    models : nibabel.cifti2.cifti2_axes.BrainModelAxis
        The input's brain-model axis, unchanged.
    description : str, optional
        Stored as each map's metadata ``Description``.

    Returns
    -------
    nibabel.Cifti2Image
        float32, ``(n_maps, n_grayordinates)``, axes ``(ScalarAxis, BrainModelAxis)``; Connectome
        Workbench and nibabel read it.
    """
    names, rows = [], []
    for name, values in maps.items():
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 1:
            names.append(name)
            rows.append(values)
        else:
            names.extend(f"{name}_{row}" for row in range(values.shape[0]))
            rows.extend(values)
    meta = [{"Description": description}] * len(names) if description else None
    scalars = cifti2_axes.ScalarAxis(names, meta=meta)
    img = nib.Cifti2Image(np.vstack(rows), header=_header(scalars, models))
    img.nifti_header.set_intent("ConnDenseScalar")
    return img


#: The last brain-model axis asked about (a weak reference) and what was made from it, by name.
_LAST_AXIS: tuple[Any, dict[str, Any]] = (None, {})


def _of_axis(models: cifti2_axes.BrainModelAxis, what: str, build: Any) -> Any:
    """``build(models)``, made once per brain-model axis object (the last one asked about).

    A model's contrasts and output types all use its runs' axis: at 91,282
    grayordinates, nibabel's walk over it cost more than the rest of a map
    (BENCHMARKS.md, "HCP-size CIFTI").
    """
    global _LAST_AXIS
    ref, made = _LAST_AXIS
    if ref is None or ref() is not models:
        made = {}
        _LAST_AXIS = (weakref.ref(models), made)
    if what not in made:
        made[what] = build(models)
    return made[what]


def _header(axis: cifti2_axes.Axis, models: cifti2_axes.BrainModelAxis) -> Cifti2Header:
    """The CIFTI-2 header of axes ``(axis, models)``, as ``Cifti2Header.from_axes`` makes it.

    The brain models' mapping is made once per axis object (:func:`_of_axis`);
    ``nibabel.Cifti2Image`` copies the header it is given, so no image shares it.
    """
    matrix = Cifti2Matrix()
    matrix.append(axis.to_mapping(0))
    matrix.append(_of_axis(models, "mapping", lambda m: m.to_mapping(1)))
    return Cifti2Header(matrix)


def to_dtseries(values: np.ndarray, models: cifti2_axes.BrainModelAxis, t_r: float | None) -> nib.Cifti2Image:
    """Time series over the grayordinates (a fit's residuals or predictions) as a dense time series.

    Parameters
    ----------
    values : ndarray, shape (n_scans, n_grayordinates)
        One row per scan, in the brain-model axis' order.
    models : nibabel.cifti2.cifti2_axes.BrainModelAxis
        The input's brain-model axis, unchanged.
    t_r : float or None
        The series' step in seconds (1 when unknown).

    Returns
    -------
    nibabel.Cifti2Image
        float32, axes ``(SeriesAxis, BrainModelAxis)`` (a ``.dtseries.nii``).
    """
    values = np.asarray(values, dtype=np.float32)
    series = cifti2_axes.SeriesAxis(0.0, float(t_r or 1.0), values.shape[0], unit="SECOND")
    img = nib.Cifti2Image(values, header=_header(series, models))
    img.nifti_header.set_intent("ConnDenseSeries")
    return img


def grid_image(matrix: np.ndarray) -> nib.Nifti1Image:
    """A ``(k, n)`` matrix of samples by elements as an image of the identity grid.

    Parameters
    ----------
    matrix : ndarray, shape (k, n) or (n,)
        Grayordinates or masked vertices as columns.

    Returns
    -------
    Nifti1Image (NIfTI-2 past 32,767 elements), shape (n, 1, 1, k)
        Element ``g`` of sample ``t`` at ``[g, 0, 0, t]``, affine :data:`GRID_AFFINE`.
    """
    from .nifti import nifti_image  # (io.nifti imports this module)

    return nifti_image(as_volumes(np.atleast_2d(matrix)), GRID_AFFINE)


def grid_mask(n: int) -> nib.Nifti1Image:
    """Every voxel of the ``(n, 1, 1)`` identity grid, as a mask image.

    NIfTI-2 past NIfTI-1's dimensions, as :func:`grid_image` (:func:`daskglm.io.nifti.nifti_image`).
    """
    from .nifti import nifti_image

    return nifti_image(np.ones((n, 1, 1), np.int8), GRID_AFFINE)


def is_cifti_map(obj: Any) -> bool:
    """Whether ``obj`` is a CIFTI-2 image or the path of a dense scalar file (``.dscalar.nii``)."""
    if isinstance(obj, nib.Cifti2Image):
        return True
    return isinstance(obj, (str, os.PathLike)) and os.fspath(obj).endswith(DSCALAR_SUFFIX)


class CiftiMasker:
    """Dense CIFTI-2 maps to ``(k, n_grayordinates)`` matrices and back, on one brain-model axis.

    The two methods of a nilearn masker that fixed effects and the second level use
    (``transform``, ``inverse_transform``), for dense scalar maps: every grayordinate is kept.

    Parameters
    ----------
    brain_models : nibabel.cifti2.cifti2_axes.BrainModelAxis
        The grayordinates every map must have.
    name : str
        How messages name the image the axis came from.

    Attributes
    ----------
    n_elements_ : int
        The number of grayordinates.
    """

    def __init__(self, brain_models: cifti2_axes.BrainModelAxis, name: str = "the first map") -> None:
        self.brain_models, self.name = brain_models, name
        self.n_elements_ = len(brain_models)

    @staticmethod
    def load(obj: Any, name: str) -> tuple[nib.Cifti2Image, cifti2_axes.BrainModelAxis]:
        """A CIFTI-2 image (loaded if a path) and its brain-model axis, with a clear error otherwise."""
        img = nib.load(os.fspath(obj)) if isinstance(obj, (str, os.PathLike)) else obj
        if not isinstance(img, nib.Cifti2Image):
            raise TypeError(f"{name} must be a CIFTI-2 image like the other maps; got {type(img).__name__}")
        models = img.header.get_axis(1)
        if not isinstance(models, cifti2_axes.BrainModelAxis):
            raise ValueError(f"{name} is not dense CIFTI data: its second axis is a {type(models).__name__}, "
                             "not a BrainModelAxis")
        return img, models

    @classmethod
    def of(cls, obj: Any, name: str) -> CiftiMasker:
        """The masker of a map's brain models."""
        return cls(cls.load(obj, name)[1], name)

    def transform(self, obj: Any, name: str = "a map") -> np.ndarray:
        """A map's values, shape ``(k, n_grayordinates)`` float64, after checking its brain models."""
        img, models = self.load(obj, name)
        check_same_brain_models([self.brain_models, models], [self.name, name])
        return np.asarray(img.dataobj, dtype=np.float64).reshape(-1, self.n_elements_)

    def inverse_transform(self, values: np.ndarray, name: str = "map") -> nib.Cifti2Image:
        """Values of shape ``(n_grayordinates,)`` or ``(k, n_grayordinates)`` as a dense scalar image."""
        return to_dscalar({name: np.asarray(values)}, self.brain_models)
