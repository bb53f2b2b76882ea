"""The Cassandra table store against a real node: schema migrations, what the data looks
like in CQL, and behaviour while the node is down. (The port's contract itself is
checked in tests/contract/test_table_store.py.)"""

import json
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.skipif(shutil.which("java") is None or shutil.which("mvn") is None,
                                reason="a Cassandra node needs java and mvn")

from nbml_server.errors import Unavailable  # noqa: E402
from nbml_server.ports.table_store import TABLES  # noqa: E402

cassandra_table_store = pytest.importorskip("nbml_server.adapters.cassandra_table_store")
from_uri, parse_uri = cassandra_table_store.from_uri, cassandra_table_store.parse_uri


def _new_keyspace() -> str:
    return f"it_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def keyspace(cassandra_node):
    """A keyspace of this module with its tables created."""
    name = _new_keyspace()
    from_uri(cassandra_node.uri(name)).close()
    return name


@pytest.fixture
def cql(cassandra_node):
    """A plain driver session, as a user would open one."""
    from cassandra.cluster import Cluster

    cluster = Cluster(["127.0.0.1"], port=cassandra_node.native_port)
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


def test_migrations_run_once_even_when_stores_open_concurrently(cassandra_node, cql):
    uri = cassandra_node.uri(_new_keyspace())
    keyspace = uri.rsplit("/", 1)[1]
    with ThreadPoolExecutor(3) as pool:
        stores = list(pool.map(lambda _: from_uri(uri), range(3)))
    try:
        stores[0].put("jobs_by_user", "u1", "j1", {"by": 0})
        assert stores[1].get("jobs_by_user", "u1", "j1") == {"by": 0}
    finally:
        for store in stores:
            store.close()
    again = from_uri(uri)  # nothing left to apply: opening is quick and changes nothing
    try:
        assert again.applied_migrations() == {
            version: description
            for version, description, _ in cassandra_table_store.MIGRATIONS}
        assert again.get("jobs_by_user", "u1", "j1") == {"by": 0}
    finally:
        again.close()
    recorded = list(cql.execute(
        f"SELECT version, description, applied_at FROM {keyspace}.schema_migrations"))
    assert [row.version for row in recorded] == [1]
    assert recorded[0].applied_at is not None
    tables = {row.table_name for row in cql.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", [keyspace])}
    assert tables == set(TABLES) | {"schema_migrations"}
    replication = cql.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        [keyspace]).one().replication
    assert replication["class"].endswith("SimpleStrategy")
    assert replication["replication_factor"] == "1"


def test_rows_are_plain_cql_rows(cassandra_node, keyspace, cql):
    store = from_uri(cassandra_node.uri(keyspace))
    try:
        store.put("jobs_by_user", "alice", "job-2", {"state": "RUNNING", "név": "✓"})
        assert store.put_if_absent("jobs_by_user", "alice", "job-1", {"state": "DONE"})
        store.put("jobs_by_user", "bob", "job-3", {"state": "FAILED"})
    finally:
        store.close()
    rows = list(cql.execute(
        f"SELECT partition, key, row FROM {keyspace}.jobs_by_user WHERE partition = %s",
        ["alice"]))
    assert [(row.partition, row.key) for row in rows] == [("alice", "job-1"),
                                                          ("alice", "job-2")]
    assert [json.loads(row.row) for row in rows] == [
        {"state": "DONE"}, {"state": "RUNNING", "név": "✓"}]
    assert rows[1].row == '{"state":"RUNNING","név":"✓"}'


def test_an_empty_partition_is_stored_under_an_escape(cassandra_node, keyspace, cql):
    # Cassandra refuses an empty partition key; "" is stored as "\x00", and partitions
    # that start with "\x00" get one more in front, so no two partitions meet.
    store = from_uri(cassandra_node.uri(keyspace))
    try:
        for partition in ("", "\x00", "\x00\x00", "x"):
            store.put("users_by_id", partition, "", {"p": partition})
        for partition in ("", "\x00", "\x00\x00", "x"):
            assert store.get("users_by_id", partition, "") == {"p": partition}
            assert store.scan("users_by_id", partition, limit=5) == [("", {"p": partition})]
    finally:
        store.close()
    stored = {row.partition for row in cql.execute(f"SELECT partition FROM {keyspace}.users_by_id")}
    assert stored == {"\x00", "\x00\x00", "\x00\x00\x00", "x"}


