"""Contract tests for the TableStore port, run against every adapter."""

import importlib.util
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from nbml_server.adapters import sqlite_connections
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.ports.table_store import TABLES


def _sqlite(request, tmp_path):
    return SqliteTableStore(tmp_path / "store.db")


def _cassandra(request, tmp_path):
    from nbml_server.adapters.cassandra_table_store import from_uri

    return from_uri(request.getfixturevalue("cassandra_uri"))


# A real Cassandra node (deploy/local_cluster/cassandra.py) needs Java and Maven, and
# the adapter the driver (the "cluster" extra).
_NO_CASSANDRA = (shutil.which("java") is None or shutil.which("mvn") is None
                 or importlib.util.find_spec("cassandra") is None)

# One factory per adapter: `factory(request, tmp_path)` opens a store; calling it again
# in the same test opens the same data. Each test starts from an empty store: SQLite
# gets a new file per tmp_path; Cassandra shares one keyspace per module (creating its
# tables takes seconds) and empties the tables a test wrote to after it.
FACTORIES = [
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_cassandra, id="cassandra",
                 marks=pytest.mark.skipif(_NO_CASSANDRA,
                                          reason="needs java, mvn and cassandra-driver")),
]

T = "jobs_by_user"  # any declared table


@pytest.fixture(scope="module")
def cassandra_keyspace(cassandra_node):
    """A keyspace of this module, with its tables: (uri, a driver session on it)."""
    from cassandra.cluster import Cluster

    from nbml_server.adapters.cassandra_table_store import from_uri

    uri = cassandra_node.uri(f"contract_{uuid.uuid4().hex[:12]}")
    from_uri(uri).close()  # runs the migrations once
    cluster = Cluster(["127.0.0.1"], port=cassandra_node.native_port)
    try:
        yield uri, cluster.connect()
    finally:
        cluster.shutdown()


@pytest.fixture
def cassandra_uri(cassandra_keyspace):
    """The module's keyspace; emptied after the test."""
    uri, session = cassandra_keyspace
    yield uri
    keyspace = uri.rsplit("/", 1)[1]
    for table in TABLES:
        if session.execute(f'SELECT key FROM "{keyspace}"."{table}" LIMIT 1').one():
            session.execute(f'TRUNCATE "{keyspace}"."{table}"', timeout=60)


@pytest.fixture(params=FACTORIES)
def factory(request, tmp_path):
    opened = []

    def open_store():
        store = request.param(request, tmp_path)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(factory):
    return factory()


# Round trips.

def test_get_returns_an_equal_row(store):
    row = {"name": "héllo ✓ 𝄞", "n": 3, "x": 1.5, "ok": True, "none": None,
           "list": [1, "two", {"three": 3}], "nested": {"a": {"b": []}}}
    store.put(T, "u1", "j1", row)
    assert store.get(T, "u1", "j1") == row


def test_get_missing_row_is_none(store):
    assert store.get(T, "u1", "nothing") is None


def test_put_replaces(store):
    store.put(T, "u1", "j1", {"v": 1})
    store.put(T, "u1", "j1", {"w": 2})
    assert store.get(T, "u1", "j1") == {"w": 2}


def test_put_many_writes_rows_of_several_partitions_and_replaces(store):
    store.put(T, "u1", "j1", {"v": "old"})
    store.put_many(T, [("u1", "j1", {"v": 1}), ("u1", "j2", {"v": 2}), ("", "j3", {"v": 3})])
    assert store.get(T, "u1", "j1") == {"v": 1}
    assert store.get(T, "u1", "j2") == {"v": 2}
    assert store.get(T, "", "j3") == {"v": 3}
    store.put_many(T, [])


def test_empty_key_and_partition_are_addresses_too(store):
    store.put("users_by_id", "", "", {"v": 0})
    store.put("users_by_id", "u1", "", {"v": 1})
    assert store.get("users_by_id", "", "") == {"v": 0}
    assert store.get("users_by_id", "u1", "") == {"v": 1}


