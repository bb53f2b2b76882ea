"""The registry opens the adapter a URI's scheme names."""

import pytest

from nbml_server.adapters import registry
from nbml_server.adapters.local_blob_store import LocalBlobStore
from nbml_server.adapters.registry import (
    BackendUnavailable, open_blob_store, open_event_bus, open_table_store)
from nbml_server.adapters.sqlite_event_bus import SqliteEventBus
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.settings import Settings


def test_sqlite_uri_opens_a_sqlite_table_store_and_makes_its_folder(tmp_path):
    path = tmp_path / "deep" / "er" / "nbml.db"
    store = open_table_store(f"sqlite://{path}")
    try:
        assert isinstance(store, SqliteTableStore)
        store.put("users_by_id", "u1", "", {"v": 1})
        assert path.is_file()
    finally:
        store.close()


def test_file_uri_opens_a_local_blob_store_and_makes_its_folder(tmp_path):
    root = tmp_path / "deep" / "blobs"
    store = open_blob_store(f"file://{root}")
    try:
        assert isinstance(store, LocalBlobStore)
        store.put("a/b", b"x")
        assert (root / "a" / "b").read_bytes() == b"x"
    finally:
        store.close()


def test_local_uri_opens_a_sqlite_event_bus_and_makes_its_folder(tmp_path):
    path = tmp_path / "deep" / "bus.db"
    bus = open_event_bus(f"local://{path}")
    try:
        assert isinstance(bus, SqliteEventBus)
        assert path.is_file()
    finally:
        bus.close()


def test_percent_escapes_in_paths(tmp_path):
    store = open_blob_store(f"file://{tmp_path}/with%20space")
    store.put("a", b"x")
    store.close()
    assert (tmp_path / "with space" / "a").is_file()


def test_default_settings_uris_open(tmp_path):
    settings = Settings(home=tmp_path / "home")
    store = open_table_store(settings.store_uri)
    blobs = open_blob_store(settings.blobs_uri)
    bus = open_event_bus(settings.bus_uri)
    for port in (store, blobs, bus):
        port.close()
    assert (tmp_path / "home" / "nbml.db").is_file()
    assert (tmp_path / "home" / "blobs").is_dir()
    assert (tmp_path / "home" / "bus.db").is_file()


@pytest.mark.parametrize("opener, uri, known", [
    (open_table_store, "postgres://db/nbml", ["sqlite://", "cassandra://"]),
    (open_blob_store, "s3://bucket/x", ["file://", "gs://"]),
    (open_event_bus, "amqp://broker", ["local://", "kafka://"]),
    # A scheme of another port is unknown here.
    (open_table_store, "file:///tmp/x", ["sqlite://"]),
    (open_event_bus, "sqlite:///tmp/x.db", ["local://"]),
    (open_table_store, "/just/a/path.db", ["sqlite://"]),
])
def test_unknown_scheme_lists_the_known_ones(opener, uri, known):
    with pytest.raises(ValueError) as error:
        opener(uri)
    for scheme in known:
        assert scheme in str(error.value)


@pytest.mark.parametrize("opener, uri", [
    (open_table_store, "sqlite://relative.db"),
    (open_table_store, "sqlite://host/abs.db"),
    (open_blob_store, "file:relative/folder"),
    (open_event_bus, "local:///tmp/bus.db?mode=ro"),
])
def test_local_uris_need_an_absolute_path(opener, uri):
    with pytest.raises(ValueError, match="absolute path|query"):
        opener(uri)


@pytest.mark.parametrize("uri, module", [
    ("cassandra://db1,db2/nbml", "cassandra_table_store"),
    ("gs://bucket/prefix", "gcs_blob_store"),
    ("kafka://broker:9092", "kafka_event_bus"),
])
def test_distributed_schemes_open_their_sibling_module(monkeypatch, uri, module):
    """Each distributed scheme is opened by `from_uri` of its sibling module, imported
    only then (so its driver stays optional)."""
    opener = {"cassandra": open_table_store, "gs": open_blob_store,
              "kafka": open_event_bus}[uri.split(":")[0]]
    imported = []

    class FakeModule:
        @staticmethod
        def from_uri(given):
            return ("opened", given)

    def fake_import(name):
        imported.append(name)
        return FakeModule

    monkeypatch.setattr(registry.importlib, "import_module", fake_import)
    assert opener(uri) == ("opened", uri)
    assert imported == [f"nbml_server.adapters.{module}"]


def test_missing_driver_is_reported_as_unavailable(monkeypatch, tmp_path):
    # A backend module that exists but whose driver is not installed.
    adapters = tmp_path / "fake_adapters"
    adapters.mkdir()
    (adapters / "__init__.py").write_text("")
    (adapters / "fancy_store.py").write_text("import no_such_driver_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.TABLE_STORES, "fancy",
                        registry._distributed("fancy_store", package="fake_adapters"))
    with pytest.raises(BackendUnavailable, match="no_such_driver_xyz"):
        open_table_store("fancy://x")


def test_distributed_module_from_uri_is_called(monkeypatch, tmp_path):
    adapters = tmp_path / "fake_adapters2"
    adapters.mkdir()
    (adapters / "__init__.py").write_text("")
    (adapters / "echo_store.py").write_text("def from_uri(uri):\n    return ('opened', uri)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.TABLE_STORES, "echo",
                        registry._distributed("echo_store", package="fake_adapters2"))
    assert open_table_store("echo://host/ks") == ("opened", "echo://host/ks")
