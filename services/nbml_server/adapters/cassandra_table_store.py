"""Distributed table store: Apache Cassandra, one CQL table per name in `TABLES`.

    cassandra://host[:port][,host2[:port]]/keyspace?replication_factor=1
        &consistency=LOCAL_QUORUM&serial_consistency=LOCAL_SERIAL

Every table has the port's shape,

    CREATE TABLE <keyspace>.<table> (partition text, key text, row text,
        PRIMARY KEY ((partition), key)) WITH CLUSTERING ORDER BY (key ASC)

with the row as JSON text, so the data can be read with plain CQL:
`SELECT key, row FROM nbml.jobs_by_user WHERE partition = 'u1'`. Cassandra refuses an
empty partition key, so the partition "" is stored as "\\x00" (and a partition that
starts with "\\x00" gets one more in front); every other partition is stored as is.
Keys sort as UTF-8 bytes, which is code point order, so scans follow Python string order.

Opening creates the keyspace if missing (SimpleStrategy with the URI's
`replication_factor`) and applies the versioned migrations of `MIGRATIONS` that the
keyspace's `schema_migrations` table does not record yet. Migrations must be idempotent
(`IF NOT EXISTS`): processes that open at once may run the same one, and its record is
written with `IF NOT EXISTS`. Schema changes from every process go to the same live node
(the lowest address), so concurrent `CREATE TABLE IF NOT EXISTS` on a multi-node
cluster cannot create one table twice with different ids, and each change waits for
schema agreement.

`put_if_absent` is a lightweight transaction (`INSERT ... IF NOT EXISTS`, Paxos at the
serial consistency). Other statements are prepared once per table on first use.
Cassandra's mutations carry timestamps: plain writes use the client's clock, the
lightweight transaction the coordinator's, so hosts need synchronised clocks (NTP).

When Cassandra cannot be reached or does not answer in time, calls raise
`nbml_server.errors.Unavailable` (after at most `request_timeout` seconds, default 8;
at once when no node is up). The driver keeps reconnecting in the background
(exponential delays from 0.25 s up to 2 s), so the same store works again once a node is
back. The store is safe to share between threads.
"""

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from cassandra import (ConsistencyLevel, CoordinationFailure, OperationTimedOut, ReadTimeout,
                       WriteTimeout)
from cassandra import Unavailable as CassandraUnavailable
from cassandra.cluster import (EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile,
                               NoHostAvailable)
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.connection import ConnectionException, DefaultEndPoint
from cassandra.policies import (DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy,
                                TokenAwarePolicy)
from cassandra.query import SimpleStatement

from nbml_server.errors import Unavailable
from nbml_server.ports.table_store import TABLES, TableStore, decode_row, encode_row

DEFAULT_PORT = 9042
_KEYSPACE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
_UNREACHABLE = (NoHostAvailable, OperationTimedOut, CassandraUnavailable, ReadTimeout,
                WriteTimeout, CoordinationFailure, ConnectionException, OSError)


# Migrations: (version, description, statements). `{ks}` is the keyspace. Append new
# ones with the next version; never edit an applied one. Every statement must be safe to
# run twice (IF NOT EXISTS / IF EXISTS), as processes opening at once may both run it.

def _create_port_tables(ks: str) -> list[str]:
    return [f'CREATE TABLE IF NOT EXISTS "{ks}"."{table}" ('
            " partition text, key text, row text, PRIMARY KEY ((partition), key))"
            " WITH CLUSTERING ORDER BY (key ASC)"
            for table in TABLES]


MIGRATIONS: list[tuple[int, str, Callable[[str], list[str]]]] = [
    (1, "one table per name in TABLES: (partition, key) -> row as JSON",
     _create_port_tables),
]


@dataclass(frozen=True)
class CassandraSettings:
    contact_points: list[tuple[str, int]]
    keyspace: str
    replication_factor: int = 1
    consistency: int = ConsistencyLevel.LOCAL_QUORUM
    serial_consistency: int = ConsistencyLevel.LOCAL_SERIAL
    connect_timeout: float = 5.0
    request_timeout: float = 8.0
    local_dc: str | None = None


