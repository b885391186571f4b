"""Surface derivatives of :func:`daskglm.datasets.simulate_bids`: fsaverage5 GIFTI and fsLR CIFTI runs.

fMRIPrep writes, besides (or instead of) volume runs, the BOLD series resampled
to surfaces: one GIFTI time series per hemisphere on fsaverage5
(``..._hemi-L_space-fsaverage5_bold.func.gii``, ``hemi-R``) and a CIFTI-2 dense
time series of grayordinates (``..._space-fsLR_den-91k_bold.dtseries.nii``).
This module simulates them with the grayordinate generator of
:mod:`daskglm.datasets.cifti` (its layouts, ground truth and
:func:`~daskglm.datasets.cifti.cifti_run_blocks`), so the surface runs carry
the same FIAC design, blobs and noise model as :func:`~daskglm.datasets.simulate_cifti`:

* ``"fsLR"``: the grayordinates of a :func:`~daskglm.datasets.cifti.cifti_brain_model_axis`
  layout, written a block at a time by :func:`~daskglm.datasets.cifti.write_dtseries`.
  ``"91k"`` has fsLR-91k's sizes (91,282 grayordinates, files named
  ``den-91k``); ``"small"`` has fsaverage5-sized cortex and two thalami
  (19,158 grayordinates, files named ``den-19k``), for quick tests.
* ``"fsaverage5"``: every vertex of nilearn's bundled fsaverage5 meshes
  (10,242 per hemisphere). The cortex of the ``"small"`` layout *is*
  fsaverage5's, less a medial-wall cap of 881 (left) and 875 (right) vertices:
  those take the series of their nearest present vertex on the sphere (as
  resampling a volume gives neighbouring vertices near-equal series), so no
  vertex is constant. The layout's thalami are not written.

The geometry (present vertices, blobs), baseline and AR(1) fields come from
the dataset's seed and are shared by every subject, as the volume dataset
shares its mask and blobs; each subject's activation is its effect size times
the blob pattern, and each run's noise and drift are its own random streams.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.gifti import GiftiDataArray, GiftiImage, GiftiMetaData
from sklearn.utils import Bunch

from .cifti import CONTRASTS, cifti_brain_model_axis, cifti_ground_truth, cifti_run_blocks, write_dtseries
from .files import _atomic_open

__all__ = ["CIFTI_DENSITY", "HEMISPHERES", "SURFACE_SPACES", "gifti_series", "n_elements", "surface_geometry",
           "surface_truth", "write_surface_run"]

#: Surface spaces of :func:`~daskglm.datasets.simulate_bids`.
SURFACE_SPACES: tuple[str, ...] = ("fsaverage5", "fsLR")
#: The ``den-<label>`` of the fsLR files, by :mod:`~daskglm.datasets.cifti` layout.
CIFTI_DENSITY: dict[str, str] = {"91k": "91k", "small": "19k"}
#: BIDS ``hemi`` labels, nilearn's part names and GIFTI's structure names, per hemisphere.
HEMISPHERES: tuple[tuple[str, str, str], ...] = (("L", "left", "CortexLeft"), ("R", "right", "CortexRight"))
_CORTEX = ("CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT")
#: Run numbers given to cifti_run_blocks: subject k's run r is k * _RUN_STRIDE + r (its own streams).
_RUN_STRIDE = 1000


@functools.lru_cache(maxsize=2)
def _fsaverage5_sphere() -> tuple[np.ndarray, ...]:
    """Unit vectors of fsaverage5's sphere vertices, left and right (nilearn's bundled meshes)."""
    from nilearn.datasets import load_fsaverage

    sphere = load_fsaverage("fsaverage5")["sphere"]
    out = []
    for _, part, _ in HEMISPHERES:
        xyz = np.asarray(sphere.parts[part].coordinates, dtype=np.float64)
        out.append(xyz / np.linalg.norm(xyz, axis=1, keepdims=True))
    return tuple(out)


def _vertex_columns(axis: Any) -> list[np.ndarray]:
    """Per hemisphere, the grayordinate (column) of each fsaverage5 vertex: its own, or its nearest present one's."""
    spheres = _fsaverage5_sphere()
    columns = []
    for h, name in enumerate(_CORTEX):
        (sl, part), = [(sl, part) for structure, sl, part in axis.iter_structures() if structure == name]
        present = np.asarray(part.vertex)
        sphere = spheres[h]
        if part.nvertices[name] != len(sphere):
            raise ValueError(f"{name} has {part.nvertices[name]} vertices, fsaverage5 {len(sphere)}")
        cols = np.full(len(sphere), -1, dtype=np.int64)
        cols[present] = sl.start + np.arange(len(present))
        wall = np.flatnonzero(cols < 0)
        nearest = np.argmax(sphere[wall] @ sphere[present].T, axis=1)
        cols[wall] = cols[present[nearest]]
        columns.append(cols)
    return columns


