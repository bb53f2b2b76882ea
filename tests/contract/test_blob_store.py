"""Contract tests for the BlobStore port, run against every adapter."""

import hashlib
import io
import os
import threading
import tracemalloc

import pytest

from nbml_server.adapters import local_blob_store
from nbml_server.adapters.local_blob_store import LocalBlobStore
from nbml_server.ports.blob_store import BlobNotFound


def _local(tmp_path, request):
    return LocalBlobStore(tmp_path / "blobs")


def _gcs(tmp_path, request):
    """A bucket on the session's GCS emulator, under a key prefix of its own per
    tmp_path (so each test starts empty, and the same tmp_path opens the same store)."""
    from nbml_server.adapters.gcs_blob_store import GcsBlobStore

    emulator = request.getfixturevalue("gcs_emulator")
    prefix = "contract/" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
    # A 1 MiB chunk (the default is 8 MiB) makes the streaming tests cross many chunks.
    return GcsBlobStore("nbml-contract", prefix=prefix, emulator_host=emulator.emulator_host,
                        chunk_size=1 << 20)


# One factory per adapter: `factory(tmp_path, request)` opens an empty store (the same
# one again for the same tmp_path). Distributed adapters use a fresh key prefix per
# tmp_path in a bucket on a server the session starts (see tests/conftest.py).
FACTORIES = [pytest.param(_local, id="local"), pytest.param(_gcs, id="gcs")]


@pytest.fixture(params=FACTORIES)
def store(request, tmp_path):
    store = request.param(tmp_path, request)
    yield store
    store.close()


# Round trips.

def test_get_returns_the_bytes(store):
    data = bytes(range(256)) * 100
    store.put("users/u1/datasets/d1/data.parquet", data)
    assert store.get("users/u1/datasets/d1/data.parquet") == data


def test_empty_blob(store):
    store.put("users/u1/empty", b"")
    assert store.get("users/u1/empty") == b""
    assert store.exists("users/u1/empty")


def test_put_replaces(store):
    store.put("users/u1/a", b"old")
    store.put("users/u1/a", b"new")
    assert store.get("users/u1/a") == b"new"


def test_get_missing_raises_blob_not_found(store):
    with pytest.raises(BlobNotFound):
        store.get("users/u1/missing")
    # BlobNotFound is a KeyError, so callers may catch either.
    with pytest.raises(KeyError):
        store.get("users/u1/missing")


def test_a_prefix_is_not_a_blob(store):
    store.put("users/u1/a/b", b"x")
    assert not store.exists("users/u1/a")
    with pytest.raises(BlobNotFound):
        store.get("users/u1/a")


def test_exists(store):
    assert not store.exists("users/u1/a")
    store.put("users/u1/a", b"x")
    assert store.exists("users/u1/a")


def test_delete(store):
    store.put("users/u1/a", b"x")
    store.put("users/u1/b", b"y")
    store.delete("users/u1/a")
    assert not store.exists("users/u1/a")
    assert store.get("users/u1/b") == b"y"


def test_delete_missing_is_not_an_error(store):
    store.delete("users/u1/never")
    store.delete("never/existed/at/all")


# list and delete_prefix.

KEYS = ["users/u1/models/m1/model.skops", "users/u1/datasets/d2/data.parquet",
        "users/u1/datasets/d1/data.parquet", "users/u10/datasets/d1/data.parquet",
        "users/u2/datasets/d1/data.parquet", "top"]


@pytest.fixture
def filled(store):
    for key in KEYS:
        store.put(key, key.encode())
    return store


def test_list_everything_sorted(filled):
    assert filled.list("") == sorted(KEYS)


def test_list_prefix_ending_in_slash(filled):
    assert filled.list("users/u1/") == sorted(k for k in KEYS if k.startswith("users/u1/"))


def test_list_prefix_is_a_plain_string_prefix(filled):
    # As in object stores: "users/u1" also matches "users/u10/...".
    assert filled.list("users/u1") == sorted(k for k in KEYS if k.startswith("users/u1"))
    assert filled.list("users/u1/datasets/d") == [
        "users/u1/datasets/d1/data.parquet", "users/u1/datasets/d2/data.parquet"]


def test_list_full_key_and_missing_prefix(filled):
    assert filled.list("top") == ["top"]
    assert filled.list("users/u9/") == []
    assert filled.list("nothing/here/") == []


