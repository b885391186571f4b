"""daskglm.io.nifti.load_image against nibabel.load (the oracle) on the files it reads itself."""

from __future__ import annotations

import os
import pickle

import nibabel as nib
import numpy as np
import pytest

from daskglm.io.nifti import inspect_run, load_image


def _affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 2.0, 0.0], [-2.0, 0.0, 0.1], [0.0, 0.0, 3.0]]
    affine[:3, 3] = [1.0, 2.0, 3.0]
    return affine


@pytest.mark.parametrize("klass", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("sform_code", [0, 1, 2])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_load_image_is_nibabel_load(tmp_path, klass, sform_code, suffix):
    data = np.arange(4 * 5 * 6 * 3, dtype=np.int16).reshape(4, 5, 6, 3)
    img = klass(data, _affine())
    img.header.set_sform(_affine(), code=sform_code)
    img.header.set_qform(_affine(), code=0 if sform_code == 1 else 1)
    img.header["pixdim"][4] = 2.5
    path = str(tmp_path / f"run{suffix}")
    nib.save(img, path)
    got, expected = load_image(path), nib.load(path)
    assert type(got) is type(expected)
    assert got.header.binaryblock == expected.header.binaryblock
    np.testing.assert_array_equal(got.affine, expected.affine)
    assert got.get_filename() == expected.get_filename()
    assert isinstance(got.dataobj, nib.arrayproxy.ArrayProxy)
    np.testing.assert_array_equal(np.asanyarray(got.dataobj[..., 1]), data[..., 1])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(got)).get_fdata(), data)
    assert inspect_run(path).affine.tolist() == expected.affine.tolist()


def test_load_image_leaves_bad_files_to_nibabel(tmp_path):
    """Not gzip, gzip of something else: nibabel's own error, naming the file."""
    import gzip

    (tmp_path / "a.nii.gz").write_bytes(b"not gzip at all")
    with gzip.open(tmp_path / "b.nii.gz", "wb") as f:
        f.write(b"\x00" * 400)
    for name in ("a.nii.gz", "b.nii.gz"):
        with pytest.raises(Exception, match=name):
            load_image(str(tmp_path / name))


def test_a_gifti_file_is_refused_with_the_way_to_fit_surfaces(tmp_path):
    from nibabel.gifti import GiftiDataArray, GiftiImage

    path = tmp_path / "sub-01_hemi-L_space-fsaverage5_bold.func.gii"
    nib.save(GiftiImage(darrays=[GiftiDataArray(np.zeros(12, np.float32)) for _ in range(3)]), path)
    with pytest.raises(ValueError, match=r"run image '.*bold\.func\.gii' is a GIFTI file: surface runs are nilearn "
                                         r"SurfaceImages"):
        inspect_run(str(path))


# --------------------------------------------------------------------------- reading within a box


def _bytes_read() -> int:
    """Bytes this process has read by read(2) so far (Linux's rchar; page-cache hits included)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


@pytest.fixture(scope="module")
def scaled_run(tmp_path_factory):
    """A 64x64x30 run of 9 int16 volumes (8 KiB per z-plane) with a slope and intercept, as .nii and .nii.gz."""
    root = tmp_path_factory.mktemp("box")
    data = np.random.default_rng(3).integers(-300, 3000, size=(64, 64, 30, 9)).astype(np.int16)
    img = nib.Nifti1Image(data, _affine())
    img.header.set_slope_inter(0.5, 10.0)
    paths = {}
    for suffix in ("nii", "nii.gz"):
        paths[suffix] = str(root / f"run.{suffix}")
        nib.save(img, paths[suffix])
    return paths


@pytest.mark.parametrize("suffix", ["nii", "nii.gz", "memory"])
def test_read_volumes_within_a_box_is_that_box_of_the_whole_volumes(scaled_run, suffix):
    from daskglm.io.nifti import build_gzip_index, read_volumes

    path, index = scaled_run["nii" if suffix == "memory" else suffix], None
    if suffix == "nii.gz":
        index = build_gzip_index(path, inspect_run(path).data_bytes)
    if suffix == "memory":
        import uuid

        import fsspec

        url = f"memory://daskglm-test-{uuid.uuid4().hex}/run.nii"
        with open(path, "rb") as src, fsspec.open(url, "wb") as dst:
            dst.write(src.read())
        path = url
    expected = np.asanyarray(nib.load(scaled_run["nii"]).dataobj)  # the oracle: nibabel, whole and scaled
    box = (slice(3, 17), slice(0, 64), slice(11, 19))
    got = read_volumes(path, 2, 7, index, box=box)
    np.testing.assert_array_equal(got, expected[box + (slice(2, 7),)])
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(read_volumes(path, 2, 7, index), expected[..., 2:7])


def test_a_box_of_a_few_planes_reads_a_few_planes_of_an_uncompressed_run(scaled_run):
    """NIfTI is x-fastest: z-planes 11..18 of 30 are 8/30 of each volume's bytes, and only they are read."""
    from daskglm.io.nifti import read_volumes

    if not os.path.exists("/proc/self/io"):
        pytest.skip("needs Linux's /proc/self/io to count the bytes read")
    path = scaled_run["nii"]
    plane_bytes = 64 * 64 * 2
    before = _bytes_read()
    read_volumes(path, 1, 9)  # not all volumes: nibabel would map the whole file instead of reading it
    whole = _bytes_read() - before
    before = _bytes_read()
    read_volumes(path, 1, 9, box=(slice(3, 17), slice(0, 64), slice(11, 19)))
    boxed = _bytes_read() - before
    assert whole >= 8 * 30 * plane_bytes
    # 8 planes of each of the 8 volumes; Python's buffered reader reads by 8 KiB (the header too)
    assert boxed <= 8 * (8 * plane_bytes + 8192) + 8192


def test_reads_within_kept_open_share_one_open_file_and_read_the_same(scaled_run, monkeypatch):
    """A task's successive reads of one .nii.gz open it (and load its seek index) once; reads of another
    run, or outside the block, open their own."""
    import daskglm.io.nifti as nifti

    path = scaled_run["nii.gz"]
    index = nifti.build_gzip_index(path, inspect_run(path).data_bytes)
    expected = np.asanyarray(nib.load(scaled_run["nii"]).dataobj)
    opened = []
    real = nifti._open_image
    monkeypatch.setattr(nifti, "_open_image", lambda *args: opened.append(args[0]) or real(*args))
    box = (slice(3, 17), slice(0, 64), slice(11, 19))
    with nifti.kept_open(path, index):
        for a in range(0, 9, 2):
            np.testing.assert_array_equal(nifti.read_volumes(path, a, min(a + 2, 9), index, box=box),
                                          expected[box + (slice(a, min(a + 2, 9)),)])
        np.testing.assert_array_equal(nifti.read_volumes(scaled_run["nii"], 0, 3), expected[..., :3])
    assert opened == [path, scaled_run["nii"]]
    np.testing.assert_array_equal(nifti.read_volumes(path, 4, 6, index), expected[..., 4:6])
    assert opened == [path, scaled_run["nii"], path]


def test_kept_open_names_a_file_it_cannot_open(tmp_path):
    from daskglm.io.nifti import kept_open

    bad = tmp_path / "run.nii.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"run\.nii\.gz.*cannot open the run"):
        with kept_open(str(bad), b"no index"):
            pass