def parse_uri(uri: str) -> CassandraSettings:
    """Settings from `cassandra://host[:port][,host[:port]]/keyspace?option=value&...`.

    Options: replication_factor (for a new keyspace), consistency, serial_consistency
    (LOCAL_SERIAL or SERIAL), connect_timeout and request_timeout (seconds), local_dc.
    """
    parts = urlsplit(uri)
    if parts.scheme != "cassandra":
        raise ValueError(f"{uri!r} is not a cassandra:// URI")
    if parts.fragment:
        raise ValueError(f"{uri!r} must not have a fragment")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if not netloc:
        raise ValueError(f"{uri!r} names no host, like cassandra://host:9042/keyspace")
    contact_points = []
    for item in netloc.split(","):
        host, port = item, DEFAULT_PORT
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            if rest:
                port = _port(rest.removeprefix(":"), uri)
        elif item.count(":") == 1:
            host, text = item.split(":")
            port = _port(text, uri)
        if not host:
            raise ValueError(f"{uri!r} has an empty host")
        contact_points.append((host, port))
    keyspace = unquote(parts.path.strip("/"))
    if not _KEYSPACE.fullmatch(keyspace):
        raise ValueError(f"{uri!r} must name a keyspace (letters, digits, _; up to 48), "
                         "like cassandra://host:9042/nbml")
    options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    settings: dict = {"contact_points": contact_points,
                      # Unquoted CQL names are case-insensitive: nbml and NBML are one.
                      "keyspace": keyspace.lower()}
    for name, value in options.items():
        if name == "replication_factor":
            settings[name] = _number(int, name, value, uri, minimum=1)
        elif name in ("consistency", "serial_consistency"):
            level = ConsistencyLevel.name_to_value.get(value.upper())
            serial = level in (ConsistencyLevel.SERIAL, ConsistencyLevel.LOCAL_SERIAL)
            if level is None or serial != (name == "serial_consistency"):
                raise ValueError(f"{uri!r}: {value!r} is not a valid {name}")
            settings[name] = level
        elif name in ("connect_timeout", "request_timeout"):
            settings[name] = _number(float, name, value, uri, minimum=0.1)
        elif name == "local_dc":
            settings[name] = value or None
        else:
            raise ValueError(f"{uri!r}: unknown option {name!r}")
    return CassandraSettings(**settings)


