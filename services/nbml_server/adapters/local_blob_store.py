"""Embedded blob store: one file per key under a root folder.

A key `a/b/c` is the file `{root}/a/b/c`. `put` writes a temporary file in the target
folder and renames it over the key (`os.replace` is atomic within a file system), so
readers in any process see the old bytes, the new bytes or no file, never a part.

Limitation compared with an object store: a key cannot also be a folder of other keys
(`a/b` and `a/b/c` cannot both exist); the platform's generated keys never do that.
"""

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import BinaryIO

from nbml_server.ports.blob_store import BlobNotFound, BlobStore

# Temporary files start with this; keys may not, so `list` can skip them safely.
_TEMP_PREFIX = ".nbml-tmp-"
# How often `put` retries when a concurrent delete removed the folder it just made.
_PUT_ATTEMPTS = 5
# Bytes `put_stream` copies at a time.
_COPY_CHUNK = 1 << 20


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"blob key must be a non-empty string, got {key!r}")
    _check_path(key, what="key")


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str):
        raise ValueError(f"blob prefix must be a string, got {prefix!r}")
    if prefix:
        # A prefix may end inside a segment ("users/1") or after a slash ("users/1/").
        _check_path(prefix.removesuffix("/"), what="prefix")


def _check_path(path: str, *, what: str) -> None:
    if path.startswith("/"):
        raise ValueError(f"blob {what} must not start with '/': {path!r}")
    if "\\" in path or "\0" in path:
        raise ValueError(f"blob {what} must not contain a backslash or NUL: {path!r}")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"blob {what} has an empty, '.' or '..' segment: {path!r}")
        if segment.startswith(_TEMP_PREFIX):
            raise ValueError(f"blob {what} segment must not start with {_TEMP_PREFIX!r}")


class LocalBlobStore(BlobStore):
    def __init__(self, root: str | os.PathLike):
        self._root = pathlib.Path(root).resolve()
        self._root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> pathlib.Path:
        _check_key(key)
        return self._root / key

    def put(self, key: str, data: bytes) -> None:
        self._write(key, lambda out: out.write(data))

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """Copies `stream` to a temporary file in chunks, then renames it over the key."""
        self._write(key, lambda out: shutil.copyfileobj(stream, out, _COPY_CHUNK))

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        path = self._path(key)
        for attempt in range(_PUT_ATTEMPTS):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
                break
            except FileNotFoundError:
                # A concurrent delete pruned the empty folder between mkdir and mkstemp.
                if attempt == _PUT_ATTEMPTS - 1:
                    raise
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                # Without fsync a crash soon after the rename can leave an empty file
                # under the key on some file systems.
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def open_read(self, key: str) -> BinaryIO:
        """The open file: a later `put` renames a new file over the key, so this reader
        keeps seeing the version it opened."""
        path = self._path(key)
        try:
            return open(path, "rb")  # the caller closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        self._prune(path.parent)

    def list(self, prefix: str) -> list[str]:
        _check_prefix(prefix)
        # Walk only the deepest folder the prefix names, then filter by the full prefix
        # (object-store semantics: "users/1" also matches "users/10/...").
        folder = self._root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self._root
        keys = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TEMP_PREFIX)]
            relative = pathlib.Path(dirpath).relative_to(self._root).as_posix()
            for name in filenames:
                if name.startswith(_TEMP_PREFIX):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)

    def _prune(self, folder: pathlib.Path) -> None:
        """Removes empty folders from `folder` up to (not including) the root."""
        while folder != self._root and self._root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or already gone): a concurrent put keeps it
            folder = folder.parent

