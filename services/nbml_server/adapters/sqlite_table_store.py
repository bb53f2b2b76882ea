"""Embedded table store: one SQLite file, one SQLite table per name in `TABLES`.

Each table has the shape of its Cassandra counterpart,
`(partition TEXT, key TEXT, row TEXT, PRIMARY KEY (partition, key)) WITHOUT ROWID`,
with the row stored as JSON. WITHOUT ROWID keeps rows clustered by (partition, key), so
a scan reads one contiguous range. SQLite compares TEXT bytewise (BINARY collation) and
UTF-8 byte order is code point order, so scans follow plain Python string order.

Safe for several processes and threads on the same file (see `sqlite_connections`).
"""

import os
from collections.abc import Sequence

from nbml_server.adapters.sqlite_connections import SqliteConnections
from nbml_server.ports.table_store import TABLES, TableStore, decode_row, encode_row


class SqliteTableStore(TableStore):
    def __init__(self, path: str | os.PathLike):
        self._db = SqliteConnections(os.fspath(path), init=self._create_tables)

    @staticmethod
    def _create_tables(conn) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{table}" ('
                " partition TEXT NOT NULL, key TEXT NOT NULL, row TEXT NOT NULL,"
                " PRIMARY KEY (partition, key)) WITHOUT ROWID")
        conn.execute("COMMIT")

    @staticmethod
    def _table(table: str) -> str:
        # Table names are interpolated into SQL, so only the declared ones get through.
        if table not in TABLES:
            raise KeyError(f"unknown table {table!r}")
        return f'"{table}"'

    def put(self, table: str, partition: str, key: str, row: dict) -> None:
        name, text = self._table(table), encode_row(row)
        with self._db.connection() as conn:
            conn.execute(
                f"INSERT INTO {name} (partition, key, row) VALUES (?, ?, ?)"
                " ON CONFLICT (partition, key) DO UPDATE SET row = excluded.row",
                (partition, key, text))

    def put_many(self, table: str, rows: Sequence[tuple[str, str, dict]]) -> None:
        name = self._table(table)
        values = [(partition, key, encode_row(row)) for partition, key, row in rows]
        # One transaction: one write-ahead-log commit for all of them.
        with self._db.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                f"INSERT INTO {name} (partition, key, row) VALUES (?, ?, ?)"
                " ON CONFLICT (partition, key) DO UPDATE SET row = excluded.row", values)
            conn.execute("COMMIT")

    def put_if_absent(self, table: str, partition: str, key: str, row: dict) -> bool:
        name, text = self._table(table), encode_row(row)
        # One autocommit statement is atomic and writers are serialised by SQLite's
        # write lock, so of racing callers (threads or processes) exactly one inserts.
        with self._db.connection() as conn:
            cursor = conn.execute(
                f"INSERT INTO {name} (partition, key, row) VALUES (?, ?, ?)"
                " ON CONFLICT (partition, key) DO NOTHING",
                (partition, key, text))
            return cursor.rowcount == 1

    def get(self, table: str, partition: str, key: str) -> dict | None:
        name = self._table(table)
        with self._db.connection() as conn:
            found = conn.execute(
                f"SELECT row FROM {name} WHERE partition = ? AND key = ?",
                (partition, key)).fetchone()
        return None if found is None else decode_row(found[0])

    def delete(self, table: str, partition: str, key: str) -> None:
        name = self._table(table)
        with self._db.connection() as conn:
            conn.execute(f"DELETE FROM {name} WHERE partition = ? AND key = ?",
                         (partition, key))

    def scan(self, table: str, partition: str, *, limit: int, after: str | None = None,
             descending: bool = False) -> list[tuple[str, dict]]:
        name = self._table(table)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        sql = f"SELECT key, row FROM {name} WHERE partition = ?"
        params: list = [partition]
        if after is not None:
            # "After" is in scan order: smaller keys when descending.
            sql += " AND key < ?" if descending else " AND key > ?"
            params.append(after)
        sql += " ORDER BY key DESC" if descending else " ORDER BY key"
        sql += " LIMIT ?"
        params.append(limit)
        with self._db.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [(key, decode_row(text)) for key, text in rows]

    def close(self) -> None:
        self._db.close()