def _port(text: str, uri: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{uri!r} has a bad port {text!r}")
    return int(text)


def _number(kind, name, value, uri, *, minimum):
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{uri!r}: {name} must be a number, not {value!r}") from None
    if number < minimum:
        raise ValueError(f"{uri!r}: {name} must be at least {minimum}")
    return number


def from_uri(uri: str) -> "CassandraTableStore":
    return CassandraTableStore(parse_uri(uri))


class _LowestAddressFirst(DCAwareRoundRobinPolicy):
    """Live hosts in one fixed order (local DC first, then by address), so schema
    changes from every process meet on the same coordinator."""

    def make_query_plan(self, working_keyspace=None, query=None):
        hosts = super().make_query_plan(working_keyspace, query)
        return iter(sorted(hosts, key=lambda host: (self.distance(host), host.endpoint)))


def _stored_partition(partition: str) -> str:
    # Cassandra refuses an empty partition key; this mapping is one-to-one.
    return "\x00" + partition if partition == "" or partition.startswith("\x00") else partition


# Least time between two fresh connections opened while no node answers.
RECONNECT_SECONDS = 3.0
# Writes in flight at once for one put_many.
PUT_MANY_CONCURRENCY = 32


class CassandraTableStore(TableStore):
    def __init__(self, settings: CassandraSettings):
        self.settings = settings
        self.keyspace = settings.keyspace
        ports = {port for _, port in settings.contact_points}
        if len(ports) == 1:
            contact_points, port = [host for host, _ in settings.contact_points], ports.pop()
        else:
            contact_points = [DefaultEndPoint(h, p) for h, p in settings.contact_points]
            port = DEFAULT_PORT
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(settings.local_dc)),
            consistency_level=settings.consistency,
            serial_consistency_level=settings.serial_consistency,
            request_timeout=settings.request_timeout)
        ddl = ExecutionProfile(
            load_balancing_policy=_LowestAddressFirst(settings.local_dc),
            consistency_level=settings.consistency,
            serial_consistency_level=settings.serial_consistency,
            # A schema change takes a while on a busy node; the driver then waits for
            # schema agreement (up to max_schema_agreement_wait) on top of it.
            request_timeout=max(settings.request_timeout, 30.0))
        self._new_cluster = lambda: Cluster(
            contact_points, port=port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile, "ddl": ddl},
            connect_timeout=settings.connect_timeout,
            control_connection_timeout=settings.connect_timeout,
            reconnection_policy=ExponentialReconnectionPolicy(0.25, 2.0, max_attempts=None),
            max_schema_agreement_wait=30,
            # Notice dead connections to a hung node within ~20 s.
            idle_heartbeat_interval=10, idle_heartbeat_timeout=10)
        self._cluster = self._new_cluster()
        self._statements: dict[tuple[str, str], object] = {}
        self._prepare_lock = threading.Lock()
        self._reconnecting = threading.Lock()
        self._last_reconnect = time.monotonic()
        try:
            self._session = self._call(self._cluster.connect)
            self._migrate()
        except BaseException:
            self._cluster.shutdown()
            raise

    # Errors.

    def _call(self, function, *args, **kwargs):
        """Runs a driver call; an unreachable cluster becomes `Unavailable`."""
        try:
            return function(*args, **kwargs)
        except _UNREACHABLE as error:
            if isinstance(error, NoHostAvailable) and hasattr(self, "_session"):
                self._reconnect_soon()
            raise Unavailable(f"Cassandra at {self._where()} is unavailable: "
                              f"{_describe(error)}") from error

    def _reconnect_soon(self) -> None:
        """Opens a fresh connection in the background, at most every few seconds.

        The driver reconnects by itself, but after a restart of the whole cluster a
        session that saw every node go down was seen to stay without a node for good;
        a new session always comes back once a node answers.
        """
        if (time.monotonic() - self._last_reconnect < RECONNECT_SECONDS
                or not self._reconnecting.acquire(blocking=False)):
            return
        self._last_reconnect = time.monotonic()

        def reconnect() -> None:
            try:
                cluster = self._new_cluster()
                try:
                    session = cluster.connect()
                except Exception:
                    cluster.shutdown()
                    return
                with self._prepare_lock:
                    old = self._cluster
                    self._cluster, self._session, self._statements = cluster, session, {}
                old.shutdown()
            finally:
                self._last_reconnect = time.monotonic()
                self._reconnecting.release()
        threading.Thread(target=reconnect, name="cassandra-reconnect", daemon=True).start()

    def _where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.settings.contact_points)

    # Schema.

    def _ddl(self, statement: str) -> None:
        result = self._call(self._session.execute, statement, execution_profile="ddl")
        if not result.response_future.is_schema_agreed and not self._call(
                self._cluster.control_connection.wait_for_schema_agreement):
            raise Unavailable(f"Cassandra at {self._where()}: the nodes did not agree on "
                              f"the schema in time after: {statement}")

    def _migrate(self) -> None:
        ks = self.keyspace
        # The driver read the schema when it connected: skip what exists (a user without
        # CREATE permission can then still open an existing keyspace).
        known = self._cluster.metadata.keyspaces.get(ks)
        if known is None:
            self._ddl(f'CREATE KEYSPACE IF NOT EXISTS "{ks}" WITH replication = '
                      "{'class': 'SimpleStrategy', 'replication_factor': "
                      f"{self.settings.replication_factor}}}")
        if known is None or "schema_migrations" not in known.tables:
            self._ddl(f'CREATE TABLE IF NOT EXISTS "{ks}".schema_migrations ('
                      " version int PRIMARY KEY, description text, applied_at timestamp)")
        done = {row.version for row in self._call(
            self._session.execute,
            SimpleStatement(f'SELECT version FROM "{ks}".schema_migrations',
                            consistency_level=self.settings.serial_consistency))}
        record = self._call(
            self._session.prepare,
            f'INSERT INTO "{ks}".schema_migrations (version, description, applied_at)'
            " VALUES (?, ?, toTimestamp(now())) IF NOT EXISTS")
        for version, description, statements in MIGRATIONS:
            if version in done:
                continue
            for statement in statements(ks):
                self._ddl(statement)
            self._call(self._session.execute, record, (version, description))

    def applied_migrations(self) -> dict[int, str]:
        """Recorded migrations: version -> description."""
        rows = self._call(self._session.execute,
                          f'SELECT version, description FROM "{self.keyspace}".schema_migrations')
        return {row.version: row.description for row in rows}

    # Statements.

    def _statement(self, table: str, kind: str):
        # Table names go into CQL, so only the declared ones get through.
        if table not in TABLES:
            raise KeyError(f"unknown table {table!r}")
        found = self._statements.get((table, kind))
        if found is None:
            with self._prepare_lock:
                found = self._statements.get((table, kind))
                if found is None:
                    cql = _CQL[kind].format(table=f'"{self.keyspace}"."{table}"')
                    found = self._call(self._session.prepare, cql)
                    self._statements[(table, kind)] = found
        return found

    # The port.

    def put(self, table: str, partition: str, key: str, row: dict) -> None:
        statement, text = self._statement(table, "put"), encode_row(row)
        self._call(self._session.execute, statement, (_stored_partition(partition), key, text))

    def put_many(self, table: str, rows: Sequence[tuple[str, str, dict]]) -> None:
        # Concurrent single-row writes rather than a batch: a batch over many partitions
        # loads one coordinator and trips Cassandra's batch size limits.
        statement = self._statement(table, "put")
        self._call(execute_concurrent_with_args, self._session, statement,
                   [(_stored_partition(partition), key, encode_row(row))
                    for partition, key, row in rows],
                   concurrency=PUT_MANY_CONCURRENCY, raise_on_first_error=True)

    def put_if_absent(self, table: str, partition: str, key: str, row: dict) -> bool:
        statement, text = self._statement(table, "put_if_absent"), encode_row(row)
        result = self._call(self._session.execute, statement,
                            (_stored_partition(partition), key, text))
        return bool(result.was_applied)

    def get(self, table: str, partition: str, key: str) -> dict | None:
        statement = self._statement(table, "get")
        found = self._call(self._session.execute, statement,
                           (_stored_partition(partition), key)).one()
        return None if found is None else decode_row(found.row)

    def delete(self, table: str, partition: str, key: str) -> None:
        statement = self._statement(table, "delete")
        self._call(self._session.execute, statement, (_stored_partition(partition), key))

    def scan(self, table: str, partition: str, *, limit: int, after: str | None = None,
             descending: bool = False) -> list[tuple[str, dict]]:
        kind = ("scan_desc" if descending else "scan") + ("_after" if after is not None else "")
        statement = self._statement(table, kind)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if limit == 0:  # CQL wants LIMIT > 0
            return []
        params = [_stored_partition(partition)]
        if after is not None:
            params.append(after)
        params.append(limit)

        def fetch():  # paging (over 5000 rows) also talks to the server
            return [(found.key, decode_row(found.row))
                    for found in self._session.execute(statement, params)]

        return self._call(fetch)

    def close(self) -> None:
        self._cluster.shutdown()