def surface_geometry(space: str, layout: str, seed: int, ar_rho: tuple[float, float], noise_sd: float) -> Bunch:
    """What every subject's surface runs share: the grayordinates, the ground truth for an effect of 1.

    Parameters
    ----------
    space : {"fsaverage5", "fsLR"}
        The output space.
    layout : {"small", "91k"}
        The :mod:`~daskglm.datasets.cifti` layout (``"small"`` for fsaverage5).
    seed : int
        The dataset's seed (geometry, blobs, baseline and AR fields).
    ar_rho, noise_sd
        As :func:`~daskglm.datasets.cifti.cifti_ground_truth`.

    Returns
    -------
    sklearn.utils.Bunch
        ``space``, ``axis`` (the layout's brain-model axis), ``truth``
        (:func:`~daskglm.datasets.cifti.cifti_ground_truth` with effect size
        1), ``columns`` (fsaverage5: per hemisphere the grayordinate of each
        vertex; fsLR: None).
    """
    layout = "small" if space == "fsaverage5" else layout
    truth = cifti_ground_truth(layout, seed, 1.0, ar_rho, noise_sd)
    axis = cifti_brain_model_axis(layout, seed)
    columns = _vertex_columns(axis) if space == "fsaverage5" else None
    return Bunch(space=space, layout=layout, seed=seed, axis=axis, truth=truth, columns=columns)


def gifti_series(values: np.ndarray, t_r: float, structure: str) -> bytes:
    """One hemisphere's time series as a GIFTI file, the way fMRIPrep's ``.func.gii`` runs are written.

    FreeSurfer's ``mri_vol2surf`` (which fMRIPrep runs) writes one float32
    data array per scan, intent ``NIFTI_INTENT_TIME_SERIES`` with the TR in its
    ``TimeStep`` metadata (milliseconds, ``"%f"``), gzip-base64 encoded;
    fMRIPrep then sets ``AnatomicalStructurePrimary``.

    Parameters
    ----------
    values : ndarray, shape (n_scans, n_vertices)
    t_r : float
        Repetition time in seconds.
    structure : {"CortexLeft", "CortexRight"}

    Returns
    -------
    bytes
        The file (nibabel reads it back; nilearn's ``SurfaceImage`` loads it as
        ``(n_vertices, n_scans)``).
    """
    step = GiftiMetaData({"TimeStep": f"{1000 * t_r:f}"})
    arrays = [GiftiDataArray(np.ascontiguousarray(row, dtype=np.float32), intent="NIFTI_INTENT_TIME_SERIES",
                             datatype="NIFTI_TYPE_FLOAT32", meta=step) for row in values]
    return GiftiImage(darrays=arrays, meta=GiftiMetaData({"AnatomicalStructurePrimary": structure})).to_bytes()


