"""Distributed blob store: objects in a Google Cloud Storage bucket.

URI: `gs://bucket[/prefix]?project=...&create_bucket=true&retry_deadline=10`

- A key `a/b/c` is the object `{prefix}/a/b/c` in the bucket; keys are checked exactly as
  by the local adapter (no `..`, leading `/` or empty segment).
- With `STORAGE_EMULATOR_HOST` set (e.g. `http://127.0.0.1:4443`, as the local cluster's
  GcsEmulator sets it), the store talks to that emulator with anonymous credentials and
  the project `nbml-local`, and creates the bucket if it is missing. Otherwise it talks
  to GCS with the application default credentials and never creates the bucket unless
  `create_bucket=true`.

Atomicity comes from GCS itself: an object (a "generation") becomes visible only when
its upload completes, so readers see the old bytes, the new ones or none. `put` of up
to 8 MiB is one multipart request; larger blobs and `put_stream` use a resumable upload
in chunks of `chunk_size` (8 MiB), and `put_stream`/`open_read` hold only a few chunks
(about 3 x chunk_size) in memory whatever the blob's size.
`open_read` pins the generation it found and reads ranges of it: it never mixes two
versions, and if that generation is replaced or deleted while being read, the next
read raises BlobNotFound.

Every request has a connect timeout (5 s) and a read timeout (`timeout`, 20 s), and
transient failures (connection refused, time-outs, HTTP 429/5xx) are retried for at most
`retry_deadline` seconds (10 s); then the store raises nbml_server.errors.Unavailable. So
a stopped server fails a call in about `retry_deadline` seconds, a hung one in at most
about `timeout` + `retry_deadline`.
"""

import base64
import contextlib
import io
import os
import re
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

import google_crc32c
import requests
import urllib3
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from nbml_server.adapters.local_blob_store import _check_key, _check_path, _check_prefix
from nbml_server.errors import FailedPrecondition, Unavailable
from nbml_server.ports.blob_store import BlobNotFound, BlobStore

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "nbml-local"
DEFAULT_CHUNK_SIZE = 8 << 20
# Resumable uploads need chunks of a multiple of 256 KiB.
_CHUNK_MULTIPLE = 256 << 10
_CONTENT_TYPE = "application/octet-stream"
# Bucket names: https://cloud.google.com/storage/docs/buckets#naming (dots allowed).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")

# Failures meaning "storage cannot be reached right now" (after the retries).
_TRANSIENT = (
    api_exceptions.RetryError,  # retry deadline exceeded; the cause is the last failure
    api_exceptions.TooManyRequests,
    api_exceptions.InternalServerError,
    api_exceptions.BadGateway,
    api_exceptions.ServiceUnavailable,
    api_exceptions.GatewayTimeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    auth_exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)


