"""Opens a port's adapter from a URI; the scheme picks the adapter.

| port        | embedded                  | distributed                        |
|-------------|---------------------------|------------------------------------|
| table store | `sqlite:///abs/path.db`   | `cassandra://...` (cassandra_table_store) |
| blob store  | `file:///abs/folder`      | `gs://...` (gcs_blob_store)        |
| event bus   | `local:///abs/path/bus.db`| `kafka://...` (kafka_event_bus)    |

Distributed adapters live in sibling modules that are imported only when their scheme
is asked for, so their drivers are optional dependencies. Such a module provides
`from_uri(uri: str)` returning the adapter. When the module (or the driver it imports)
is missing, opening raises `BackendUnavailable`.

Nothing is opened at import time and nothing is cached: each call opens a new store,
which the caller closes.
"""

import importlib
import pathlib
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from nbml_server.ports.blob_store import BlobStore
from nbml_server.ports.event_bus import EventBus
from nbml_server.ports.table_store import TableStore


class BackendUnavailable(RuntimeError):
    """The URI names a known backend whose adapter or driver is not installed."""


def _local_path(uri: str, *, example: str) -> pathlib.Path:
    """The absolute file path of `scheme:///abs/path`; creates its parent folder."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(f"{uri!r} must name an absolute path, like {example}")
    if parts.query or parts.fragment:
        raise ValueError(f"{uri!r} must not have a query or fragment")
    return pathlib.Path(unquote(parts.path))


def _sqlite_table_store(uri: str) -> TableStore:
    from nbml_server.adapters.sqlite_table_store import SqliteTableStore

    path = _local_path(uri, example="sqlite:///abs/path.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteTableStore(path)


def _local_blob_store(uri: str) -> BlobStore:
    from nbml_server.adapters.local_blob_store import LocalBlobStore

    # LocalBlobStore creates the folder itself.
    return LocalBlobStore(_local_path(uri, example="file:///abs/folder"))


def _sqlite_event_bus(uri: str) -> EventBus:
    from nbml_server.adapters.sqlite_event_bus import SqliteEventBus

    path = _local_path(uri, example="local:///abs/path/bus.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteEventBus(path)


def _distributed(module: str, package: str = __package__) -> Callable[[str], object]:
    """Opener that imports `{package}.{module}` on use and calls its `from_uri`."""

    def open_(uri: str):
        name = f"{package}.{module}"
        try:
            adapter = importlib.import_module(name)
        except ModuleNotFoundError as error:
            scheme = urlsplit(uri).scheme
            if error.name == name:
                raise BackendUnavailable(
                    f"the {scheme!r} backend is not available in this installation "
                    f"(no module {name})") from error
            raise BackendUnavailable(
                f"the {scheme!r} backend needs the {error.name!r} package, "
                "which is not installed") from error
        return adapter.from_uri(uri)

    return open_


# Scheme -> opener, per port. Distributed schemes are reserved even before their
# adapters exist, so a typo and a missing backend give different errors.
TABLE_STORES: dict[str, Callable[[str], TableStore]] = {
    "sqlite": _sqlite_table_store,
    "cassandra": _distributed("cassandra_table_store"),
}
BLOB_STORES: dict[str, Callable[[str], BlobStore]] = {
    "file": _local_blob_store,
    "gs": _distributed("gcs_blob_store"),
}
EVENT_BUSES: dict[str, Callable[[str], EventBus]] = {
    "local": _sqlite_event_bus,
    "kafka": _distributed("kafka_event_bus"),
}


def _open(uri: str, openers: dict[str, Callable], port: str):
    scheme = urlsplit(uri).scheme  # lower-cased by urlsplit
    opener = openers.get(scheme)
    if opener is None:
        known = ", ".join(f"{name}://" for name in openers)
        raise ValueError(f"unknown {port} URI scheme in {uri!r}; known schemes: {known}")
    return opener(uri)


def open_table_store(uri: str) -> TableStore:
    return _open(uri, TABLE_STORES, "table store")


def open_blob_store(uri: str) -> BlobStore:
    return _open(uri, BLOB_STORES, "blob store")


def open_event_bus(uri: str) -> EventBus:
    return _open(uri, EVENT_BUSES, "event bus")
