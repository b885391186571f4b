"""fsspec locations: which paths are URLs, their filesystems, and what identifies an object.

The one place that decides whether ``storage_options`` apply (to URLs of a
non-local filesystem only; a local path ignores them) and how a remote object
is named in a store's fingerprint (URL, size, and ETag or modification time:
its metadata, never its content).
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_url", "url_options", "url_to_fs", "object_info", "remote_identity", "url_identity"]


def is_url(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL of a non-local filesystem (``s3://...``, ``gs://...``)."""
    if not isinstance(path, str) or "://" not in path:
        return False
    return path.split("://", 1)[0].lower() not in ("file", "local")


def url_options(location: Any, storage_options: dict | None) -> dict:
    """The fsspec options that apply to ``location``: ``storage_options`` for a URL, none
    for a local path."""
    return dict(storage_options) if storage_options and is_url(location) else {}


def url_to_fs(location: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path) of a location; ``storage_options`` are for URLs only.

    A local path (or ``file://`` URL) is a path of the local filesystem as it is: never read
    as an fsspec URL chain (a folder named ``a::b.zarr`` is that folder).
    """
    import fsspec

    if not is_url(location):
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), location.split("://", 1)[1] if "://" in location else location
    return fsspec.core.url_to_fs(location, **url_options(location, storage_options))


def object_info(url: str, role: str, storage_options: dict | None) -> tuple[Any, str, dict]:
    """(filesystem, path, info) of a remote object, with the errors of a local file.

    Raises
    ------
    FileNotFoundError
        Nothing at ``url`` (the message names ``role`` and the URL).
    IsADirectoryError
        ``url`` is a folder (a prefix holding objects), not an object.
    """
    fs, path = url_to_fs(url, storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{role} not found: {url!r}") from None
    if info.get("type") == "directory":
        raise IsADirectoryError(f"{role} {url!r} is a directory, not a NIfTI file")
    return fs, path, info


def remote_identity(url: str, info: dict) -> dict:
    """JSON-able identity of a remote object: URL, size, and ETag or modification time."""
    version = next((str(info[key]) for key in ("ETag", "etag", "LastModified", "last_modified",
                                               "mtime", "updated") if info.get(key) is not None), None)
    return {"url": url, "size": int(info.get("size") or 0), "version": version}


def url_identity(url: str, storage_options: dict | None = None) -> dict:
    """Identity of a remote object (URL, size, ETag or mtime), from its metadata only.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
    """
    return remote_identity(url, object_info(url, "file", storage_options)[2])