def write_surface_run(paths: dict[str, Path], geometry: Bunch, effect: float, regressors: np.ndarray,
                      index: int, run: int, t_r: float, drift_size: float) -> None:
    """Write one subject's run: a dense time series (``paths["dtseries"]``) or two GIFTI (``paths["L"]``, ``"R"``).

    Parameters
    ----------
    paths : dict of str to pathlib.Path
        ``{"dtseries": ...}`` for fsLR, ``{"L": ..., "R": ...}`` for fsaverage5.
    geometry : sklearn.utils.Bunch
        From :func:`surface_geometry`.
    effect : float
        The subject's effect size (scales the blob pattern).
    regressors : ndarray, shape (n_scans, 5)
        The condition columns of the run's design.
    index, run : int
        1-based subject index and run: the noise and drift streams are
        ``cifti_run_blocks(..., seed, index * 1000 + run)``'s.
    t_r : float
        Repetition time in seconds.
    drift_size : float
        As :func:`~daskglm.datasets.cifti.cifti_run_blocks`.
    """
    truth = Bunch(**geometry.truth)
    truth.activation = (effect * geometry.truth.activation).astype(np.float32)
    n_scans = len(regressors)
    blocks = cifti_run_blocks(truth, regressors, geometry.seed, index * _RUN_STRIDE + run, drift_size)
    if geometry.columns is None:
        write_dtseries(paths["dtseries"], geometry.axis, t_r, n_scans, blocks)
        return
    data = np.concatenate(list(blocks), axis=1)  # (n_scans, n_grayordinates): a few MB
    for (label, _, structure), cols in zip(HEMISPHERES, geometry.columns):
        with _atomic_open(paths[label]) as fh:
            fh.write(gifti_series(data[:, cols], t_r, structure))


def surface_truth(geometry: Bunch) -> dict[str, np.ndarray]:
    """The ground truth per element of the space, for ``truth.npz`` (effect size 1; see :func:`surface_geometry`).

    Elements: fsLR's grayordinates in the brain-model axis' order (that of
    the dense scalar maps); fsaverage5's left vertices then right vertices
    (nilearn's ``SurfaceImage`` order). Every array over elements is ``(..., n)``.

    Returns
    -------
    dict of str to ndarray
        ``activation_pattern`` (float32, (5, n)), ``baseline`` (float32, (n,)),
        ``effects`` (float32, (2, n): the "sentence" and "speaker" contrasts of
        ``contrasts`` in data units, for an effect size of 1), ``effect_names``,
        ``contrasts``, ``blob_maps``, ``blob_names``, ``blob_betas``,
        ``blob_centers`` (element indices), ``ar_rho``; fsLR: ``structures``,
        ``vertex``, ``voxel``; fsaverage5: ``hemisphere`` ("left"/"right") and
        ``vertex``. fsaverage5 has the two cortical blobs only.
    """
    t = geometry.truth
    common = {"effect_names": np.array(list(CONTRASTS)), "contrasts": t.contrasts}
    if geometry.columns is None:
        keep = ["activation", "baseline", "effects", "blob_maps", "blob_names", "blob_betas", "blob_centers",
                "ar_rho", "structures", "vertex", "voxel"]
        out = {("activation_pattern" if k == "activation" else k): t[k] for k in keep}
        return {**out, **common}
    cols = np.concatenate(geometry.columns)
    n_left = len(geometry.columns[0])
    cortical = np.flatnonzero(np.isin(t.blob_structures, _CORTEX))
    centres = []
    for k in cortical:
        h = _CORTEX.index(str(t.blob_structures[k]))
        centres.append(h * n_left + int(t.vertex[t.blob_centers[k]]))
    return {
        "activation_pattern": t.activation[:, cols], "baseline": t.baseline[cols], "effects": t.effects[:, cols],
        "blob_maps": t.blob_maps[cortical][:, cols], "blob_names": t.blob_names[cortical],
        "blob_betas": t.blob_betas[cortical], "blob_centers": np.array(centres, dtype=np.int64),
        "ar_rho": t.ar_rho[cols],
        "hemisphere": np.repeat(np.array([part for _, part, _ in HEMISPHERES]), [len(c) for c in geometry.columns]),
        "vertex": np.concatenate([np.arange(len(c)) for c in geometry.columns]), **common,
    }


def n_elements(geometry: Bunch) -> int:
    """Grayordinates (fsLR) or vertices of both hemispheres (fsaverage5)."""
    return int(geometry.axis.size if geometry.columns is None else sum(len(c) for c in geometry.columns))

