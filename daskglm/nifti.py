"""The NIfTI edge: inspect runs from their header, read blocks of volumes, load
masks, and turn voxel vectors back into images.

Nothing here loads a whole run. :func:`inspect_run` reads the header only;
:func:`read_volumes` reads a block of volumes and is meant to run inside a Dask
task, given a path (never an array) so the graph stays small. ``.nii.gz`` runs
are read through indexed_gzip with an index built once (:func:`build_gzip_index`)
and shipped to the tasks, so each task seeks straight to its volumes instead of
decompressing the file from the start.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "RunInfo",
    "inspect_run",
    "read_volumes",
    "build_gzip_index",
    "load_mask",
    "mask_from_mean",
]

#: Bytes of uncompressed data between two seek points of a gzip index, at least.
MIN_GZIP_SPACING = 2**20
#: Seek points per gzip index, at most (each costs a 32 KiB window).
MAX_GZIP_POINTS = 256


@dataclass(frozen=True)
class RunInfo:
    """What the header of a 4D run says, and where the run comes from.

    Attributes
    ----------
    path : str or None
        Absolute path of the file, ``None`` for an in-memory image.
    shape : tuple of 4 int
        (x, y, z, n_scans).
    affine : ndarray, shape (4, 4)
    t_r : float or None
        Repetition time in seconds from the header (``None`` when it says 0).
    compressed : bool
        Whether the file is gzip-compressed.
    provenance : dict
        JSON-able identity of the source: path, size and mtime for a file, a
        content hash for an in-memory image.
    """

    path: str | None
    shape: tuple[int, int, int, int]
    affine: np.ndarray
    t_r: float | None
    compressed: bool
    provenance: dict

    @property
    def n_scans(self) -> int:
        return self.shape[3]

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return self.shape[:3]


def _header_t_r(header: Any) -> float | None:
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3]:
        return None
    t_r = float(zooms[3])
    try:
        unit = header.get_xyzt_units()[1]
    except Exception:  # Analyze-like headers have no units
        unit = "sec"
    if unit == "msec":
        t_r /= 1000.0
    elif unit == "usec":
        t_r /= 1e6
    return t_r


def _load_image(run: Any, role: str) -> tuple[Any, str | None]:
    """Open a path (header only) or accept an image; return (image, abs path or None)."""
    if isinstance(run, (str, os.PathLike)):
        path = Path(run).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{role} not found: {str(path)!r}")
        if path.is_dir():
            raise IsADirectoryError(f"{role} {str(path)!r} is a directory, not a NIfTI file")
        try:
            img = nib.load(str(path))
        except Exception as exc:
            raise ValueError(f"{role} {str(path)!r} is not a readable NIfTI image: {exc}") from exc
        return img, str(path.resolve())
    if isinstance(run, nib.spatialimages.SpatialImage):
        filename = run.get_filename()
        in_memory = not isinstance(run.dataobj, nib.arrayproxy.ArrayProxy)
        return run, (None if in_memory or filename is None else str(Path(filename).resolve()))
    raise TypeError(f"{role} must be a path or a nibabel image; got {type(run).__name__}")


def content_sha1(img: Any) -> str:
    """SHA-1 of an in-memory image's voxel data (its identity when it has no file)."""
    return hashlib.sha1(np.ascontiguousarray(np.asanyarray(img.dataobj)).view(np.uint8)).hexdigest()


