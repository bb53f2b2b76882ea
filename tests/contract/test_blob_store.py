"""Contract tests for the BlobStore port, run against every adapter."""

import os
import threading

import pytest

from nbml_server.adapters import local_blob_store
from nbml_server.adapters.local_blob_store import LocalBlobStore
from nbml_server.ports.blob_store import BlobNotFound


def _local(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


# One factory per adapter: `factory(tmp_path)` opens an empty store (the same one again
# for the same tmp_path). Distributed adapters (GCS) join this list when their servers
# are available, e.g. as a param skipped unless a test bucket is configured, with a
# fresh key prefix per tmp_path.
FACTORIES = [pytest.param(_local, id="local")]


@pytest.fixture(params=FACTORIES)
def store(request, tmp_path):
    store = request.param(tmp_path)
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