def test_addresses_are_independent(store):
    store.put(T, "u1", "k", {"where": "u1"})
    store.put(T, "u2", "k", {"where": "u2"})
    store.put("models_by_user", "u1", "k", {"where": "models"})
    assert store.get(T, "u1", "k") == {"where": "u1"}
    assert store.get(T, "u2", "k") == {"where": "u2"}
    assert store.get("models_by_user", "u1", "k") == {"where": "models"}


def test_delete(store):
    store.put(T, "u1", "j1", {"v": 1})
    store.put(T, "u1", "j2", {"v": 2})
    store.delete(T, "u1", "j1")
    assert store.get(T, "u1", "j1") is None
    assert store.get(T, "u1", "j2") == {"v": 2}


def test_delete_missing_row_is_not_an_error(store):
    store.delete(T, "u1", "nothing")


def test_every_declared_table_is_usable(store):
    for table in TABLES:
        store.put(table, "p", "k", {"table": table})
    for table in TABLES:
        assert store.get(table, "p", "k") == {"table": table}


def test_rows_survive_reopening(factory):
    first = factory()
    first.put(T, "u1", "j1", {"v": 1})
    first.close()
    assert factory().get(T, "u1", "j1") == {"v": 1}


# Unknown tables.

@pytest.mark.parametrize("call", [
    lambda s: s.put("nope", "p", "k", {}),
    lambda s: s.put_if_absent("nope", "p", "k", {}),
    lambda s: s.put_many("nope", [("p", "k", {})]),
    lambda s: s.get("nope", "p", "k"),
    lambda s: s.delete("nope", "p", "k"),
    lambda s: s.scan("nope", "p", limit=10),
    lambda s: s.get('jobs_by_user" --', "p", "k"),
], ids=["put", "put_if_absent", "put_many", "get", "delete", "scan", "injection"])
def test_unknown_table_raises_key_error(store, call):
    with pytest.raises(KeyError):
        call(store)


# put_if_absent.

def test_put_if_absent_inserts_once(store):
    assert store.put_if_absent(T, "u1", "j1", {"v": 1}) is True
    assert store.put_if_absent(T, "u1", "j1", {"v": 2}) is False
    assert store.get(T, "u1", "j1") == {"v": 1}


def test_put_if_absent_after_delete_inserts_again(store):
    assert store.put_if_absent(T, "u1", "j1", {"v": 1})
    store.delete(T, "u1", "j1")
    assert store.put_if_absent(T, "u1", "j1", {"v": 2})
    assert store.get(T, "u1", "j1") == {"v": 2}


def test_put_if_absent_has_one_winner_among_threads(store):
    threads, rounds = 8, 20
    barrier = threading.Barrier(threads)

    def contend(contender: int) -> list[bool]:
        results = []
        for n in range(rounds):
            barrier.wait()  # line every contender up on the same key
            results.append(store.put_if_absent(
                "users_by_name", f"user{n}", "", {"winner": contender}))
        return results

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(contend, range(threads)))
    for n in range(rounds):
        winners = [c for c in range(threads) if outcomes[c][n]]
        assert len(winners) == 1, f"round {n}: winners {winners}"
        assert store.get("users_by_name", f"user{n}", "") == {"winner": winners[0]}


# A separate Python process racing on the same SQLite file: waits for "go" on stdin,
# opens the store, tries every key, prints the keys it won.
_RACER = """
import sys
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
name, keys = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
store = SqliteTableStore(sys.argv[1])
won = [k for k in range(keys) if store.put_if_absent("users_by_name", f"user{k}", "", {"winner": name})]
print(" ".join(map(str, won)), flush=True)
store.close()
"""