def test_delete_prefix(filled):
    filled.delete_prefix("users/u1/")
    assert filled.list("") == sorted(k for k in KEYS if not k.startswith("users/u1/"))
    assert not filled.exists("users/u1/datasets/d1/data.parquet")


def test_put_after_delete_prefix(filled):
    filled.delete_prefix("users/u1/")
    filled.put("users/u1/datasets/d1/data.parquet", b"again")
    assert filled.get("users/u1/datasets/d1/data.parquet") == b"again"


# Keys.

BAD_KEYS = ["", "/users/u1/a", "users/../a", "..", "../a", "users/..", "users//a",
            "users/u1/", "users\\u1\\a", "users/u1\\..\\..\\a"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        store.exists(key)
    with pytest.raises(ValueError):
        store.delete(key)


@pytest.mark.parametrize("prefix", ["/users", "../", "users/../", "a//b"])
def test_bad_prefixes_are_rejected(store, prefix):
    with pytest.raises(ValueError):
        store.list(prefix)
    with pytest.raises(ValueError):
        store.delete_prefix(prefix)


def test_odd_but_fine_keys(store):
    for key in ["a.b", "a/..b", "a/b..", "a b/ü", "_/-/~"]:
        store.put(key, key.encode())
        assert store.get(key) == key.encode()


# Atomicity: a reader sees a whole old or a whole new blob, never a part.

def test_readers_never_see_a_partial_blob(store):
    key = "users/u1/big"
    versions = [bytes([n]) * (1 << 20) for n in range(1, 4)]
    store.put(key, versions[0])
    stop, seen, bad = threading.Event(), [], []

    def read():
        while not stop.is_set():
            data = store.get(key)
            (seen if data in versions else bad).append(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(30):
            store.put(key, versions[n % len(versions)])
    finally:
        stop.set()
        reader.join()
    assert not bad, f"partial reads of sizes {bad[:5]}"
    assert seen


# Streams: put_stream / open_read pass blobs larger than memory in chunks.

STREAM_SIZE = 20 << 20


class _Trickle(io.RawIOBase):
    """A non-seekable stream of `size` deterministic bytes that returns short reads, as
    a socket or pipe does, without ever holding them all."""

    def __init__(self, size: int, seed: int = 0):
        self._left, self._counter, self._seed = size, 0, seed
        self._pending = b""

    def readable(self):
        return True

    def readinto(self, buffer):
        if not self._pending and self._left:
            block = hashlib.sha256(f"{self._seed}:{self._counter}".encode()).digest() * 2048
            self._counter += 1
            self._pending = block[:self._left]
            self._left -= len(self._pending)
        # At most 100 000 bytes per read, never a multiple of 256 KiB.
        n = min(len(buffer), len(self._pending), 100_000)
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _digest_of_trickle(size: int, seed: int = 0) -> str:
    stream, digest = _Trickle(size, seed), hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _read_in_chunks(reader, sizes=(1 << 20, 12345, 3 << 20, 1)) -> tuple[str, int]:
    digest, total, n = hashlib.sha256(), 0, 0
    while True:
        chunk = reader.read(sizes[n % len(sizes)])
        n += 1
        if not chunk:
            return digest.hexdigest(), total
        digest.update(chunk)
        total += len(chunk)


def test_put_stream_and_open_read_round_trip(store):
    key = "users/u1/datasets/d1/data.parquet"
    store.put_stream(key, _Trickle(STREAM_SIZE))
    with store.open_read(key) as reader:
        digest, size = _read_in_chunks(reader)
    assert size == STREAM_SIZE
    assert digest == _digest_of_trickle(STREAM_SIZE)
    assert store.exists(key)
    assert store.list("users/u1/") == [key]


def test_streams_keep_memory_bounded(store):
    """Python allocations while a 20 MiB blob goes in and out stay far below its size
    (the contract factories use chunks of at most 1 MiB)."""
    key = "users/u1/big"
    store.exists(key)  # connect before measuring
    tracemalloc.start()
    try:
        store.put_stream(key, _Trickle(STREAM_SIZE, seed=1))
        up = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with store.open_read(key) as reader:
            digest, size = _read_in_chunks(reader, sizes=(256 << 10,))
        down = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (size, digest) == (STREAM_SIZE, _digest_of_trickle(STREAM_SIZE, seed=1))
    assert up < STREAM_SIZE / 2, f"put_stream peaked at {up >> 20} MiB"
    assert down < STREAM_SIZE / 2, f"open_read peaked at {down >> 20} MiB"


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_put_stream_sizes_around_chunks(store, size):
    data = os.urandom(size)
    store.put_stream("users/u1/a", io.BytesIO(data))
    assert store.get("users/u1/a") == data
    with store.open_read("users/u1/a") as reader:
        assert reader.read() == data
        assert reader.read() == b""


def test_put_stream_replaces_and_put_reads_back_by_stream(store):
    store.put("users/u1/a", b"old")
    store.put_stream("users/u1/a", io.BytesIO(b"new"))
    assert store.get("users/u1/a") == b"new"
    with store.open_read("users/u1/a") as reader:
        assert reader.read(2) == b"ne"
        assert reader.read(10) == b"w"
        assert reader.read(10) == b""


def test_open_read_missing_raises_blob_not_found(store):
    with pytest.raises(BlobNotFound):
        store.open_read("users/u1/missing")


@pytest.mark.parametrize("key", ["", "/users/u1/a", "users/../a", "users//a"])
def test_streams_reject_bad_keys(store, key):
    with pytest.raises(ValueError):
        store.put_stream(key, io.BytesIO(b"x"))
    with pytest.raises(ValueError):
        store.open_read(key)


def test_open_read_never_mixes_versions(store):
    """A put racing with an open reader: the reader goes on with the version it opened,
    or (object stores, whose old version is gone) raises BlobNotFound; never a mix."""
    key = "users/u1/big"
    old, new = b"o" * (3 << 20), b"n" * (3 << 20)
    store.put(key, old)
    with store.open_read(key) as reader:
        first = reader.read(1 << 20)
        store.put(key, new)
        try:
            data = first + reader.read()
        except BlobNotFound:
            data = None
    assert data is None or data == old
    assert store.get(key) == new


def test_a_failed_put_stream_keeps_the_old_blob(store):
    class Broken(io.RawIOBase):
        def __init__(self):
            self.sent = 0

        def readable(self):
            return True

        def readinto(self, buffer):
            if self.sent >= 5 << 20:
                raise OSError("source went away")
            n = min(len(buffer), 64 << 10)
            buffer[:n] = b"x" * n
            self.sent += n
            return n

    store.put("users/u1/a", b"old")
    with pytest.raises(OSError, match="source went away"):
        store.put_stream("users/u1/a", Broken())
    assert store.get("users/u1/a") == b"old"
    assert store.list("users/u1/") == ["users/u1/a"]


# Local adapter specifics.

def test_local_leaves_no_temporary_files(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("users/u1/a", b"x" * 1000)
    store.put("users/u1/a", b"y")
    assert sorted(p.name for p in (tmp_path / "blobs" / "users" / "u1").iterdir()) == ["a"]


def test_local_failed_put_keeps_the_old_blob(tmp_path, monkeypatch):
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("users/u1/a", b"old")

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(local_blob_store.os, "replace", crash)
    with pytest.raises(OSError):
        store.put("users/u1/a", b"new")
    monkeypatch.undo()
    assert store.get("users/u1/a") == b"old"
    assert os.listdir(tmp_path / "blobs" / "users" / "u1") == ["a"]


def test_local_list_skips_temporary_files_of_puts_in_progress(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("users/u1/a", b"x")
    (tmp_path / "blobs" / "users" / "u1" / ".nbml-tmp-123").write_bytes(b"half")
    assert store.list("") == ["users/u1/a"]
    with pytest.raises(ValueError):
        store.put("users/u1/.nbml-tmp-123", b"x")


def test_local_delete_removes_empty_folders(tmp_path):
    root = tmp_path / "blobs"
    store = LocalBlobStore(root)
    store.put("users/u1/datasets/d1/data.parquet", b"x")
    store.put("users/u2/datasets/d1/data.parquet", b"y")
    store.delete_prefix("users/u1/")
    assert sorted(p.name for p in (root / "users").iterdir()) == ["u2"]
    store.delete("users/u2/datasets/d1/data.parquet")
    assert list(root.iterdir()) == []  # the root itself stays


def test_local_keys_stay_inside_the_root(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    for key in ["./a", "a/./b", "a\0b"]:
        with pytest.raises(ValueError):
            store.put(key, b"x")
    assert list(tmp_path.iterdir()) == [tmp_path / "blobs"]