@pytest.mark.parametrize("uri, message", [
    ("cassandra:///nbml", "names no host"),
    ("cassandra://h:99999/nbml", "bad port"),
    ("cassandra://h/", "must name a keyspace"),
    ("cassandra://h/no-dashes", "must name a keyspace"),
    ("cassandra://h/nbml?consistency=LOCAL_SERIAL", "not a valid consistency"),
    ("cassandra://h/nbml?serial_consistency=QUORUM", "not a valid serial_consistency"),
    ("cassandra://h/nbml?replication_factor=0", "at least 1"),
    ("cassandra://h/nbml?replication=3", "unknown option"),
])
def test_bad_uris_are_refused(uri, message):
    with pytest.raises(ValueError, match=message):
        parse_uri(uri)


def test_uri_settings():
    from cassandra import ConsistencyLevel

    settings = parse_uri("cassandra://a:9142,b,[::1]:9043/NBML?replication_factor=3"
                         "&consistency=quorum&serial_consistency=SERIAL&request_timeout=2.5")
    assert settings.contact_points == [("a", 9142), ("b", 9042), ("::1", 9043)]
    assert settings.keyspace == "nbml"
    assert settings.replication_factor == 3
    assert settings.consistency == ConsistencyLevel.QUORUM
    assert settings.serial_consistency == ConsistencyLevel.SERIAL
    assert settings.request_timeout == 2.5


def test_unreachable_cluster_is_unavailable_at_open():
    from deploy.local_cluster.downloads import free_port

    started = time.monotonic()
    with pytest.raises(Unavailable, match="unavailable"):
        from_uri(f"cassandra://127.0.0.1:{free_port()}/nbml?connect_timeout=2")
    assert time.monotonic() - started < 15


CALLS = {
    "get": lambda s: s.get("jobs_by_user", "u1", "j1"),
    "put": lambda s: s.put("jobs_by_user", "u1", "j2", {"v": 2}),
    "put_if_absent": lambda s: s.put_if_absent("jobs_by_user", "u1", "j3", {"v": 3}),
    "delete": lambda s: s.delete("jobs_by_user", "u1", "j4"),
    "scan": lambda s: s.scan("jobs_by_user", "u1", limit=10),
    "scan (first use)": lambda s: s.scan("models_by_user", "u1", limit=10, after="a",
                                         descending=True),
}


def test_store_is_unavailable_while_the_node_is_down_and_recovers(cassandra_node, keyspace):
    """Stops the session's node: while it is down every call fails fast with
    Unavailable; after the restart the same store works again, data intact."""
    store = from_uri(cassandra_node.uri(keyspace))
    try:
        store.put("jobs_by_user", "u1", "j1", {"v": 1})
        cassandra_node.stop()
        try:
            for name, call in CALLS.items():
                started = time.monotonic()
                with pytest.raises(Unavailable, match="unavailable"):
                    call(store)
                assert time.monotonic() - started < 10, name
            started = time.monotonic()
            with pytest.raises(Unavailable):
                from_uri(cassandra_node.uri(keyspace))
            assert time.monotonic() - started < 15
        finally:
            cassandra_node.restart()
        # The driver reconnects by itself (delays of at most 2 s).
        deadline = time.monotonic() + 30
        while True:
            try:
                found = store.get("jobs_by_user", "u1", "j1")
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        assert found == {"v": 1}
        for call in CALLS.values():
            call(store)
        assert store.get("jobs_by_user", "u1", "j2") == {"v": 2}
        assert store.get("jobs_by_user", "u1", "j3") == {"v": 3}
    finally:
        store.close()
