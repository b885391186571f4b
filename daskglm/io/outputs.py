"""Output folders: daskglm replaces only files it can prove it wrote, never an input of the same call.

The rule, shared by ``daskglm fit`` and ``daskglm bids`` (:class:`OutputPlan`):

* Every folder daskglm writes files into gets a manifest, :data:`MANIFEST`
  (``.daskglm-outputs.json``, one JSON document written atomically with
  :func:`daskglm.io.maps.write_bytes`): the names of the files daskglm wrote
  there, each with its size and SHA-256 (local files) or size and ETag /
  modification time (fsspec URLs).
* Before any work, every file the call will write is checked: absent, or
  listed in its folder's manifest *and unchanged since* (same size and
  content) — else the call is refused with one line naming the file. Files
  of the folder the call does not write are never touched: an existing folder
  holding other files is fine as long as none of them would be replaced.
* Before any work, every output path is compared with every input path of the
  call (real paths, so symbolic links and ``..`` do not hide a match); one
  that is the same file is refused with one line naming both.
* Right before the first output is written, the planned names are claimed in
  the manifests (as "pending"); after the outputs are written they are
  recorded with their size and hash. An interrupted call thus leaves only
  names a rerun may replace.

Files the manifest lists as pending (claimed, then interrupted) are taken as
daskglm's: a rerun replaces them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from .maps import write_bytes
from .remote import is_url, remote_identity, url_to_fs

__all__ = ["MANIFEST", "OutputConflict", "OutputPlan", "same_location"]

#: The manifest of each folder daskglm writes files into.
MANIFEST = ".daskglm-outputs.json"
_FORMAT = 1
_TOOL = "daskglm"


class OutputConflict(ValueError):
    """An output would replace a file daskglm cannot prove it wrote, or an input of the same call."""


def _split(path: str) -> tuple[str, str]:
    """(folder, file name) of a local path or URL."""
    if is_url(path):
        folder, _, name = path.rstrip("/").rpartition("/")
        return folder, name
    path = os.path.abspath(path.removeprefix("file://"))
    return os.path.dirname(path), os.path.basename(path)


def _norm(path: Any) -> str:
    """A URL as given; a local path absolute (without ``file://``)."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(path.removeprefix("file://"))


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_url(folder) else os.path.join(folder, name)


def _key(path: str) -> str:
    """What identifies a location: the real path of a local file, the URL (slashes collapsed) of a remote one."""
    if is_url(path):
        scheme, _, rest = path.partition("://")
        return f"{scheme.lower()}://{'/'.join(p for p in rest.split('/') if p)}"
    return os.path.realpath(os.path.abspath(path.removeprefix("file://")))


def same_location(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths (or URLs) name the same file: equal real paths, or the same inode."""
    a, b = os.fspath(a), os.fspath(b)
    if _key(a) == _key(b):
        return True
    if is_url(a) or is_url(b):
        return False
    try:
        return os.path.samefile(a.removeprefix("file://"), b.removeprefix("file://"))
    except OSError:
        return False


class OutputPlan:
    """The files one call will write, checked against the folders' manifests and the call's inputs.

    Parameters
    ----------
    paths : iterable of str or path
        Every file the call writes (local paths or fsspec URLs).
    optional : iterable of str or path
        Files among ``paths`` written only when absent or daskglm's own (a
        ``dataset_description.json`` another tool wrote is left as it is,
        without an error); see :meth:`will_write`.
    what : str
        How the output folder is named in messages (``"--out"``).
    storage_options : dict, optional
        fsspec options of URL outputs.
    """

    def __init__(self, paths: Iterable[Any], optional: Iterable[Any] = (), what: str = "--out",
                 storage_options: dict | None = None) -> None:
        self.paths = list(dict.fromkeys(_norm(p) for p in paths))
        self.optional = {_norm(p) for p in optional}
        self.what = what
        self.storage_options = storage_options
        self.skipped: set[str] = set()  # optional files held by another tool: not written
        self.created: list[str] = []  # local folders this plan created, parents first
        self._manifests: dict[str, dict] = {}  # folder -> {name: entry}
        self._dirty: set[str] = set()
        self._claimed = False

    # ------------------------------------------------------------------ file system

    def _fs(self, path: str) -> tuple[Any, str]:

        return url_to_fs(path, self.storage_options)

    def _exists(self, path: str) -> str | None:
        """None (absent), ``"file"``, ``"link"`` or ``"folder"``."""
        if is_url(path):
            fs, p = self._fs(path)
            try:
                info = fs.info(p)
            except (FileNotFoundError, OSError):
                return None
            return "folder" if info.get("type") == "directory" else "file"
        path = os.path.abspath(path.removeprefix("file://"))
        if os.path.islink(path):
            return "link"
        if os.path.isdir(path):
            return "folder"
        return "file" if os.path.lexists(path) else None

    def _identity(self, path: str) -> dict:
        """Size and content hash (local) or size and version (URL) of a file."""
        if is_url(path):

            fs, p = self._fs(path)
            identity = remote_identity(path, fs.info(p))
            return {"size": identity["size"], "version": identity["version"]}
        digest = hashlib.sha256()
        size = 0
        with open(os.path.abspath(path.removeprefix("file://")), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        return {"size": size, "sha256": digest.hexdigest()}

    def _read(self, path: str) -> bytes | None:
        if is_url(path):
            fs, p = self._fs(path)
            try:
                return fs.cat_file(p)
            except FileNotFoundError:
                return None
        try:
            with open(os.path.abspath(path.removeprefix("file://")), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def manifest(self, folder: str) -> dict[str, dict]:
        """``{file name: entry}`` of a folder's manifest (empty when it has none).

        Raises
        ------
        OutputConflict
            A file of the manifest's name that is not a daskglm manifest.
        """
        if folder not in self._manifests:
            path = _join(folder, MANIFEST)
            kind = self._exists(path)
            entries: dict[str, dict] = {}
            if kind is not None:
                data = self._read(path) if kind == "file" else None
                try:
                    doc = json.loads(data) if data is not None else None
                except ValueError:
                    doc = None
                if not (isinstance(doc, dict) and doc.get("tool") == _TOOL and isinstance(doc.get("files"), dict)):
                    raise OutputConflict(f"{path} exists and is not a daskglm manifest: choose another "
                                         f"{self.what} (or remove the file)")
                entries = {name: entry for name, entry in doc["files"].items()
                           if isinstance(name, str) and "/" not in name and isinstance(entry, dict)}
            self._manifests[folder] = entries
        return self._manifests[folder]

    def _ours(self, path: str) -> bool:
        """Whether an existing file is listed in its folder's manifest and unchanged since daskglm wrote it."""
        folder, name = _split(path)
        entry = self.manifest(folder).get(name)
        if entry is None:
            return False
        if entry.get("pending"):
            return True
        try:
            return self._identity(path) == {k: v for k, v in entry.items() if k != "pending"}
        except OSError:
            return False

    # ------------------------------------------------------------------ checks

    def check_inputs(self, inputs: Iterable[tuple[str, Any]]) -> None:
        """Refuse an output that is one of the call's inputs: ``inputs`` are ``(what, path)`` pairs.

        Raises
        ------
        OutputConflict
            One line naming the output and the input.
        """
        named = [(what, os.fspath(path)) for what, path in inputs if path is not None]
        for output in self.paths:
            for what, path in named:
                if same_location(output, path):
                    raise OutputConflict(f"output {output} would overwrite the input {what} {path}: choose "
                                         f"another {self.what}")

    def check(self) -> None:
        """Refuse an existing output daskglm cannot prove it wrote (or has since changed).

        Optional outputs held by another tool are left out of the plan
        (:meth:`will_write` is then False for them).

        Raises
        ------
        OutputConflict
            One line naming the file.
        """
        for path in self.paths:
            kind = self._exists(path)
            if kind is None:
                self.skipped.discard(path)
                continue
            if kind == "file" and self._ours(path):
                self.skipped.discard(path)
                continue
            if path in self.optional and kind == "file":
                self.skipped.add(path)
                continue
            folder, name = _split(path)
            if kind == "folder":
                reason = "is a folder"
            elif kind == "link":
                reason = "is a symbolic link daskglm did not write"
            elif name in self.manifest(folder):
                reason = "was written by daskglm but has changed since"
            else:
                reason = "exists and was not written by daskglm"
            raise OutputConflict(f"{path} {reason}: choose another {self.what} (or remove the file)")

    def will_write(self, path: Any) -> bool:
        """False for an optional output held by another tool (left as it is)."""
        return _norm(path) not in self.skipped

    @property
    def claimed(self) -> bool:
        """Whether :meth:`claim` ran (the manifests then list the planned names)."""
        return self._claimed

    def folders(self) -> list[str]:
        return list(dict.fromkeys(_split(p)[0] for p in self.paths))

    def create_folders(self) -> None:
        """Create the local output folders now (an impossible folder fails before any work).

        Raises
        ------
        OSError
            With the folder named.
        """
        for folder in self.folders():
            if is_url(folder):
                continue  # object stores have no folders
            missing = []
            parent = folder
            while not os.path.exists(parent) and parent != os.path.dirname(parent):
                missing.append(parent)
                parent = os.path.dirname(parent)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise OSError(f"{self.what} {folder}: cannot create the output folder: "
                              f"{exc.strerror or exc}") from None
            if not os.path.isdir(folder):
                raise OSError(f"{self.what} {folder}: not a folder")
            self.created.extend(reversed(missing))

    @contextlib.contextmanager
    def writing(self) -> Iterator[OutputPlan]:
        """Create the folders, then, whatever happens in the block: record what was written
        (:meth:`commit`) once the plan was claimed, else remove the folders it created empty.

        The block runs the work, calls :meth:`claim` before its first write and
        :meth:`record` after each (checked, then written, in that order).
        """
        self.create_folders()
        try:
            yield self
        finally:
            if self.claimed:
                self.commit()  # what was written, recorded (on failure too)
            else:
                self.remove_created_folders()  # failed before writing anything: no empty folder left

    def remove_created_folders(self) -> None:
        """Remove the folders :meth:`create_folders` created, if they are still empty."""
        for folder in reversed(self.created):
            try:
                os.rmdir(folder)
            except OSError:
                pass
        self.created = []

    # ------------------------------------------------------------------ writing

    def claim(self) -> None:
        """Check again, then list every planned name as pending in its folder's manifest (before writing)."""
        self._manifests.clear()
        self.check()
        for path in self.paths:
            if not self.will_write(path):
                continue
            folder, name = _split(path)
            entries = self.manifest(folder)
            if not entries.get(name, {}).get("pending"):
                entries[name] = {**entries.get(name, {}), "pending": True}
                self._dirty.add(folder)
        self._claimed = True
        self.commit()

    def record(self, path: Any) -> None:
        """After writing a planned file: its size and hash go to the manifest (written by :meth:`commit`)."""
        path = _norm(path)
        if not self._claimed or path not in self.paths or not self.will_write(path):
            raise RuntimeError(f"internal error: {path} was written without being planned and claimed")
        folder, name = _split(path)
        self.manifest(folder)[name] = self._identity(path)
        self._dirty.add(folder)

    def remove(self, path: Any) -> bool:
        """Delete a previous output no longer produced, only if the manifest proves it daskglm's (unchanged).

        Returns
        -------
        bool
            Whether it was deleted.
        """
        path = _norm(path)
        if is_url(path) or self._exists(path) != "file" or not self._ours(path):
            return False
        os.remove(os.path.abspath(path.removeprefix("file://")))
        folder, name = _split(path)
        self.manifest(folder).pop(name, None)
        self._dirty.add(folder)
        return True

    def commit(self) -> None:
        """Write the manifests that changed (one atomic write each)."""
        for folder in sorted(self._dirty):
            doc = {"tool": _TOOL, "format": _FORMAT,
                   "note": "Files daskglm wrote in this folder; it replaces or deletes no other file.",
                   "files": dict(sorted(self.manifest(folder).items()))}
            write_bytes(_join(folder, MANIFEST), json.dumps(doc, indent=1).encode(), self.storage_options)
        self._dirty.clear()
