"""nilearn surface data: ``SurfaceImage`` runs and maps in, ``SurfaceImage`` maps out.

nilearn holds a :class:`nilearn.surface.SurfaceImage`'s data in memory, one
array per hemisphere ("part"), and masks it with a
:class:`nilearn.maskers.SurfaceMasker` into a ``(n_samples, n_vertices)``
matrix. daskglm takes that matrix as it takes a CIFTI run
(:func:`daskglm.io.cifti.grid_image`): ``n_vertices x 1 x 1`` "volumes" on an identity grid,
vertex ``g`` of the masked vector being voxel ``(g, 0, 0)``, so that ingestion,
the fit, contrasts and fixed effects are the volume ones. Maps go back
through the same masker's ``inverse_transform``: the meshes, the mask and the
hemisphere layout are nilearn's.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["is_surface", "fixed_effects_masker", "masked_vertices"]


def is_surface(obj: Any) -> bool:
    """Whether ``obj`` is nilearn surface data or a surface masker."""
    from nilearn.maskers import SurfaceMasker
    from nilearn.surface import SurfaceImage

    return isinstance(obj, (SurfaceImage, SurfaceMasker))


def fixed_effects_masker(mask: Any, first: Any) -> Any:
    """The fitted ``SurfaceMasker`` nilearn's ``compute_fixed_effects`` uses for surface maps.

    Parameters
    ----------
    mask : SurfaceMasker, SurfaceImage or None
        A masker (fitted if it is not), a mask image, or None: every vertex of
        ``first``'s meshes, as nilearn's ``SurfaceMasker().fit(first)``.
    first : nilearn.surface.SurfaceImage
        The first contrast map.

    Returns
    -------
    nilearn.maskers.SurfaceMasker
    """
    from nilearn.maskers import SurfaceMasker
    from nilearn.surface import SurfaceImage

    if isinstance(mask, SurfaceMasker):
        with warnings.catch_warnings():  # nilearn's own filter: a masker given a mask image
            warnings.filterwarnings("ignore", message=r".*Generation of a mask.*")
            return mask.fit()
    if mask is None:
        return SurfaceMasker(standardize=None).fit(first)
    if isinstance(mask, SurfaceImage):
        return SurfaceMasker(mask_img=mask, standardize=None).fit(first)
    raise TypeError(f"mask must be a SurfaceImage, a SurfaceMasker or None for surface maps; got "
                    f"{type(mask).__name__}")


def masked_vertices(masker: Any) -> tuple[np.ndarray, np.ndarray]:
    """Where each masked element of a fitted ``SurfaceMasker`` lies: its part and its vertex.

    Parameters
    ----------
    masker : nilearn.maskers.SurfaceMasker
        Fitted.

    Returns
    -------
    part : ndarray of str, shape (n_elements,)
        The mesh part (nilearn's hemisphere name, ``"left"``, ``"right"``).
    vertex : ndarray of int64, shape (n_elements,)
        The vertex index within its part.
    """
    parts, vertices = [], []
    for name, mask in masker.mask_img_.data.parts.items():
        inside = np.flatnonzero(np.asarray(mask).ravel())
        parts.append(np.full(inside.size, name))
        vertices.append(inside.astype(np.int64))
    return np.concatenate(parts), np.concatenate(vertices)