def inspect_run(run: str | os.PathLike | nib.spatialimages.SpatialImage) -> RunInfo:
    """Read a run's header (never its data) and check it is a usable 4D run.

    Parameters
    ----------
    run : path or nibabel image

    Returns
    -------
    RunInfo

    Raises
    ------
    FileNotFoundError, IsADirectoryError, ValueError
        With the file name and the problem.
    """
    img, path = _load_image(run, "run image")
    name = repr(path) if path else "in-memory run image"
    shape = tuple(int(s) for s in img.shape)
    if len(shape) != 4:
        raise ValueError(
            f"{name} must be 4D (x, y, z, time); got {len(shape)}D shape {shape}"
        )
    if shape[3] < 1:
        raise ValueError(f"{name} has no volume: shape {shape}")
    if path is not None:
        stat = os.stat(path)
        expected = int(img.header.get_data_offset()) + int(np.prod(shape)) * img.get_data_dtype().itemsize
        compressed = path.endswith(".gz")
        if not compressed and stat.st_size < expected:
            raise ValueError(
                f"{name} is truncated: {stat.st_size} bytes on disk, its header "
                f"announces {expected}"
            )
        provenance = {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    else:
        compressed = False
        provenance = {"sha1": content_sha1(img), "shape": list(shape)}
    return RunInfo(
        path=path,
        shape=shape,  # type: ignore[arg-type]
        affine=np.asarray(img.affine, dtype=float),
        t_r=_header_t_r(img.header),
        compressed=compressed,
        provenance=provenance,
    )


def build_gzip_index(path: str, uncompressed_bytes: int) -> bytes:
    """Decompress a ``.nii.gz`` once and return an indexed_gzip seek index.

    Parameters
    ----------
    path : str
    uncompressed_bytes : int
        Expected size of the decompressed file (to space the seek points).

    Returns
    -------
    bytes
        The exported index, for :func:`read_volumes`.

    Raises
    ------
    ValueError
        When the file is truncated or its compressed data is corrupt.
    """
    import indexed_gzip

    spacing = max(MIN_GZIP_SPACING, int(uncompressed_bytes // MAX_GZIP_POINTS))
    try:
        with indexed_gzip.IndexedGzipFile(path, spacing=spacing) as fobj:
            fobj.build_full_index()
            fobj.seek(0, os.SEEK_END)
            size = fobj.tell()
            out = io.BytesIO()
            fobj.export_index(fileobj=out)
    except Exception as exc:
        raise ValueError(f"{path!r} is a corrupt or truncated gzip file: {exc}") from exc
    if size < uncompressed_bytes:
        raise ValueError(
            f"{path!r} is truncated: {size} bytes after decompression, its header "
            f"announces {uncompressed_bytes}"
        )
    return out.getvalue()


def read_volumes(
    path: str, start: int, stop: int, gzip_index: bytes | None = None
) -> np.ndarray:
    """Read volumes ``start:stop`` of a run straight from its file.

    Parameters
    ----------
    path : str
    start, stop : int
        Half-open range of volumes.
    gzip_index : bytes, optional
        From :func:`build_gzip_index`, for ``.nii.gz`` files.

    Returns
    -------
    ndarray, shape (x, y, z, stop - start)
        In the file's dtype (scaled by the header's slope/intercept if any).
    """
    try:
        if gzip_index is not None:
            import indexed_gzip

            with indexed_gzip.IndexedGzipFile(path) as fobj:
                fobj.import_index(fileobj=io.BytesIO(gzip_index))
                holder = nib.FileHolder(fileobj=fobj)
                img = nib.Nifti1Image.from_file_map({"header": holder, "image": holder})
                return np.asanyarray(img.dataobj[..., start:stop])
        img = nib.load(path)
        return np.asanyarray(img.dataobj[..., start:stop])
    except Exception as exc:
        raise ValueError(f"{path!r}: cannot read volumes {start}..{stop - 1}: {exc}") from exc


def _same_grid(affine_a: np.ndarray, shape_a: tuple, affine_b: np.ndarray, shape_b: tuple) -> bool:
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-4)


def load_mask(
    mask_img: Any, info: RunInfo
) -> tuple[np.ndarray, dict]:
    """Load a binary mask on the run's grid.

    A mask on another grid is resampled to the run's grid with nearest
    neighbour interpolation, with a warning.

    Parameters
    ----------
    mask_img : path or nibabel image
    info : RunInfo
        The run the mask applies to.

    Returns
    -------
    mask : ndarray of bool, shape (x, y, z)
    provenance : dict
        JSON-able identity of the mask (file identity and voxel hash).
    """
    from nilearn.image import resample_img
    from nilearn.masking import load_mask_img

    img, path = _load_image(mask_img, "mask image")
    name = repr(path) if path else "in-memory mask image"
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"mask {name} must be 3D; got shape {shape}")
    try:
        mask_loaded, _ = load_mask_img(img)
    except Exception as exc:
        raise ValueError(f"mask {name} is not a usable binary mask: {exc}") from exc
    mask = np.asarray(mask_loaded, dtype=bool)
    if not _same_grid(img.affine, shape, info.affine, info.volume_shape):
        warnings.warn(
            f"mask {name} (shape {shape}) is not on the grid of the run (shape "
            f"{info.volume_shape}): resampling it to the run with nearest-neighbour "
            "interpolation",
            UserWarning,
            stacklevel=3,
        )
        resampled = resample_img(
            nib.Nifti1Image(mask.astype(np.int8), img.affine),
            target_affine=info.affine,
            target_shape=info.volume_shape,
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
        mask = np.asarray(resampled.dataobj) > 0
        if not mask.any():
            raise ValueError(
                f"mask {name} has no voxel inside the field of view of the run "
                f"(shape {info.volume_shape}) after resampling"
            )
    digest = hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()
    return mask, {"source": path or "in-memory", "voxels_sha1": digest}


def mask_from_mean(mean: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """nilearn's ``compute_epi_mask`` on a mean EPI volume.

    Parameters
    ----------
    mean : ndarray, shape (x, y, z)
    affine : ndarray, shape (4, 4)

    Returns
    -------
    ndarray of bool, shape (x, y, z)
    """
    from nilearn.masking import compute_epi_mask

    mask = np.asarray(compute_epi_mask(nib.Nifti1Image(mean, affine)).dataobj) > 0
    if not mask.any():
        raise ValueError(
            "the mask computed from the mean EPI (nilearn's compute_epi_mask) is "
            "empty; give mask_img explicitly"
        )
    return mask
