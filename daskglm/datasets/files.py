"""Deterministic, atomic, streaming writers of the simulated datasets' files.

Used by :mod:`daskglm.datasets.fiac` and :mod:`daskglm.datasets.bids_sim`. Each file is
written to a hidden temporary name and renamed into place on success (an
interrupted simulation leaves no partial file under a real name), with fixed
timestamps in gzip and zip headers so that the same parameters give
byte-identical files; NIfTI volumes are streamed one at a time, compressed in
a thread while the next one is simulated.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import queue
import threading
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np

__all__ = ["nifti_header", "write_nifti", "write_npz", "write_text"]


@contextmanager
def _atomic_open(path: Path, compresslevel: int | None = None) -> Iterator[BinaryIO]:
    """Write to a hidden temporary file (gzip if ``compresslevel``), rename on success."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as raw:
            if compresslevel is None:
                yield raw
            else:  # no file name and mtime=0 in the gzip header: byte-identical output
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                   compresslevel=compresslevel, mtime=0) as gz:
                    yield gz  # type: ignore[misc]
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _pipe(chunks: Iterable[bytes], fh: BinaryIO, depth: int = 4) -> None:
    """Write ``chunks`` to ``fh`` from a thread (zlib releases the GIL, so compressing
    overlaps with simulating); at most ``depth`` chunks wait, so memory stays bounded."""
    todo: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            while (item := todo.get()) is not None:
                fh.write(item)
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)
            while todo.get() is not None:
                pass

    worker = threading.Thread(target=consume, name="daskglm-writer", daemon=True)
    worker.start()
    try:
        for chunk in chunks:
            if errors:
                break
            todo.put(chunk)
    finally:
        todo.put(None)
        worker.join()
    if errors:
        raise errors[0]


def nifti_header(shape: tuple[int, ...], dtype: type, affine: np.ndarray,
                  t_r: float | None = None) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    zooms = tuple(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    hdr.set_zooms(zooms + ((t_r,) if len(shape) == 4 else ()))
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_slope_inter(1.0, 0.0)  # no scaling: nibabel reads back the raw dtype
    hdr.set_data_offset(352)  # 348-byte header + 4-byte empty extension flag
    hdr["descrip"] = b"daskglm simulated FIAC"
    return hdr


def write_nifti(path: Path, hdr: nib.Nifti1Header, volumes: Iterable[np.ndarray],
                 compresslevel: int | None) -> None:
    """Stream a NIfTI-1 file: header, zero padding, then each volume in F order."""
    dtype = hdr.get_data_dtype().newbyteorder("<")
    expected = hdr.get_data_shape()[:3]

    def chunks() -> Iterator[bytes]:
        block = hdr.binaryblock
        yield block + b"\x00" * (int(hdr.get_data_offset()) - len(block))
        for vol in volumes:
            if vol.shape != expected:
                raise ValueError(f"volume shape {vol.shape} != header shape {expected}")
            yield vol.astype(dtype, copy=False).tobytes(order="F")

    with _atomic_open(path, compresslevel) as fh:
        _pipe(chunks(), fh)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed``, with fixed zip timestamps (byte-identical output)."""
    with _atomic_open(path) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


def write_text(path: Path, text: str) -> None:
    with _atomic_open(path) as fh:
        fh.write(text.encode())


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """Where the simulators write: ``data_dir``, else ``$DASKGLM_DATA``, else ``~/.cache/daskglm``."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("DASKGLM_DATA")
    return Path(env) if env else Path.home() / ".cache" / "daskglm"


def parameters_folder(root: Path, stem: str, params: dict) -> tuple[Path, str]:
    """The folder of a simulation's files, named by ``stem`` and a digest of all its parameters.

    Returns
    -------
    folder : Path
        ``root / f"{stem}_{digest}"``.
    text : str
        The parameters as JSON, what :func:`is_complete` compares with the folder's marker.
    """
    text = json.dumps(params, sort_keys=True, indent=1)
    return root / f"{stem}_{hashlib.sha1(text.encode()).hexdigest()[:10]}", text


def is_complete(marker: Path, text: str, paths: Iterable[Path]) -> bool:
    """Whether a simulation's folder holds all ``paths`` and a ``marker`` written with these parameters.

    The marker is written last, so a folder an interrupted run left behind is not complete.
    """
    if not marker.is_file() or not all(Path(p).is_file() for p in paths):
        return False
    try:
        return marker.read_text() == text
    except OSError:
        return False
