"""Fixtures the unit tests of domain code share: the embedded backends in a temp dir."""

import pytest

from nbml_server.adapters.sqlite_table_store import SqliteTableStore


@pytest.fixture
def store(tmp_path):
    s = SqliteTableStore(tmp_path / "store.db")
    yield s
    s.close()
