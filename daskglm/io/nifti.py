"""The NIfTI edge: inspect runs from their header, read blocks of volumes, load
masks, and turn voxel vectors back into images.

Nothing here loads a whole run. :func:`inspect_run` reads the header only;
:func:`read_volumes` reads a block of volumes and is meant to run inside a Dask
task, given a path (never an array) so the graph stays small; within
:func:`kept_open`, a task's reads of one run share one open file. ``.nii.gz`` runs
are read through indexed_gzip with an index built once (:func:`build_gzip_index`)
and shipped to the tasks, so each task seeks straight to its volumes instead of
decompressing the file from the start.

Runs and masks may also be fsspec URLs (``s3://bucket/run.nii.gz``, with
``storage_options``): the header is read from the start of the object, blocks
of volumes with ranged reads (``.nii``) or through indexed_gzip over the
fsspec file object (``.nii.gz``), and a mask is read whole (it is small).
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import hashlib
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib

from .cifti import GRID_AFFINE, brain_models, cifti_t_r, is_cifti, read_cifti_volumes
from .remote import is_url, object_info, remote_identity, url_identity, url_to_fs

__all__ = [
    "NIFTI1_MAX_DIM",
    "nifti_image",
    "RunInfo",
    "is_url",
    "url_identity",
    "load_url_image",
    "open_image",
    "inspect_run",
    "read_volumes",
    "kept_open",
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
        Absolute path of the file (or its fsspec URL), ``None`` for an
        in-memory image.
    shape : tuple of 4 int
        (x, y, z, n_scans).
    affine : ndarray, shape (4, 4)
    t_r : float or None
        Repetition time in seconds from the header (``None`` when it says 0).
    compressed : bool
        Whether the file is gzip-compressed.
    provenance : dict
        JSON-able identity of the source: path, size and mtime for a file;
        URL, size and ETag (or modification time) for a remote object; a
        content hash for an in-memory image.
    data_bytes : int
        Bytes of the uncompressed file: header, extensions and voxel data.
    """

    path: str | None
    shape: tuple[int, int, int, int]
    affine: np.ndarray
    t_r: float | None
    compressed: bool
    provenance: dict
    data_bytes: int = 0

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


def _nifti_class(first: bytes) -> type | None:
    """``Nifti1Image`` or ``Nifti2Image`` by a header's first 4 bytes (``sizeof_hdr``: 348
    or 540, in either byte order), or None when they are neither."""
    sizes = {int.from_bytes(first, "little"), int.from_bytes(first, "big")} if len(first) == 4 else set()
    return nib.Nifti1Image if 348 in sizes else nib.Nifti2Image if 540 in sizes else None


def _image_from_stream(fobj: Any) -> nib.Nifti1Image:
    """A NIfTI-1 or NIfTI-2 image over an open binary stream; reads the header only."""
    start = fobj.tell()
    first = fobj.read(4)
    fobj.seek(start)
    klass = _nifti_class(first)
    if klass is None:
        raise ValueError(f"not a NIfTI-1/2 header (sizeof_hdr bytes {first!r})")
    return klass.from_stream(fobj)


def _url_header(url: str, role: str, storage_options: dict | None) -> tuple[Any, dict]:
    """Header-only image of a remote run (its data proxy is not usable) and the object's info."""
    fs, path, info = object_info(url, role, storage_options)
    try:
        with fs.open(path, "rb") as raw:
            fobj = gzip.GzipFile(fileobj=raw, mode="rb") if url.endswith(".gz") else raw
            return _image_from_stream(fobj), info
    except Exception as exc:
        raise ValueError(f"{role} {url!r} is not a readable NIfTI image: {exc}") from exc


def load_url_image(url: str, storage_options: dict | None = None, role: str = "image") -> Any:
    """Read a whole (small) NIfTI image from an fsspec URL into memory.

    Parameters
    ----------
    url : str
        ``.nii`` or ``.nii.gz`` object, e.g. ``s3://bucket/mask.nii.gz``.
    storage_options : dict, optional

    Returns
    -------
    nibabel.Nifti1Image or Nifti2Image
        Backed by an in-memory copy of the file.
    """
    fs, path, _ = object_info(url, role, storage_options)
    try:
        raw = fs.cat_file(path)
        if url.endswith(".gz"):
            raw = gzip.decompress(raw)
        img = _image_from_stream(io.BytesIO(raw))
        return img.__class__(np.asanyarray(img.dataobj), img.affine, img.header)
    except Exception as exc:
        raise ValueError(f"{role} {url!r} is not a readable NIfTI image: {exc}") from exc


