"""daskglm.io.nifti.load_image against nibabel.load (the oracle) on the files it reads itself."""

from __future__ import annotations

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