class GcsBlobStore(BlobStore):
    """Blobs in `bucket` under `prefix`.

    `emulator_host` (with scheme) selects an emulator; `from_uri` takes it from
    STORAGE_EMULATOR_HOST. `create_bucket` defaults to True with an emulator, False
    against GCS. `project` defaults to `nbml-local` with an emulator and to the
    credentials' project against GCS. `timeout` bounds each HTTP read (seconds),
    `connect_timeout` each connection attempt and `retry_deadline` the retries of one
    call."""

    def __init__(self, bucket: str, *, prefix: str = "", project: str | None = None,
                 emulator_host: str | None = None, create_bucket: bool | None = None,
                 credentials=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 timeout: float = 20.0, connect_timeout: float = 5.0,
                 retry_deadline: float = 10.0):
        if not _BUCKET_NAME.fullmatch(bucket or ""):
            raise ValueError(f"invalid GCS bucket name {bucket!r}")
        if chunk_size <= 0 or chunk_size % _CHUNK_MULTIPLE:
            raise ValueError(f"chunk_size must be a positive multiple of {_CHUNK_MULTIPLE}")
        prefix = prefix.strip("/")
        if prefix:
            _check_path(prefix, what="store prefix")
        self._prefix = f"{prefix}/" if prefix else ""
        self._chunk_size = chunk_size
        self._timeout = (connect_timeout, timeout)
        self._retry = (DEFAULT_RETRY.with_delay(initial=0.25, maximum=2.0, multiplier=2.0)
                       .with_timeout(retry_deadline))
        self.emulator_host = emulator_host
        if emulator_host:
            self._client = storage.Client(
                project=project or EMULATOR_PROJECT,
                credentials=credentials or AnonymousCredentials(),
                client_options={"api_endpoint": emulator_host.rstrip("/")})
        else:
            with self._calls("connect to GCS"):
                self._client = storage.Client(project=project, credentials=credentials)
        self._bucket = self._client.bucket(bucket)
        if create_bucket if create_bucket is not None else bool(emulator_host):
            try:
                self._ensure_bucket()
            except BaseException:
                self.close()
                raise

    @property
    def bucket(self) -> str:
        return self._bucket.name

    @property
    def prefix(self) -> str:
        """The object name prefix, empty or ending in '/'."""
        return self._prefix

    def put(self, key: str, data: bytes) -> None:
        blob = self._blob(key)
        with self._calls(f"put {key}"), self._bucket_must_exist():
            blob.upload_from_file(io.BytesIO(data), size=len(data), content_type=_CONTENT_TYPE,
                                  timeout=self._timeout, retry=self._retry)

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """A resumable upload in chunks of `chunk_size`, read from `stream` as they are
        sent; a stream shorter than one chunk goes as one request, like `put`."""
        blob = self._blob(key)
        head = _read_full(stream, self._chunk_size)
        if len(head) < self._chunk_size:
            self.put(key, head)
            return
        source = _ChunkSource(stream, head)
        del head  # the source owns it, and lets it go after the first chunk
        try:
            with self._calls(f"put {key}"), self._bucket_must_exist():
                # size=None: a resumable upload that learns the size at the stream's end.
                blob.upload_from_file(source, size=None, content_type=_CONTENT_TYPE,
                                      timeout=self._timeout, retry=self._retry)
        except _SourceFailed as failed:
            # The caller's stream failed, not storage: its own error, not Unavailable.
            raise failed.error from None

    def get(self, key: str) -> bytes:
        blob = self._blob(key)
        with self._calls(f"get {key}"):
            try:
                return blob.download_as_bytes(timeout=self._timeout, retry=self._retry)
            except api_exceptions.NotFound:
                raise BlobNotFound(key) from None

    def open_read(self, key: str) -> BinaryIO:
        """A buffered, seekable reader of the generation found now (one request per
        `chunk_size` bytes); the caller closes it. Like any buffered file, a read that
        fails (Unavailable) drops what was buffered: seek back to go on."""
        blob = self._blob(key)
        with self._calls(f"open {key}"):
            try:
                blob.reload(timeout=self._timeout, retry=self._retry)
            except api_exceptions.NotFound:
                raise BlobNotFound(key) from None
        # A blob object pinned to the generation found: its downloads ask for it.
        pinned = self._bucket.blob(blob.name, generation=blob.generation)
        raw = _RangeReader(self, key, pinned, size=blob.size or 0, crc32c=blob.crc32c)
        return io.BufferedReader(raw, buffer_size=self._chunk_size)

    def exists(self, key: str) -> bool:
        blob = self._blob(key)
        with self._calls(f"exists {key}"):
            return blob.exists(timeout=self._timeout, retry=self._retry)

    def delete(self, key: str) -> None:
        blob = self._blob(key)
        with self._calls(f"delete {key}"):
            try:
                # Deleting is idempotent for this port (a missing key is fine), so
                # retrying it unconditionally is safe.
                blob.delete(timeout=self._timeout, retry=self._retry)
            except api_exceptions.NotFound:
                pass

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted. Objects in the bucket whose names are not valid
        keys (say, a console-made "folder/") are left out."""
        _check_prefix(prefix)
        start = len(self._prefix)
        keys = []
        with self._calls(f"list {prefix!r}"):
            try:
                for blob in self._client.list_blobs(
                        self._bucket, prefix=self._prefix + prefix,
                        fields="items(name),nextPageToken",
                        timeout=self._timeout, retry=self._retry):
                    key = blob.name[start:]
                    with contextlib.suppress(ValueError):
                        _check_key(key)
                        keys.append(key)
            except api_exceptions.NotFound:
                return []  # no bucket, no keys
        return sorted(keys)

    def close(self) -> None:
        self._client.close()

    # Helpers.

    def _blob(self, key: str) -> storage.Blob:
        _check_key(key)
        return self._bucket.blob(self._prefix + key, chunk_size=self._chunk_size)

    def _ensure_bucket(self) -> None:
        with self._calls(f"create bucket {self.bucket}"):
            if self._bucket.exists(timeout=self._timeout, retry=self._retry):
                return
            try:
                self._client.create_bucket(self._bucket, timeout=self._timeout,
                                           retry=self._retry)
            except api_exceptions.Conflict:
                pass  # created meanwhile by another store

    @contextlib.contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """Turns "cannot reach storage" failures into Unavailable."""
        try:
            yield
        except _TRANSIENT as error:
            where = self.emulator_host or "GCS"
            raise Unavailable(f"blob store ({where}, bucket {self._bucket_name()}) is "
                              f"unavailable: {what} failed: {_describe(error)}") from error

    @contextlib.contextmanager
    def _bucket_must_exist(self) -> Iterator[None]:
        try:
            yield
        except api_exceptions.NotFound as error:
            raise FailedPrecondition(
                f"GCS bucket {self._bucket.name!r} does not exist (create it, or open the "
                f"store with create_bucket=true): {error.message}") from error

    def _bucket_name(self) -> str:
        bucket = getattr(self, "_bucket", None)
        return bucket.name if bucket is not None else "?"


class _RangeReader(io.RawIOBase):
    """Reads one generation of an object by byte ranges (at most `chunk_size` per
    request); checks the CRC32C of a whole sequential read at its end."""

    def __init__(self, store: GcsBlobStore, key: str, blob: storage.Blob, *, size: int,
                 crc32c: str | None):
        self._store, self._key, self._blob, self._size = store, key, blob, size
        self._pos = 0
        self._expected_crc = crc32c
        self._crc: google_crc32c.Checksum | None = google_crc32c.Checksum()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        position = max(0, base + offset)
        if position != self._pos:
            self._crc = None  # not one sequential read any more
        self._pos = position
        return position

    def readall(self) -> bytes:
        # io.RawIOBase.readall reads 8 KiB at a time: one request each.
        parts = []
        while chunk := self.read(self._store._chunk_size):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self._size - self._pos, self._store._chunk_size)
        if wanted <= 0:
            return 0
        with self._store._calls(f"read {self._key}"):
            try:
                data = self._blob.download_as_bytes(
                    start=self._pos, end=self._pos + wanted - 1, checksum=None,
                    timeout=self._store._timeout, retry=self._store._retry)
            except api_exceptions.NotFound:
                raise BlobNotFound(
                    f"{self._key} (the version being read was replaced or deleted)") from None
        if not data:
            raise Unavailable(f"blob store returned no bytes reading {self._key} at "
                              f"{self._pos} of {self._size}")
        memoryview(buffer)[:len(data)] = data
        self._pos += len(data)
        if self._crc is not None:
            self._crc.update(data)
            if self._pos == self._size and self._expected_crc:
                if base64.b64encode(self._crc.digest()).decode() != self._expected_crc:
                    raise OSError(f"CRC32C mismatch reading blob {self._key}")
        return len(data)


class _SourceFailed(Exception):
    """Reading the caller's stream failed (carries that error through the upload)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class _ChunkSource(io.RawIOBase):
    """The stream a resumable upload reads: `read(n)` returns n bytes unless the source
    ends (a pipe or socket may return fewer), and the last read stays in memory so the
    upload can seek back into it to resend a chunk."""

    def __init__(self, stream: BinaryIO, head: bytes):
        self._stream = stream
        self._window = head       # the bytes of the last read
        self._window_start = 0    # their offset in the stream
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("the stream's size is not known")
        if not self._window_start <= offset <= self._window_start + len(self._window):
            raise io.UnsupportedOperation(
                f"cannot seek to {offset}: only bytes {self._window_start}.."
                f"{self._window_start + len(self._window)} are kept")
        self._pos = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise io.UnsupportedOperation("read() needs a size: the stream may not fit "
                                          "in memory")
        offset = self._pos - self._window_start
        kept = self._window[offset:offset + size]
        if len(kept) < size:
            self._window = b""  # let the previous chunk go before reading the next
            try:
                more = _read_full(self._stream, size - len(kept))
            except Exception as error:
                raise _SourceFailed(error) from error
            data = kept + more
            self._window, self._window_start = data, self._pos
        else:
            data = kept
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        memoryview(buffer)[:len(data)] = data
        return len(data)


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes from `stream`, fewer only at its end."""
    first = stream.read(size)
    if first is None:
        raise io.UnsupportedOperation("non-blocking streams are not supported")
    if len(first) == size or not first:
        return bytes(first)
    parts, remaining = bytearray(first), size - len(first)
    while remaining > 0:
        more = stream.read(remaining)
        if not more:
            break
        parts += more
        remaining -= len(more)
    return bytes(parts)


def _describe(error: BaseException) -> str:
    if isinstance(error, api_exceptions.RetryError) and error.cause is not None:
        return f"{error.message}; last error: {type(error.cause).__name__}: {error.cause}"
    return f"{type(error).__name__}: {error}"


def from_uri(uri: str) -> GcsBlobStore:
    """`gs://bucket[/prefix]?project=...&create_bucket=true|false&retry_deadline=s&timeout=s`;
    the emulator comes from STORAGE_EMULATOR_HOST."""
    parts = urlsplit(uri)
    if parts.scheme != "gs" or not parts.netloc:
        raise ValueError(f"{uri!r} must look like gs://bucket[/prefix]")
    if parts.fragment:
        raise ValueError(f"{uri!r} must not have a fragment")
    params = {name: values[-1] for name, values in
              parse_qs(parts.query, keep_blank_values=True, strict_parsing=False).items()}
    unknown = set(params) - {"project", "create_bucket", "retry_deadline", "timeout"}
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)} in {uri!r}; known: "
                         "project, create_bucket, retry_deadline, timeout")
    options: dict = {}
    if params.get("project"):
        options["project"] = params["project"]
    if "create_bucket" in params:
        value = params["create_bucket"].lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"create_bucket must be true or false in {uri!r}")
        options["create_bucket"] = value in ("true", "1", "yes")
    for name in ("retry_deadline", "timeout"):
        if name in params:
            try:
                options[name] = float(params[name])
            except ValueError:
                raise ValueError(f"{name} must be a number of seconds in {uri!r}") from None
            if options[name] <= 0:
                raise ValueError(f"{name} must be positive in {uri!r}")
    return GcsBlobStore(parts.netloc, prefix=unquote(parts.path),
                        emulator_host=os.environ.get(EMULATOR_ENV) or None, **options)
