"""Simulated CIFTI-2 dense time series (``.dtseries.nii``) with a known effect, written out of core.

:func:`simulate_cifti` writes FIAC-design runs (the events and design of
:func:`daskglm.datasets.simulate_fiac`) as CIFTI-2 dense time series, the
grayordinate files HCP and fMRIPrep write in fsLR-91k space: left and right
cortex vertices (a "medial wall" left out) plus subcortical voxels. Two layouts:

* ``"small"`` — fsaverage5 cortex (10242 vertices per hemisphere, 9361 left and
  9367 right present: the fsLR fraction) and two thalami (220 and 210 voxels of
  a 2 mm grid), 19,158 grayordinates;
* ``"91k"`` — the fsLR-91k sizes: 32492 vertices per hemisphere, 29696 (left) and
  29716 (right) present, and 31870 voxels of the 91×109×91 2 mm MNI grid in the
  19 subcortical structures of HCP's atlas (with its per-structure counts),
  91,282 grayordinates.

There are no atlases here: the present vertices and voxels are chosen
deterministically from the seed (a spherical cap of vertices is the medial wall;
each structure is the set of grid voxels nearest to its approximate MNI centre).

On disk a dense time series is the NIfTI-2 header, the CIFTI-2 XML extension,
then float32 values with the *time* index varying fastest: each grayordinate's
whole time series is contiguous. Runs are therefore generated and written in
blocks of grayordinates (all scans of a few hundred to a few thousand
grayordinates, about 4 MiB), whatever the file size.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.cifti2 import Cifti2Header
from nibabel.cifti2.cifti2_axes import BrainModelAxis, SeriesAxis
from nibabel.cifti2.parse_cifti2 import Cifti2Extension
from sklearn.utils import Bunch

from . import fiac
from .fiac import CONDITIONS, DESIGN_PARAMS, fiac_design_matrix, fiac_events
from .files import _atomic_open, data_root, is_complete, parameters_folder, write_npz, write_text
from .params import check_float, check_int, check_timing, check_tuple, stream_rng

__all__ = ["CONTRASTS", "GENERATOR_VERSION", "LAYOUTS", "cifti_brain_model_axis", "cifti_ground_truth",
           "cifti_run_blocks", "dtseries_header", "simulate_cifti", "write_dtseries"]

#: Layout names of :func:`simulate_cifti`.
LAYOUTS: tuple[str, ...] = ("small", "91k")
#: The two effects of the ground truth, as weights on the 5 conditions (``CONDITIONS`` order).
CONTRASTS: dict[str, tuple[float, ...]] = {
    "sentence": (-1.0, -1.0, 1.0, 1.0, 0.0),  # DSt > SSt: DStSSp + DStDSp - SStSSp - SStDSp
    "speaker": (-1.0, 1.0, -1.0, 1.0, 0.0),  # DSp > SSp: SStDSp + DStDSp - SStSSp - DStSSp
}
GENERATOR_VERSION = 1  # bump when the output for given parameters changes
_MARKER = "cifti_complete.json"
# RNG streams, beyond simulate_fiac's (0-3) and simulate_bids' (10-11).
_STREAM_LAYOUT, _STREAM_FIELDS, _STREAM_DRIFT, _STREAM_NOISE = 20, 21, 22, 23
_UNIT = 256  # grayordinates per noise stream: the data do not depend on the block size
_BLOCK_BYTES = 4 << 20  # target size of one generated block (all scans of some grayordinates)
_MNI_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
_CORTEX = ("CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT")
_FSLR_VERTICES, _FSLR_PRESENT = 32492, (29696, 29716)
#: Subcortical structures: name -> (voxel count of the layout, approximate MNI centre in mm).
_SUBCORTICAL: dict[str, dict[str, tuple[int, tuple[float, float, float]]]] = {
    "small": {
        "THALAMUS_LEFT": (220, (-11, -18, 7)), "THALAMUS_RIGHT": (210, (12, -18, 7)),
    },
    "91k": {  # HCP's fsLR-91k counts (31870 voxels in all)
        "ACCUMBENS_LEFT": (135, (-10, 12, -8)), "ACCUMBENS_RIGHT": (140, (10, 12, -8)),
        "AMYGDALA_LEFT": (315, (-23, -5, -18)), "AMYGDALA_RIGHT": (332, (24, -4, -18)),
        "BRAIN_STEM": (3472, (0, -28, -35)),
        "CAUDATE_LEFT": (728, (-13, 10, 10)), "CAUDATE_RIGHT": (755, (14, 11, 10)),
        "CEREBELLUM_LEFT": (8709, (-25, -60, -35)), "CEREBELLUM_RIGHT": (9144, (25, -60, -35)),
        "DIENCEPHALON_VENTRAL_LEFT": (706, (-10, -16, -10)), "DIENCEPHALON_VENTRAL_RIGHT": (712, (10, -16, -10)),
        "HIPPOCAMPUS_LEFT": (764, (-26, -22, -14)), "HIPPOCAMPUS_RIGHT": (795, (28, -22, -14)),
        "PALLIDUM_LEFT": (297, (-20, -3, 0)), "PALLIDUM_RIGHT": (260, (20, -3, 0)),
        "PUTAMEN_LEFT": (1060, (-25, 2, 1)), "PUTAMEN_RIGHT": (1010, (26, 2, 1)),
        "THALAMUS_LEFT": (1288, (-11, -18, 7)), "THALAMUS_RIGHT": (1248, (12, -18, 7)),
    },
}
#: Voxel grid of the subcortical structures: (shape, affine).
_GRIDS: dict[str, tuple[tuple[int, int, int], np.ndarray]] = {
    "small": ((24, 12, 12), np.array([[-2.0, 0, 0, 24], [0, 2, 0, -30], [0, 0, 2, -4], [0, 0, 0, 1]])),
    "91k": ((91, 109, 91), _MNI_AFFINE),
}
#: Anchors (mm, left hemisphere; mirrored for the right) of the medial wall and of the cortical blobs.
_MEDIAL_ANCHOR, _BLOB_ANCHOR, _HEMI_CENTRE = (-3.0, -15.0, 10.0), (-55.0, -20.0, 5.0), (-30.0, -20.0, 15.0)
#: Blobs: name -> (structure, response to each condition, as simulate_fiac's blobs).
_BLOBS: dict[str, tuple[str, tuple[float, ...]]] = {
    "sentence": ("CIFTI_STRUCTURE_CORTEX_LEFT", fiac._BLOBS["sentence"][1]),
    "speaker": ("CIFTI_STRUCTURE_CORTEX_RIGHT", fiac._BLOBS["speaker"][1]),
    "sentence_subcortical": ("CIFTI_STRUCTURE_THALAMUS_LEFT", fiac._BLOBS["sentence"][1]),
    "all": ("CIFTI_STRUCTURE_THALAMUS_RIGHT", fiac._BLOBS["all"][1]),
}
_SIGMA_CORTEX, _SIGMA_VOXELS = 0.1, 4.0  # blob widths: radians on the sphere, mm


def _check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return str(layout)


# --- geometry ---
@functools.lru_cache(maxsize=1)
def _fsaverage5() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(unit sphere, pial) vertex coordinates of fsaverage5's left and right hemispheres (float64)."""
    from nilearn.datasets import load_fsaverage

    mesh = load_fsaverage("fsaverage5")
    out = []
    for hemi in ("left", "right"):
        sphere = np.asarray(mesh["sphere"].parts[hemi].coordinates, dtype=np.float64)
        sphere = sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
        pial = np.asarray(mesh["pial"].parts[hemi].coordinates, dtype=np.float64)
        sphere.flags.writeable = pial.flags.writeable = False
        out.append((sphere, pial))
    return tuple(out)


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (golden-angle spiral), float64, shape (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r, phi = np.sqrt(1 - z**2), i * np.pi * (3 - np.sqrt(5))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _nearest(sphere: np.ndarray, pial: np.ndarray | None, centre: np.ndarray, point: np.ndarray,
             among: np.ndarray) -> int:
    """The vertex of ``among`` nearest to ``point`` (mm): on the pial mesh if there is one, else the
    vertex of the sphere in the direction of ``point`` seen from the hemisphere's ``centre``."""
    if pial is not None:
        return int(among[np.argmin(((pial[among] - point) ** 2).sum(axis=1))])
    return int(among[np.argmax(sphere[among] @ _unit(point - centre))])


def _hemispheres(layout: str, rng: np.random.Generator) -> list[Bunch]:
    """Per hemisphere: its sphere (unit vectors of every vertex), present vertices and blob centre vertex."""
    out = []
    for h, name in enumerate(_CORTEX):
        mirror = np.array([1.0 - 2 * h, 1.0, 1.0])  # right hemisphere: x -> -x
        medial = np.array(_MEDIAL_ANCHOR) * mirror + rng.normal(0, 2.0, 3)
        blob = np.array(_BLOB_ANCHOR) * mirror + rng.normal(0, 3.0, 3)
        if layout == "small":
            sphere, pial = _fsaverage5()[h]
            n_present = round(len(sphere) * _FSLR_PRESENT[h] / _FSLR_VERTICES)
        else:
            sphere, pial = _fibonacci_sphere(_FSLR_VERTICES) * mirror, None
            n_present = _FSLR_PRESENT[h]
        centre = np.array(_HEMI_CENTRE) * mirror
        wall_centre = sphere[_nearest(sphere, pial, centre, medial, np.arange(len(sphere)))]
        order = np.argsort(-(sphere @ wall_centre), kind="stable")  # nearest to the wall's centre first
        present = np.sort(order[len(sphere) - n_present:])
        blob_vertex = _nearest(sphere, pial, centre, blob, present)
        out.append(Bunch(name=name, sphere=sphere, present=present, blob_vertex=blob_vertex))
    return out


def _structure_labels(layout: str, rng: np.random.Generator) -> np.ndarray:
    """Label volume (int16, 0 = none, k = k-th structure of the layout's list): each structure
    takes its count of the still free grid voxels nearest to its (jittered) centre, smallest first."""
    shape, affine = _GRIDS[layout]
    structures = list(_SUBCORTICAL[layout].values())
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    jitter = rng.uniform(0, 0.5, len(xyz))  # breaks ties (mm)
    centres = [np.array(c, dtype=float) + rng.normal(0, 1.0, 3) for _, c in structures]
    labels = np.zeros(len(xyz), dtype=np.int16)
    for k in sorted(range(len(structures)), key=lambda k: (structures[k][0], k)):
        dist = np.sqrt(((xyz - centres[k]) ** 2).sum(axis=1)) + jitter
        dist[labels > 0] = np.inf
        count = structures[k][0]
        chosen = np.argpartition(dist, count - 1)[:count]
        labels[chosen] = k + 1
    return labels.reshape(shape)


@functools.lru_cache(maxsize=4)
def _geometry(layout: str, seed: int) -> Bunch:
    rng = stream_rng(seed, _STREAM_LAYOUT)
    hemis = _hemispheres(layout, rng)
    labels = _structure_labels(layout, rng)
    shape, affine = _GRIDS[layout]
    axis = None
    for hemi in hemis:
        part = BrainModelAxis.from_surface(hemi.present, len(hemi.sphere), hemi.name)
        axis = part if axis is None else axis + part
    for k, name in enumerate(_SUBCORTICAL[layout], start=1):
        axis = axis + BrainModelAxis.from_mask(labels == k, affine=affine, name=f"CIFTI_STRUCTURE_{name}")
    # Coordinates for the smooth random fields: unit vectors on the cortex, mm / 70 in the volume.
    coords = np.empty((axis.size, 3))
    for name, sl, part in axis.iter_structures():
        if part.volume_mask.any():
            coords[sl] = (part.voxel @ affine[:3, :3].T + affine[:3, 3] - [0, -20, 0]) / 70
        else:
            coords[sl] = hemis[_CORTEX.index(name)].sphere[part.vertex]
    return Bunch(axis=axis, hemispheres=hemis, coords=coords, volume_shape=shape, affine=affine)


def cifti_brain_model_axis(layout: str = "small", seed: int = 0) -> BrainModelAxis:
    """The brain-model axis (the grayordinates) of a :func:`simulate_cifti` layout.

    Parameters
    ----------
    layout : {"small", "91k"}
        ``"small"``: fsaverage5 cortex (9361 + 9367 of 10242 vertices) and two
        thalami (220 + 210 voxels), 19,158 grayordinates. ``"91k"``: fsLR-91k
        sizes, 29696 + 29716 of 32492 vertices and 31870 voxels in 19
        structures, 91,282 grayordinates.
    seed : int
        Seed of the choice of the present vertices and voxels.

    Returns
    -------
    axis : nibabel.cifti2.cifti2_axes.BrainModelAxis, size n_grayordinates
        Cortex left, cortex right, then the subcortical structures in
        alphabetical order (as HCP's files).
    """
    return _geometry(_check_layout(layout), check_int("seed", seed, 0)).axis


def _smooth_field(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random low-frequency field at ``coords`` (n, 3) (sum of 8 plane waves), float32 in [0, 1]."""
    field = np.zeros(len(coords))
    for _ in range(8):
        freq, phase, amp = rng.uniform(-1.0, 1.0, 3), rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.0)
        field += amp * np.cos(2 * np.pi * (coords @ freq) + phase)
    field -= field.min()
    top = field.max()
    return (field / top if top > 0 else field).astype(np.float32)


def cifti_ground_truth(layout: str = "small", seed: int = 0, effect_size: float = 0.03,
                       ar_rho: tuple[float, float] = (0.1, 0.5), noise_sd: float = 15.0) -> Bunch:
    """Per-grayordinate ground truth used by :func:`simulate_cifti`.

    Baseline 800-1200 (a smooth random field), AR(1) coefficient a smooth
    field in ``ar_rho``. Four Gaussian blobs, as simulate_fiac's, respond to
    the conditions: ``"sentence"`` (left cortex, DSt > SSt: responses 0.25,
    0.25, 1, 1, 1), ``"speaker"`` (right cortex, DSp > SSp: 0.25, 1, 0.25, 1,
    1), ``"sentence_subcortical"`` (left thalamus, as "sentence") and
    ``"all"`` (right thalamus, 1, 1, 1, 1, 1). A cortical blob decays with the
    angle on the sphere from its centre vertex (sigma 0.1 rad, about 10 mm on
    fsaverage's 100 mm sphere), a subcortical one with the distance in mm
    (sigma 4 mm) within its structure; both are zero beyond 4 sigma.

    Parameters
    ----------
    layout : {"small", "91k"}
        See :func:`cifti_brain_model_axis`.
    seed : int
        Seed of the layout, blob positions, baseline and AR fields.
    effect_size : float
        Peak fractional signal change per unit regressor for a response of 1.
    ar_rho : tuple of 2 float
        Range ``(low, high)`` of the AR(1) coefficient, ``0 <= low <= high < 1``.
    noise_sd : float
        Stationary noise SD (data units).

    Returns
    -------
    truth : sklearn.utils.Bunch
        With ``n`` grayordinates: ``effects`` (float32, (2, n): expected
        contrast per grayordinate, data units, of ``effect_names`` =
        ("sentence", "speaker") with weights ``contrasts`` (2, 5) on
        ``conditions`` (5,)), ``structures`` (str, (n,) the CIFTI structure of
        each grayordinate), ``vertex`` (int, (n,), -1 for voxels), ``voxel``
        (int, (n, 3), -1 for vertices), ``blob_names`` (4,),
        ``blob_structures`` (4,), ``blob_centers`` (int, (4,) grayordinate
        indices), ``blob_maps`` (float32, (4, n), peak 1), ``blob_betas`` (4,
        5), ``activation`` (float32, (5, n): fractional signal change per unit
        of each condition regressor), ``baseline``, ``ar_rho``, ``noise_sd``
        (float32, (n,)), ``surface_nvertices`` (2,), ``volume_shape`` (3,),
        ``affine`` (4, 4), ``layout``.
    """
    layout, seed = _check_layout(layout), check_int("seed", seed, 0)
    effect_size, noise_sd = check_float("effect_size", effect_size), check_float("noise_sd", noise_sd)
    lo, hi = check_tuple("ar_rho", ar_rho, 2, "float")
    if not 0 <= lo <= hi < 1:
        raise ValueError(f"ar_rho must satisfy 0 <= low <= high < 1, got {ar_rho!r}")
    geo = _geometry(layout, seed)
    axis, n = geo.axis, geo.axis.size
    structures = np.asarray(axis.name)
    rng = stream_rng(seed, _STREAM_FIELDS)
    baseline = (800 + 400 * _smooth_field(geo.coords, rng)).astype(np.float32)
    rho = (lo + (hi - lo) * _smooth_field(geo.coords, rng)).astype(np.float32)
    blob_maps = np.zeros((len(_BLOBS), n), dtype=np.float32)
    centres = np.empty(len(_BLOBS), dtype=np.int64)
    for k, (structure, _) in enumerate(_BLOBS.values()):
        where = np.flatnonzero(structures == structure)
        if structure in _CORTEX:
            hemi = geo.hemispheres[_CORTEX.index(structure)]
            centres[k] = where[np.searchsorted(axis.vertex[where], hemi.blob_vertex)]
            cos = np.clip(hemi.sphere[axis.vertex[where]] @ hemi.sphere[hemi.blob_vertex], -1, 1)
            dist, sigma = np.arccos(cos), _SIGMA_CORTEX
        else:
            xyz = axis.voxel[where] @ geo.affine[:3, :3].T + geo.affine[:3, 3]
            centres[k] = where[np.argmin(((xyz - xyz.mean(axis=0)) ** 2).sum(axis=1))]
            dist, sigma = np.sqrt(((xyz - xyz[where == centres[k]]) ** 2).sum(axis=1)), _SIGMA_VOXELS
        blob_maps[k, where] = np.where(dist <= 4 * sigma, np.exp(-(dist**2) / (2 * sigma**2)), 0)
    betas = np.array([response for _, response in _BLOBS.values()])
    activation = (effect_size * (betas.T @ blob_maps)).astype(np.float32)
    contrasts = np.array(list(CONTRASTS.values()))
    effects = (contrasts @ (activation.astype(np.float64) * baseline)).astype(np.float32)
    return Bunch(
        effects=effects, effect_names=np.array(list(CONTRASTS)), contrasts=contrasts,
        conditions=np.array(CONDITIONS), structures=structures,
        vertex=np.where(axis.surface_mask, axis.vertex, -1).astype(np.int64),
        voxel=np.where(axis.volume_mask[:, None], axis.voxel, -1).astype(np.int64),
        blob_names=np.array(list(_BLOBS)), blob_structures=np.array([s for s, _ in _BLOBS.values()]),
        blob_centers=centres, blob_maps=blob_maps, blob_betas=betas, activation=activation,
        baseline=baseline, ar_rho=rho, noise_sd=np.full(n, noise_sd, dtype=np.float32),
        surface_nvertices=np.array([axis.nvertices[name] for name in _CORTEX]),
        volume_shape=np.array(geo.volume_shape), affine=geo.affine.copy(), layout=np.array(layout),
    )


# --- time series ---
def _block_width(n_scans: int) -> int:
    """Grayordinates per generated block: a multiple of the noise-stream unit, about ``_BLOCK_BYTES``."""
    return _UNIT * max(1, _BLOCK_BYTES // (4 * n_scans * _UNIT))


def cifti_run_blocks(truth: Bunch, regressors: np.ndarray, seed: int, run: int,
                     drift_size: float = 0.01) -> Iterator[np.ndarray]:
    """Yield the data of one run as column blocks of its (n_scans, n_grayordinates) float32 matrix.

    Grayordinate g at scan t is ``baseline * (1 + drift_t) + baseline *
    activation[:, g] @ x_t + noise_t``, with ``x_t = regressors[t]`` and
    ``noise_t = rho * noise_{t-1} + sqrt(1 - rho**2) * noise_sd * z_t``
    (stationary from t = 0, white in space). The drift is a Legendre P1 + P2
    trend in time with smooth random spatial weights of amplitude
    ``drift_size``. The noise of each group of 256 grayordinates is its own
    random stream, so the values do not depend on the block size.

    Parameters
    ----------
    truth : sklearn.utils.Bunch
        From :func:`cifti_ground_truth`.
    regressors : numpy.ndarray, shape (n_scans, 5)
        The condition columns of the design matrix.
    seed, run : int
        Random seed and 1-based run index (runs differ in noise and drift).
    drift_size : float
        Amplitude of the drift, as a fraction of the baseline.

    Yields
    ------
    block : numpy.ndarray, shape (n_scans, width), float32
        Consecutive columns (grayordinates) of the run; ``width`` is a
        multiple of 256 (but for the last block) sized to about 4 MiB.
    """
    regressors = np.asarray(regressors, dtype=np.float32)
    n_scans, n = len(regressors), truth.baseline.size
    coords = _geometry(str(truth.layout), seed).coords
    drift_rng = stream_rng(seed, _STREAM_DRIFT, run)
    weights = [truth.baseline * np.float32(drift_size) * (2 * _smooth_field(coords, drift_rng) - 1)
               for _ in range(2)]
    tau = np.linspace(-1, 1, n_scans)
    legendre = np.stack([tau, 1.5 * tau**2 - 0.5], axis=1).astype(np.float32)
    rho = truth.ar_rho
    first = truth.noise_sd.astype(np.float32)
    innov = (np.sqrt(1 - rho.astype(np.float64) ** 2) * truth.noise_sd).astype(np.float32)
    signal = (truth.activation * truth.baseline).astype(np.float32)  # (5, n), data units
    support = signal.any(axis=0)
    width = _block_width(n_scans)
    for start in range(0, n, width):
        cols = slice(start, min(start + width, n))
        m = cols.stop - start
        block = np.empty((n_scans, m), dtype=np.float32)
        for u in range(start, cols.stop, _UNIT):
            k = min(_UNIT, cols.stop - u)
            rng = stream_rng(seed, _STREAM_NOISE, run, u // _UNIT)
            block[:, u - start:u - start + k] = rng.standard_normal((n_scans, k), dtype=np.float32)
        r, fi, inn, base = rho[cols], first[cols], innov[cols], truth.baseline[cols]
        w0, w1 = weights[0][cols], weights[1][cols]
        tmp = np.empty(m, dtype=np.float32)
        block[0] *= fi
        for t in range(n_scans):
            row = block[t]
            if t:
                row *= inn
                np.multiply(block[t - 1], r, out=tmp)
                row += tmp
        for t in range(n_scans):  # second pass: the AR recursion above needs the noise of t - 1
            row = block[t]
            np.multiply(w0, legendre[t, 0], out=tmp)
            row += tmp
            np.multiply(w1, legendre[t, 1], out=tmp)
            row += tmp
            row += base
        sup = np.flatnonzero(support[cols])
        if sup.size:
            added = np.zeros((n_scans, sup.size), dtype=np.float32)
            for c in range(signal.shape[0]):
                added += np.multiply.outer(regressors[:, c], signal[c, start + sup])
            block[:, sup] += added
        yield block


# --- file ---
def dtseries_header(brain_models: BrainModelAxis, n_scans: int, t_r: float) -> bytes:
    """The bytes of a dense time series file before its data, as nibabel writes them.

    The NIfTI-2 header (intent ``NIFTI_INTENT_CONNECTIVITY_DENSE_SERIES``,
    name ``ConnDenseSeries``, shape (1, 1, 1, 1, n_scans, n_grayordinates),
    float32, little endian), the extension flag and the CIFTI-2 XML extension
    of the axes ``(SeriesAxis(0, t_r, n_scans, "SECOND"), brain_models)``,
    padded with zeros to the data offset: what
    ``nibabel.save(Cifti2Image(data, header=axes))`` writes before the data
    (after ``nifti_header.set_intent`` as above).

    Parameters
    ----------
    brain_models : nibabel.cifti2.cifti2_axes.BrainModelAxis
        The grayordinates.
    n_scans : int
        Number of time points.
    t_r : float
        Repetition time in seconds.

    Returns
    -------
    header : bytes
        ``len(header)`` is the data offset (``vox_offset``).
    """
    series = SeriesAxis(0.0, float(t_r), int(n_scans), unit="SECOND")
    hdr = nib.Nifti2Header(endianness="<")
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((1, 1, 1, 1, int(n_scans), brain_models.size))
    hdr.set_intent("NIFTI_INTENT_CONNECTIVITY_DENSE_SERIES", name="ConnDenseSeries")
    hdr.extensions.append(Cifti2Extension.from_bytes(Cifti2Header.from_axes((series, brain_models)).to_xml()))
    hdr["pixdim"][:4] = 1  # as Cifti2Image.to_file_map when there is no qform
    hdr["magic"] = hdr.single_magic
    out = io.BytesIO()
    hdr.write_to(out)  # sets vox_offset to the end of the extensions
    block = out.getvalue()
    return block + b"\x00" * (int(hdr["vox_offset"]) - len(block))


def write_dtseries(path: str | os.PathLike, brain_models: BrainModelAxis, t_r: float, n_scans: int,
                   blocks: Iterable[np.ndarray]) -> None:
    """Stream a CIFTI-2 dense time series to ``path``, one block of grayordinates at a time.

    Writes :func:`dtseries_header`, then each block transposed (on disk the
    time index varies fastest). Atomic: written under a hidden temporary name,
    renamed when complete. The file equals what ``nibabel.save`` writes for the
    whole (n_scans, n_grayordinates) matrix.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.dtseries.nii`` file.
    brain_models : nibabel.cifti2.cifti2_axes.BrainModelAxis
        The grayordinates (columns).
    t_r : float
        Repetition time in seconds.
    n_scans : int
        Number of time points (rows).
    blocks : iterable of numpy.ndarray, each of shape (n_scans, width)
        Consecutive column blocks of the data matrix, covering all
        ``brain_models.size`` columns; cast to float32.
    """
    n, done = brain_models.size, 0
    with _atomic_open(Path(path)) as fh:
        fh.write(dtseries_header(brain_models, n_scans, t_r))
        for block in blocks:
            if block.ndim != 2 or block.shape[0] != n_scans or done + block.shape[1] > n:
                raise ValueError(f"block of shape {block.shape} after {done} of {n} columns of {n_scans} rows")
            fh.write(np.ascontiguousarray(block.T, dtype="<f4").data)
            done += block.shape[1]
        if done != n:
            raise ValueError(f"blocks cover {done} of {n} grayordinates")


# --- public entry point ---
def simulate_cifti(
    data_dir: str | os.PathLike | None = None, layout: str = "small", n_runs: int = 2, n_scans: int = 100,
    t_r: float = 2.0, seed: int = 0, effect_size: float = 0.03, noise_sd: float = 15.0,
    ar_rho: tuple[float, float] = (0.1, 0.5), overwrite: bool = False, drift_size: float = 0.01,
    verbose: int = 0,
) -> Bunch:
    """Simulate FIAC-design runs as CIFTI-2 dense time series on disk, with known ground truth.

    Each run is a ``.dtseries.nii`` file (float32, time × grayordinate, intent
    dense series, a SeriesAxis with the TR in seconds and a BrainModelAxis of
    the layout's grayordinates) with the events of :func:`fiac_events` and the
    signal of the design :func:`fiac_design_matrix` at four blobs (see
    ``daskglm.datasets.cifti.cifti_ground_truth``). Runs are generated and
    written a block of grayordinates at a time (about 4 MiB), so memory stays
    small whatever the file size (438 MB for ``"91k"`` × 1200 scans).

    Files go to ``data_dir/cifti_<layout>_<n_scans>_seed<seed>_<hash of all
    parameters>``; ``data_dir`` defaults to ``$DASKGLM_DATA`` or
    ``~/.cache/daskglm``. A marker file holding the parameters as JSON is
    written last; when it is there with identical parameters the existing
    files are returned as they are. Each file is written under a temporary
    name and renamed when complete. Same parameters, byte-identical files.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Root cache directory.
    layout : {"small", "91k"}
        ``"small"``: fsaverage5 cortex and two thalami, 19,158 grayordinates;
        ``"91k"``: fsLR-91k sizes, 91,282 grayordinates (see
        ``daskglm.datasets.cifti.cifti_brain_model_axis``).
    n_runs : int
        Number of runs (>= 1); runs differ in block order, noise and drift.
    n_scans : int
        Scans per run (>= 20).
    t_r : float
        Repetition time in seconds (the SeriesAxis step).
    seed : int
        Random seed (>= 0).
    effect_size : float
        Fractional signal change of a blob peak per unit regressor.
    noise_sd : float
        Stationary AR(1) noise SD (the baseline is 800-1200).
    ar_rho : tuple of 2 float
        Range of the spatially smooth grayordinate-wise AR(1) coefficient.
    overwrite : bool
        Regenerate even when a matching dataset exists.
    drift_size : float
        Amplitude of the slow (linear + quadratic) drift, as a fraction of baseline.
    verbose : int
        Print progress when > 0.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``func1..funcN``: ``run-<i>_bold.dtseries.nii`` (float32, (n_scans,
        n_grayordinates)). ``events1..N``: ``run-<i>_events.tsv`` (onset,
        duration, trial_type). ``truth``: ``truth.npz`` with the arrays of
        ``daskglm.datasets.cifti.cifti_ground_truth``: ``effects`` (float32,
        (2, n_grayordinates), the "sentence" DSt > SSt and "speaker" DSp > SSp
        effects in data units), ``effect_names``, ``contrasts`` (2, 5),
        ``structures`` (the CIFTI structure of each grayordinate),
        ``blob_centers`` (grayordinate indices) and more.
        ``description``: str. All paths are ``str``.

    Notes
    -----
    X is ``fiac_design_matrix(events, n_scans, t_r)``; a per-grayordinate fit
    of X estimates ``truth.effects`` with the contrasts ``truth.contrasts``
    on its first 5 columns.
    """
    layout = _check_layout(layout)
    n_scans, t_r = check_timing(n_scans, t_r)
    n_runs, seed = check_int("n_runs", n_runs, 1), check_int("seed", seed, 0)
    drift_size = check_float("drift_size", drift_size)
    truth = cifti_ground_truth(layout, seed, effect_size, ar_rho, noise_sd)  # validates these
    params = {
        "generator_version": GENERATOR_VERSION, "layout": layout, "n_runs": n_runs, "n_scans": n_scans,
        "t_r": t_r, "seed": seed, "effect_size": float(effect_size), "noise_sd": float(noise_sd),
        "ar_rho": [float(r) for r in ar_rho], "drift_size": drift_size, "design": DESIGN_PARAMS,
    }
    folder, text = parameters_folder(data_root(data_dir), f"cifti_{layout}_{n_scans}_seed{seed}", params)
    paths: dict[str, Path] = {}
    for r in range(1, n_runs + 1):
        paths[f"func{r}"] = folder / f"run-{r}_bold.dtseries.nii"
        paths[f"events{r}"] = folder / f"run-{r}_events.tsv"
    paths["truth"] = folder / "truth.npz"
    result = Bunch(**{k: str(p) for k, p in paths.items()}, description=_description(params, truth))

    marker = folder / _MARKER
    if not overwrite and is_complete(marker, text, paths.values()):
        if verbose:
            print(f"[simulate_cifti] using cached data in {folder}")
        return result

    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    write_npz(paths["truth"], dict(truth))
    axis = _geometry(layout, seed).axis
    for r in range(1, n_runs + 1):
        if verbose:
            print(f"[simulate_cifti] run {r}/{n_runs} -> {paths[f'func{r}']}")
        events = fiac_events(n_scans, t_r, seed, r)
        design = fiac_design_matrix(events, n_scans, t_r)
        write_text(paths[f"events{r}"], events.to_csv(sep="\t", index=False))
        blocks = cifti_run_blocks(truth, design[list(CONDITIONS)].to_numpy(), seed, r, drift_size)
        write_dtseries(paths[f"func{r}"], axis, t_r, n_scans, blocks)
    write_text(marker, text)  # last: marks the folder complete
    return result


def _description(p: dict[str, Any], truth: Bunch) -> str:
    n = truth.baseline.size
    left, right = (int((truth.structures == name).sum()) for name in _CORTEX)
    return (
        "Simulated CIFTI-2 dense time series (daskglm) with the FIAC design of simulate_fiac: Sentence "
        "(same SSt / different DSt) x Speaker (same SSp / different DSp) blocks plus FirstSt. "
        f"{p['n_runs']} run(s) of {p['n_scans']} scans, TR {p['t_r']} s, seed {p['seed']}, layout "
        f"{p['layout']!r}: {n} grayordinates ({left} + {right} cortex vertices of "
        f"{truth.surface_nvertices.tolist()}, {int((truth.vertex < 0).sum())} subcortical voxels). "
        "Data = baseline * (1 + activation @ X[:, :5] + "
        "drift) + AR(1) noise, float32; ground truth (sentence and speaker effect maps) in 'truth'. "
        "See simulate_cifti."
    )
