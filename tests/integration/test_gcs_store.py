"""The GCS blob store against the local cluster's GCS emulator (fake-gcs-server): what
users see with Google's own client, URIs, and outages (a stopped or hung emulator)."""

import io
import os
import signal
import time

import pytest
from google.cloud import storage

from deploy.local_cluster.gcs import GcsEmulator
from nbml_server.adapters.gcs_blob_store import EMULATOR_PROJECT, GcsBlobStore, from_uri
from nbml_server.adapters.registry import open_blob_store
from nbml_server.errors import FailedPrecondition, Unavailable
from nbml_server.ports.blob_store import BlobNotFound


@pytest.fixture
def emulator_env(gcs_emulator, monkeypatch):
    """STORAGE_EMULATOR_HOST set, as a user (or the platform's settings) sets it."""
    for name, value in gcs_emulator.env().items():
        monkeypatch.setenv(name, value)
    return gcs_emulator


@pytest.fixture
def own_emulator(tmp_path):
    """An emulator this test may stop or freeze (the session's one stays up)."""
    with GcsEmulator(tmp_path / "gcs") as emulator:
        yield emulator


@pytest.fixture
def closing():
    opened = []
    yield opened.append
    for store in opened:
        store.close()


# What users see.

def test_objects_are_visible_to_googles_client(emulator_env, closing):
    store = open_blob_store("gs://nbml-visible/tenant-a")  # through the registry
    closing(store)
    assert isinstance(store, GcsBlobStore)
    store.put("users/u1/datasets/d1/data.parquet", b"PAR1 data")
    store.put_stream("users/u1/models/m1/model.skops", io.BytesIO(b"model"))

    # Google's client, configured only by STORAGE_EMULATOR_HOST.
    client = storage.Client(project=EMULATOR_PROJECT)
    closing(client)
    assert "nbml-visible" in [bucket.name for bucket in client.list_buckets()]
    assert [blob.name for blob in client.list_blobs("nbml-visible")] == [
        "tenant-a/users/u1/datasets/d1/data.parquet",
        "tenant-a/users/u1/models/m1/model.skops"]
    bucket = client.bucket("nbml-visible")
    assert bucket.blob("tenant-a/users/u1/datasets/d1/data.parquet").download_as_bytes() \
        == b"PAR1 data"

    # And back: what a user uploads under the prefix is a key of the store; what is
    # outside the prefix is not.
    bucket.blob("tenant-a/users/u1/uploads/x.csv").upload_from_string(b"a,b\n1,2\n")
    bucket.blob("other/users/u1/y").upload_from_string(b"y")
    assert store.get("users/u1/uploads/x.csv") == b"a,b\n1,2\n"
    assert store.list("users/u1/") == ["users/u1/datasets/d1/data.parquet",
                                       "users/u1/models/m1/model.skops",
                                       "users/u1/uploads/x.csv"]
    store.delete_prefix("users/u1/")
    assert [blob.name for blob in client.list_blobs("nbml-visible")] == ["other/users/u1/y"]


def test_objects_are_stored_in_the_emulators_folder(gcs_emulator, closing):
    store = GcsBlobStore("nbml-on-disk", emulator_host=gcs_emulator.emulator_host)
    closing(store)
    store.put("users/u1/a", b"on disk")
    assert (gcs_emulator.storage_dir / "nbml-on-disk").is_dir()


def test_list_leaves_out_names_that_are_not_keys(gcs_emulator, closing):
    store = GcsBlobStore("nbml-odd-names", prefix="p", emulator_host=gcs_emulator.emulator_host)
    closing(store)
    store.put("users/u1/a", b"x")
    client = storage.Client(project=EMULATOR_PROJECT, client_options={
        "api_endpoint": gcs_emulator.emulator_host}, credentials=_anonymous())
    closing(client)
    client.bucket("nbml-odd-names").blob("p/users/u1/folder/").upload_from_string(b"")
    assert store.list("users/") == ["users/u1/a"]


def _anonymous():
    from google.auth.credentials import AnonymousCredentials
    return AnonymousCredentials()


# URIs.

def test_from_uri_takes_the_emulator_from_the_environment(emulator_env, closing):
    store = from_uri("gs://nbml-uri/some/prefix?project=p1&retry_deadline=3&timeout=7")
    closing(store)
    assert store.emulator_host == emulator_env.emulator_host
    assert (store.bucket, store.prefix) == ("nbml-uri", "some/prefix/")
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_from_uri_without_prefix(emulator_env, closing):
    store = from_uri(emulator_env.uri("nbml-noprefix"))
    closing(store)
    assert store.prefix == ""
    store.put("users/u1/a", b"x")
    assert store.list("") == ["users/u1/a"]


@pytest.mark.parametrize("uri", [
    "gs://", "gs:///prefix", "gs://Upper/x", "gs://b/x?color=red", "gs://bb/x?create_bucket=maybe",
    "gs://bb/x?retry_deadline=soon", "gs://bb/x?timeout=-1", "gs://bb/../x", "gs://bb/a//b",
    "gs://bb/x#frag",
])
def test_bad_uris(uri, emulator_env):
    with pytest.raises(ValueError):
        from_uri(uri)