def _gzip_problem(path: str) -> str | None:
    """What is wrong with a local ``.gz`` file nibabel could not open, if it is the compression.

    Only called on that error path: decompresses the whole file once.
    """
    import zlib

    try:
        with gzip.open(path, "rb") as fobj:
            while fobj.read(1 << 24):
                pass
    except gzip.BadGzipFile as exc:
        if "Not a gzipped file" in str(exc):
            return "is not gzip-compressed, although its name ends in .gz"
        return f"is a corrupt or truncated gzip file: {exc}"
    except EOFError as exc:
        return f"is a corrupt or truncated gzip file (truncated): {exc}"
    except (OSError, zlib.error) as exc:
        return f"is a corrupt or truncated gzip file: {exc}"
    return None


def load_image(path: str) -> nib.spatialimages.SpatialImage:
    """``nibabel.load(path)``, reading a local ``.nii.gz`` header through Python's gzip.

    nibabel opens ``.gz`` files with indexed_gzip when it is installed, whose
    first read decompresses a large buffer: many times slower for a header
    (BENCHMARKS.md, "Second round"). The image is the one nibabel would make: file-backed
    (its array proxy opens the file by name when asked for data), picklable.

    Parameters
    ----------
    path : str
        A local file.

    Returns
    -------
    nibabel image
    """
    if not path.endswith(".gz"):
        return nib.load(path)
    try:
        with gzip.open(path, "rb") as fobj:
            klass = _nifti_class(fobj.read(4))
            if klass is None:
                return nib.load(path)  # not NIfTI: nibabel's own sniffing (and message)
            fobj.seek(0)
            header = klass.header_class.from_fileobj(fobj)
    except PermissionError:
        raise
    except (OSError, EOFError, nib.spatialimages.HeaderDataError):
        return nib.load(path)  # not gzip, truncated, a bad header: nibabel names the problem
    # As nibabel's from_file_map: the header's own affine (an equal affine leaves the header as read).
    return klass(klass.ImageArrayProxy(path, header.copy()), header.get_best_affine(), header,
                 file_map=klass.filespec_to_file_map(path))


#: The largest dimension a NIfTI-1 header holds; beyond it nibabel writes its "large vector Freesurfer hack"
#: (with a warning at every image): CIFTI grayordinates and surface vertices on the identity grid.
NIFTI1_MAX_DIM = 32767


def nifti_image(data: Any, affine: Any, header: Any = None) -> nib.Nifti1Image:
    """A NIfTI image of ``data``: NIfTI-1, or NIfTI-2 (a ``Nifti1Image`` subclass) past NIfTI-1's dimensions.

    Parameters
    ----------
    data : array_like, shape (x, y, z) or (x, y, z, t)
    affine : ndarray, shape (4, 4)
    header : nibabel header, optional

    Returns
    -------
    nibabel.Nifti1Image
        A ``Nifti2Image`` when a dimension exceeds :data:`NIFTI1_MAX_DIM`.
    """
    klass = nib.Nifti2Image if max(np.shape(data), default=0) > NIFTI1_MAX_DIM else nib.Nifti1Image
    return klass(data, affine, header)


def open_image(run: Any, role: str) -> tuple[Any, str | None]:
    """Open a local path (its header only, :func:`load_image`) or accept a nibabel image.

    Parameters
    ----------
    run : str, path or nibabel image
    role : str
        How messages name it (``"mask image"``, ``"contrast_imgs[2]"``).

    Returns
    -------
    (image, str or None)
        The image and its absolute path, None for an image in memory.

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError, ValueError, TypeError
        Naming ``role`` and the path.
    """
    if isinstance(run, (str, os.PathLike)):
        path = Path(run).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{role} not found: {str(path)!r}")
        if path.is_dir():
            raise IsADirectoryError(f"{role} {str(path)!r} is a directory, not a NIfTI file")
        try:
            img = load_image(str(path))
        except PermissionError as exc:  # a file system problem, not a bad value: keep its type
            raise PermissionError(exc.errno, f"{role} {str(path)!r} cannot be read: {exc.strerror}",
                                  str(path)) from exc
        except Exception as exc:
            problem = _gzip_problem(str(path)) if path.name.endswith(".gz") else None
            raise ValueError(f"{role} {str(path)!r} {problem or f'is not a readable NIfTI image: {exc}'}") from exc
        if isinstance(img, nib.GiftiImage):
            raise ValueError(f"{role} {str(path)!r} is a GIFTI file: surface runs are nilearn SurfaceImages "
                             "(FirstLevelModel().fit(SurfaceImage(mesh, {'left': ..., 'right': ...})), "
                             "first_level_from_bids or daskglm bids with space 'fsaverage5')")
        return img, str(path.resolve())
    if isinstance(run, (nib.spatialimages.SpatialImage, nib.Cifti2Image)):
        filename = run.get_filename()
        in_memory = not isinstance(run.dataobj, nib.arrayproxy.ArrayProxy)
        return run, (None if in_memory or filename is None else str(Path(filename).resolve()))
    raise TypeError(f"{role} must be a path or a nibabel image; got {type(run).__name__}")