def test_sqlite_put_if_absent_has_one_winner_among_processes(tmp_path):
    # The processes also open the new file together, as the platform's services do at
    # first start: switching it to WAL mode must not fail with "database is locked".
    path, keys, names = tmp_path / "store.db", 200, ["a", "b", "c", "d"]
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(path), name, str(keys)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
              for name in names]
    try:
        for racer in racers:
            assert racer.stdout.readline().strip() == "ready"
        for racer in racers:
            racer.stdin.write("go\n")
            racer.stdin.flush()
        won = {name: [int(k) for k in racer.communicate(timeout=30)[0].split()]
               for name, racer in zip(names, racers)}
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    assert [racer.returncode for racer in racers] == [0] * len(racers)
    assert sorted(k for ks in won.values() for k in ks) == list(range(keys))
    store = SqliteTableStore(path)
    try:
        for name, ks in won.items():
            for k in ks:
                assert store.get("users_by_name", f"user{k}", "") == {"winner": name}
    finally:
        store.close()


def test_sqlite_open_waits_while_another_process_locks_a_new_file(tmp_path, monkeypatch):
    # Switching a new file to WAL mode fails at once ("database is locked", without
    # waiting for busy_timeout) while another connection holds its write lock: that
    # happens when the services first start together on a new file.
    path = tmp_path / "store.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")  # holds the write lock until COMMIT
    retrying, real_sleep = threading.Event(), sqlite_connections.time.sleep

    def sleep(seconds):
        retrying.set()
        real_sleep(seconds)

    monkeypatch.setattr(sqlite_connections.time, "sleep", sleep)
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(SqliteTableStore, path)
        # Ready when the opener hit the lock and is retrying (or gave up: result raises).
        while not (retrying.wait(0.01) or opening.done()):
            pass
        other.execute("COMMIT")
        store = opening.result(timeout=10)
    other.close()
    try:
        store.put(T, "u1", "j1", {"v": 1})
        assert store.get(T, "u1", "j1") == {"v": 1}
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


# scan.

KEYS = ["", "0", "00", "1", "10", "2", "A", "Z", "a", "a0", "ab", "b", "z", "é", "ž", "𝄞"]


@pytest.fixture
def filled(store):
    shuffled = KEYS[:]
    random.Random(7).shuffle(shuffled)
    for key in shuffled:
        store.put(T, "p", key, {"key": key})
    store.put(T, "other", "a1", {"key": "other"})
    store.put("models_by_user", "p", "a1", {"key": "other table"})
    return store


def _keys(pairs):
    return [key for key, _ in pairs]


def test_scan_returns_the_partition_in_string_order(filled):
    pairs = filled.scan(T, "p", limit=100)
    assert _keys(pairs) == sorted(KEYS)
    assert all(row == {"key": key} for key, row in pairs)


def test_scan_descending(filled):
    assert _keys(filled.scan(T, "p", limit=100, descending=True)) == sorted(KEYS, reverse=True)


def test_scan_limit(filled):
    assert _keys(filled.scan(T, "p", limit=3)) == sorted(KEYS)[:3]
    assert _keys(filled.scan(T, "p", limit=3, descending=True)) == sorted(KEYS, reverse=True)[:3]


def test_scan_after_is_exclusive(filled):
    assert _keys(filled.scan(T, "p", limit=100, after="a")) == [k for k in sorted(KEYS) if k > "a"]
    assert _keys(filled.scan(T, "p", limit=100, after="a", descending=True)) == \
        [k for k in sorted(KEYS, reverse=True) if k < "a"]


def test_scan_after_a_key_that_is_not_there(filled):
    assert _keys(filled.scan(T, "p", limit=2, after="a00")) == ["ab", "b"]
    assert _keys(filled.scan(T, "p", limit=2, after="a00", descending=True)) == ["a0", "a"]


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
def test_scan_pages_through_everything(filled, descending):
    seen, after = [], None
    while True:
        page = _keys(filled.scan(T, "p", limit=4, after=after, descending=descending))
        if not page:
            break
        assert len(page) <= 4
        seen += page
        after = page[-1]
    assert seen == sorted(KEYS, reverse=descending)


def test_scan_past_the_end_is_empty(filled):
    assert filled.scan(T, "p", limit=10, after="𝄞") == []
    assert filled.scan(T, "p", limit=10, after="", descending=True) == []


def test_scan_of_empty_partition_is_empty(store):
    assert store.scan(T, "empty", limit=10) == []