def test_a_missing_bucket_is_not_created_when_told_not_to(emulator_env, closing):
    store = from_uri("gs://nbml-never-created?create_bucket=false")
    closing(store)
    with pytest.raises(FailedPrecondition, match="does not exist"):
        store.put("users/u1/a", b"x")
    with pytest.raises(FailedPrecondition, match="does not exist"):
        store.put_stream("users/u1/a", io.BytesIO(b"x" * (9 << 20)))
    with pytest.raises(BlobNotFound):
        store.get("users/u1/a")
    assert not store.exists("users/u1/a")
    assert store.list("") == []
    client = storage.Client(project=EMULATOR_PROJECT)
    closing(client)
    assert "nbml-never-created" not in [bucket.name for bucket in client.list_buckets()]


# Outages.

def test_unavailable_while_stopped_and_back_after_restart(own_emulator, closing):
    store = GcsBlobStore("nbml", emulator_host=own_emulator.emulator_host, retry_deadline=0.5)
    closing(store)
    store.put("users/u1/a", b"kept")
    store.put_stream("users/u1/big", io.BytesIO(b"b" * (20 << 20)))
    reader = store.open_read("users/u1/big")
    assert reader.read(1 << 20) == b"b" * (1 << 20)
    port = own_emulator.port

    own_emulator.stop()
    calls = {
        "put": lambda: store.put("users/u1/a", b"lost"),
        "put_stream": lambda: store.put_stream("users/u1/s", io.BytesIO(b"s" * (9 << 20))),
        "get": lambda: store.get("users/u1/a"),
        "open_read": lambda: store.open_read("users/u1/a"),
        "read of an open reader": lambda: reader.read(),
        "exists": lambda: store.exists("users/u1/a"),
        "delete": lambda: store.delete("users/u1/a"),
        "list": lambda: store.list("users/"),
        "delete_prefix": lambda: store.delete_prefix("users/"),
        "open a new store": lambda: GcsBlobStore(
            "nbml", emulator_host=own_emulator.emulator_host, retry_deadline=0.5),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(Unavailable, match="unavailable") as caught:
            call()
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"{name} took {elapsed:.1f} s to fail"
        assert caught.value.reason == "BACKEND_UNAVAILABLE"

    own_emulator.start()
    assert own_emulator.port == port
    # The same store (and reader) work again; the data is intact.
    assert store.get("users/u1/a") == b"kept"
    # A buffered reader drops what it had buffered when a read fails: seek back to
    # where the caller was.
    reader.seek(1 << 20)
    assert reader.read() == b"b" * (19 << 20)
    reader.close()
    assert store.list("users/") == ["users/u1/a", "users/u1/big"]
    store.put("users/u1/a", b"new")
    assert store.get("users/u1/a") == b"new"


def test_default_settings_fail_within_seconds(own_emulator, monkeypatch, closing):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", own_emulator.emulator_host)
    store = from_uri("gs://nbml")
    closing(store)
    store.put("users/u1/a", b"x")
    own_emulator.stop()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        store.get("users/u1/a")
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f} s"
    own_emulator.start()
    assert store.get("users/u1/a") == b"x"


def test_a_hung_emulator_times_out(own_emulator, closing):
    """SIGSTOP: the port still accepts connections (the kernel does), nothing answers."""
    store = GcsBlobStore("nbml", emulator_host=own_emulator.emulator_host,
                         timeout=1.0, connect_timeout=1.0, retry_deadline=0.5)
    closing(store)
    store.put("users/u1/a", b"x")
    os.kill(own_emulator.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            store.get("users/u1/a")
        elapsed = time.monotonic() - started
        assert elapsed < 6, f"took {elapsed:.1f} s"
    finally:
        os.kill(own_emulator.process.pid, signal.SIGCONT)
    assert store.get("users/u1/a") == b"x"


def test_data_and_port_survive_a_new_emulator_on_the_same_folder(tmp_path, closing):
    with GcsEmulator(tmp_path / "gcs") as first:
        port = first.port
        store = GcsBlobStore("nbml", emulator_host=first.emulator_host)
        store.put("users/u1/a", b"durable")
        store.close()
    with GcsEmulator(tmp_path / "gcs") as second:
        assert second.port == port
        store = GcsBlobStore("nbml", emulator_host=second.emulator_host)
        closing(store)
        assert store.get("users/u1/a") == b"durable"


def test_emulator_start_failure_is_clear(tmp_path):
    """A port already taken: start() fails with the server's own words, not a hang."""
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        emulator = GcsEmulator(tmp_path / "gcs", port=taken.getsockname()[1], start_timeout=10)
        with pytest.raises((RuntimeError, TimeoutError), match="fake-gcs-server|emulator"):
            emulator.start()
        assert not emulator.running


def test_uri_and_env_of_the_emulator(gcs_emulator):
    assert gcs_emulator.uri() == "gs://nbml"
    assert gcs_emulator.uri("b1") == "gs://b1"
    assert gcs_emulator.env() == {"STORAGE_EMULATOR_HOST": gcs_emulator.emulator_host}
    assert gcs_emulator.emulator_host == f"http://127.0.0.1:{gcs_emulator.port}"