_CQL = {
    "put": "INSERT INTO {table} (partition, key, row) VALUES (?, ?, ?)",
    "put_if_absent": "INSERT INTO {table} (partition, key, row) VALUES (?, ?, ?) IF NOT EXISTS",
    "get": "SELECT row FROM {table} WHERE partition = ? AND key = ?",
    "delete": "DELETE FROM {table} WHERE partition = ? AND key = ?",
    # "After" is in scan order: smaller keys when descending.
    "scan": "SELECT key, row FROM {table} WHERE partition = ? LIMIT ?",
    "scan_after": "SELECT key, row FROM {table} WHERE partition = ? AND key > ? LIMIT ?",
    "scan_desc": "SELECT key, row FROM {table} WHERE partition = ? ORDER BY key DESC LIMIT ?",
    "scan_desc_after": "SELECT key, row FROM {table} WHERE partition = ? AND key < ?"
                       " ORDER BY key DESC LIMIT ?",
}


def _describe(error: BaseException) -> str:
    if isinstance(error, NoHostAvailable):
        if not error.errors:
            return "no node is up (the driver keeps trying to reconnect)"
        reasons = "; ".join(f"{host}: {reason}" for host, reason in error.errors.items())
        return f"no node answered ({reasons})"
    return f"{type(error).__name__}: {error}"
