"""``daskglm.io.remote``: URLs, their filesystems and the identity of a remote object.

Remote objects here live on fsspec's in-memory filesystem (``memory://``); the
S3 API itself is exercised against a moto server in ``test_s3.py``.
"""

from __future__ import annotations

import uuid

import fsspec
import pytest

from daskglm.io import nifti
from daskglm.io import remote as _remote


@pytest.mark.parametrize(("path", "expected"), [
    ("s3://bucket/run.nii.gz", True),
    ("GS://bucket/run.nii", True),
    ("memory://x/run.nii", True),
    ("file:///data/run.nii", False),
    ("local:///data/run.nii", False),
    ("/data/run.nii", False),
    ("run.nii", False),
    (None, False),
    (3, False),
])
def test_is_url(path, expected):
    assert _remote.is_url(path) is expected


def test_options_are_for_urls_only(tmp_path):
    options = {"anon": True}
    assert _remote.url_options("s3://bucket/x", options) == options
    assert _remote.url_options("s3://bucket/x", options) is not options  # a copy: callers may add to it
    assert _remote.url_options(str(tmp_path), options) == {}
    assert _remote.url_options("s3://bucket/x", None) == {}
    # a local path with options meant for S3 opens the local filesystem (fsspec would refuse "anon")
    fs, path = _remote.url_to_fs(str(tmp_path / "a"), options)
    assert fs.protocol[0] in ("file", "local") and path.endswith("/a")


@pytest.fixture
def memory_object():
    root = f"memory://daskglm-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{root}/run.nii", b"x" * 1234)
    yield root
    fs.rm(root, recursive=True)


def test_object_info_and_its_errors(memory_object):
    fs, path, info = _remote.object_info(f"{memory_object}/run.nii", "run image", None)
    assert info["size"] == 1234 and fs.cat_file(path) == b"x" * 1234
    with pytest.raises(FileNotFoundError, match=r"run image not found: 'memory://.*/missing\.nii'"):
        _remote.object_info(f"{memory_object}/missing.nii", "run image", None)
    with pytest.raises(IsADirectoryError, match=r"mask 'memory://daskglm-test-\w+' is a directory"):
        _remote.object_info(memory_object, "mask", None)


def test_identity_is_url_size_and_version(memory_object):
    url = f"{memory_object}/run.nii"
    identity = _remote.url_identity(url)
    assert identity["url"] == url and identity["size"] == 1234
    # ETag first, then the other version fields object stores give
    assert _remote.remote_identity("s3://b/k", {"size": 5, "ETag": '"abc"', "LastModified": "t"}) == {
        "url": "s3://b/k", "size": 5, "version": '"abc"'}
    assert _remote.remote_identity("gs://b/k", {"size": "7", "updated": "2026"})["version"] == "2026"
    assert _remote.remote_identity("x://b/k", {})["version"] is None
    # nifti keeps the public names
    assert nifti.is_url is _remote.is_url and nifti.url_identity is _remote.url_identity