def content_sha1(img: Any) -> str:
    """SHA-1 of an in-memory image's voxel data (its identity when it has no file)."""
    return hashlib.sha1(np.ascontiguousarray(np.asanyarray(img.dataobj)).view(np.uint8)).hexdigest()


def inspect_run(
    run: str | os.PathLike | nib.spatialimages.SpatialImage, storage_options: dict | None = None
) -> RunInfo:
    """Read a run's header (never its data) and check it is a usable 4D run.

    Parameters
    ----------
    run : path, fsspec URL or nibabel image
    storage_options : dict, optional
        fsspec options for a URL (ignored otherwise).

    Returns
    -------
    RunInfo

    Raises
    ------
    FileNotFoundError, IsADirectoryError, ValueError
        With the file name and the problem.
    """
    remote = None
    if is_url(run) and is_cifti(run):
        raise NotImplementedError(f"{run!r}: CIFTI runs are read from local files only for now; copy it locally")
    if is_url(run):
        img, remote = _url_header(run, "run image", storage_options)
        path = run
    else:
        img, path = open_image(run, "run image")
    name = repr(path) if path else "in-memory run image"
    shape = tuple(int(s) for s in img.shape)
    t_r = None
    if isinstance(img, nib.Cifti2Image):  # grayordinates as (n, 1, 1) "volumes" (see daskglm.io.cifti)
        series, models = brain_models(img, name)
        shape, t_r = (len(models), 1, 1, len(series)), cifti_t_r(series)
    if 0 in shape:  # nilearn's word for it, checked first
        raise ValueError(f"{name} is empty: shape {shape}")
    if len(shape) != 4:
        raise ValueError(
            f"{name} must be 4D (x, y, z, time); got {len(shape)}D shape {shape}"
        )
    nifti_header = img.nifti_header if isinstance(img, nib.Cifti2Image) else img.header
    expected = int(nifti_header.get_data_offset()) + int(np.prod(shape)) * img.get_data_dtype().itemsize
    if path is not None:
        if remote is not None:
            provenance = remote_identity(path, remote)
            size = provenance["size"]
        else:
            stat = os.stat(path)
            size = stat.st_size
            provenance = {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        compressed = path.endswith(".gz")
        if not compressed and size < expected:
            raise ValueError(
                f"{name} is truncated: {size} bytes on disk, its header "
                f"announces {expected}"
            )
    else:
        compressed = False
        provenance = {"sha1": content_sha1(img), "shape": list(shape)}
    cifti = isinstance(img, nib.Cifti2Image)
    return RunInfo(
        path=path,
        shape=shape,  # type: ignore[arg-type]
        affine=GRID_AFFINE.copy() if cifti else np.asarray(img.affine, dtype=float),
        t_r=t_r if cifti else _header_t_r(img.header),
        compressed=compressed,
        provenance=provenance,
        data_bytes=expected,
    )


@contextlib.contextmanager
def _gzip_reader(path: str, storage_options: dict | None, **kwargs: Any) -> Iterator[Any]:
    """indexed_gzip over a local file (by name) or over an fsspec file object (URL)."""
    import indexed_gzip

    if not is_url(path):
        with indexed_gzip.IndexedGzipFile(path, **kwargs) as fobj:
            yield fobj
        return
    fs, fspath = url_to_fs(path, storage_options)
    with fs.open(fspath, "rb") as raw:
        with indexed_gzip.IndexedGzipFile(fileobj=raw, **kwargs) as fobj:
            yield fobj


def build_gzip_index(path: str, uncompressed_bytes: int, storage_options: dict | None = None) -> bytes:
    """Decompress a ``.nii.gz`` once and return an indexed_gzip seek index.

    Parameters
    ----------
    path : str
        Local path or fsspec URL.
    uncompressed_bytes : int
        Expected size of the decompressed file (to space the seek points).
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    bytes
        The exported index, for :func:`read_volumes`.

    Raises
    ------
    ValueError
        When the file is truncated or its compressed data is corrupt.
    """
    spacing = max(MIN_GZIP_SPACING, int(uncompressed_bytes // MAX_GZIP_POINTS))
    try:
        with _gzip_reader(path, storage_options, spacing=spacing) as fobj:
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


def _open_image(path: str, gzip_index: bytes | None, storage_options: dict | None,
                stack: contextlib.ExitStack) -> Any:
    """The run's image with a usable data proxy, its files held open by ``stack``; None for a CIFTI file
    (read by :func:`daskglm.io.cifti.read_cifti_volumes`)."""
    if gzip_index is not None:
        fobj = stack.enter_context(_gzip_reader(path, storage_options))
        fobj.import_index(fileobj=io.BytesIO(gzip_index))
        return _image_from_stream(fobj)
    if is_url(path):
        fs, fspath = url_to_fs(path, storage_options)
        raw = stack.enter_context(fs.open(fspath, "rb"))
        fobj = stack.enter_context(igzip.IGzipFile(fileobj=raw, mode="rb")) if path.endswith(".gz") else raw
        return _image_from_stream(fobj)
    if is_cifti(path):
        return None
    if path.endswith(".nii.gz"):  # read from the start: one stream serves a kept_open block's reads in order
        return _image_from_stream(stack.enter_context(igzip.IGzipFile(path, mode="rb")))
    return nib.load(path)  # an uncompressed local file: each read opens it, at no cost worth keeping


#: What reading a gzip stream raises for a corrupt or truncated file (ISA-L's inflate has its own error).
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, isal_zlib.error)


#: The run :func:`kept_open` holds open in this thread (or task): ``(path, index identity, image)``.
_KEPT: contextvars.ContextVar[tuple[str, int, Any] | None] = contextvars.ContextVar("daskglm_kept_open",
                                                                                     default=None)


@contextlib.contextmanager
def kept_open(path: str, gzip_index: bytes | None = None, storage_options: dict | None = None) -> Iterator[None]:
    """Within the block, :func:`read_volumes` of ``path`` reads through one open file.

    A task that reads its volumes a few at a time opens the run (and, for a
    ``.nii.gz``, loads its seek index) once, and each read continues the
    stream where the previous one stopped, instead of seeking back to a seek
    point: for 3 mm runs of 240 scans, reading in steps of 9 volumes took
    0.74 s instead of 1.67 s per run (BENCHMARKS.md, "Many ordinary subjects").
    A ``.nii.gz`` without seek index is one gzip stream read from its start
    and, when the block ends without error, to its end, so that its checksum
    and length are verified: a corrupt or truncated file is an error even when
    the volumes read decompressed (an index pass checks them otherwise).

    Parameters
    ----------
    path, gzip_index, storage_options
        As :func:`read_volumes`.

    Raises
    ------
    ValueError
        Naming the file, when it cannot be opened, or when a gzip stream read
        without seek index is corrupt or truncated.
    """
    with contextlib.ExitStack() as stack:
        try:
            img = _open_image(path, gzip_index, storage_options, stack)
        except Exception as exc:
            raise ValueError(f"{path!r}: cannot open the run: {exc}") from exc
        token = _KEPT.set((path, id(gzip_index), img))
        try:
            yield
        finally:
            _KEPT.reset(token)
        stream = getattr(getattr(img, "dataobj", None), "file_like", None)
        if gzip_index is None and isinstance(stream, gzip.GzipFile):
            try:
                while stream.read(2**24):
                    pass
            except _GZIP_ERRORS as exc:
                raise _broken_stream(path, img, exc) from exc


def read_volumes(
    path: str, start: int, stop: int, gzip_index: bytes | None = None,
    storage_options: dict | None = None, box: tuple[slice, slice, slice] | None = None,
) -> np.ndarray:
    """Read volumes ``start:stop`` of a run straight from its file, whole or within a box.

    With ``box``, only the bytes the box needs are read where the format lets a
    reader seek: nibabel reads an uncompressed ``.nii`` (local or by fsspec
    range requests) in runs of contiguous bytes, i.e. the box's z-planes of
    each volume (NIfTI is x-fastest), so a box of a fifth of the planes reads a
    fifth of the file. A ``.nii.gz`` cannot skip: reaching byte ``n`` means
    decompressing from the nearest seek point (``gzip_index``) up to ``n``, so a
    box saves the copy out of the stream but little of the decompression
    (BENCHMARKS.md, "Region-of-interest masks").

    Inside :func:`kept_open` of the same run, the run is not opened again.

    Parameters
    ----------
    path : str
        Local path or fsspec URL.
    start, stop : int
        Half-open range of volumes.
    gzip_index : bytes, optional
        From :func:`build_gzip_index`, for ``.nii.gz`` files.
    storage_options : dict, optional
        fsspec options for a URL.
    box : tuple of 3 slice, optional
        Where in each volume to read (e.g. :class:`daskglm.kernels.volume.Crop`'s ``slices``);
        whole volumes by default.

    Returns
    -------
    ndarray, shape (x, y, z, stop - start) or (bx, by, bz, stop - start)
        In the file's dtype (scaled by the header's slope/intercept if any).
    """
    where = (*(box or (slice(None),) * 3), slice(start, stop))
    img = None
    try:
        with contextlib.ExitStack() as stack:
            kept = _KEPT.get()
            if kept is not None and kept[:2] == (path, id(gzip_index)):
                img = kept[2]
            else:
                img = _open_image(path, gzip_index, storage_options, stack)
            if img is None:
                return read_cifti_volumes(path, start, stop)[where[:3]]
            return np.asanyarray(img.dataobj[where])
    except Exception as exc:
        # A gzip stream read from its start finds a truncated or corrupt file here, not in an index pass.
        raise _broken_stream(path, img, exc) or ValueError(
            f"{path!r}: cannot read volumes {start}..{stop - 1}: {exc}") from exc


def _broken_stream(path: str, img: Any, exc: BaseException) -> ValueError | None:
    """The error naming a truncated or corrupt ``.nii.gz`` read as one gzip stream (as
    :func:`build_gzip_index` names them), or None for any other error."""
    if not isinstance(exc, _GZIP_ERRORS):
        return None
    stream = getattr(getattr(img, "dataobj", None), "file_like", None)
    if isinstance(exc, EOFError) and isinstance(stream, gzip.GzipFile):
        header = img.header
        announced = int(header.get_data_offset()) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
        return ValueError(f"{path!r} is truncated: {stream.tell()} bytes after decompression, its header "
                          f"announces {announced}")
    return ValueError(f"{path!r} is a corrupt or truncated gzip file: {exc}")


def load_mask(mask_img: Any, storage_options: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load a binary mask on its own grid (nilearn's ``load_mask_img`` checks).

    Where the analysis then happens (the run's grid, a target grid, or the
    mask's) is decided by :func:`daskglm.io.grid.analysis_grid`.

    Parameters
    ----------
    mask_img : path, fsspec URL or nibabel image
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    mask : ndarray of bool, shape (x, y, z)
    affine : ndarray, shape (4, 4)
    provenance : dict
        JSON-able identity of the mask (file identity and voxel hash).
    """
    from nilearn.masking import load_mask_img

    if is_url(mask_img):
        img, path = load_url_image(mask_img, storage_options, "mask image"), mask_img
    else:
        img, path = open_image(mask_img, "mask image")
    name = repr(path) if path else "in-memory mask image"
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        img = nifti_image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"mask {name} must be 3D; got shape {shape}")
    try:
        mask_loaded, affine = load_mask_img(img)
    except Exception as exc:
        raise ValueError(f"mask {name} is not a usable binary mask: {exc}") from exc
    mask = np.asarray(mask_loaded, dtype=bool)
    digest = hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()
    return mask, np.asarray(affine, dtype=np.float64), {"source": path or "in-memory", "voxels_sha1": digest}


def mask_from_mean(mean: np.ndarray, affine: np.ndarray, target_affine: Any = None,
                   target_shape: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """nilearn's ``compute_epi_mask`` on a mean EPI volume.

    Parameters
    ----------
    mean : ndarray, shape (x, y, z)
    affine : ndarray, shape (4, 4)
    target_affine, target_shape : optional
        As ``compute_epi_mask``: the mean is resampled onto this grid first.

    Returns
    -------
    mask : ndarray of bool
        On the target grid if given, else on the mean's.
    affine : ndarray, shape (4, 4)
    """
    from nilearn.masking import compute_epi_mask

    img = compute_epi_mask(nifti_image(mean, affine), target_affine=target_affine,
                           target_shape=target_shape)
    mask = np.asarray(img.dataobj) > 0
    if not mask.any():
        raise ValueError(
            "the mask computed from the mean EPI (nilearn's compute_epi_mask) is "
            "empty; give mask_img explicitly"
        )
    return mask, np.asarray(img.affine, dtype=np.float64)
