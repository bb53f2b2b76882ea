"""Table store port: rows in partitions, sorted by key (a wide-column store's shape).

A row is a JSON-serialisable dict addressed by (table, partition, key). Within a
partition, rows are kept sorted by key (plain string order), so `scan` pages through
them in key order either way. Tables are declared up front in `TABLES`; adapters create
them on open. This maps one-to-one onto a Cassandra table
`(partition text, key text, row text, PRIMARY KEY (partition, key))`.
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence

# Query-first tables; each name says what it is keyed by.
TABLES = (
    "users_by_name",      # partition: username, key: ""
    "users_by_id",        # partition: user id, key: ""
    "refresh_tokens",     # partition: token hash, key: ""
    "spent_refresh_tokens",  # partition: token hash, key: "" (claimed once, atomically)
    "api_keys_by_user",   # partition: user id, key: api key id
    "api_keys_by_hash",   # partition: secret hash, key: ""
    "activity_by_user",   # partition: user id, key: time-ordered activity id
    "datasets_by_user",   # partition: user id, key: dataset id
    "jobs_by_user",       # partition: user id, key: job id
    "jobs_by_id",         # partition: job id, key: "" (owner lookup for workers)
    "trials_by_job",      # partition: job id, key: zero-padded trial number
    "models_by_user",     # partition: user id, key: model id
    "models_by_job",      # partition: job id, key: model id
    "evaluations_by_model",  # partition: model id, key: ""
    "endpoints_by_user",  # partition: user id, key: endpoint id
)


def encode_row(row: dict) -> str:
    """A row as the JSON text adapters store."""
    if not isinstance(row, dict):
        raise TypeError(f"a row is a dict, not {type(row).__name__}")
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def decode_row(text: str) -> dict:
    return json.loads(text)


class TableStore(ABC):
    """Contract (checked by tests/contract on every adapter):

    - `put` inserts or replaces a row; `get` returns an equal dict or None.
    - `put_many` puts several rows of one table (any partitions) in one round trip; on
      an error some of them may be written (as if put one by one).
    - `put_if_absent` inserts only if no row has that address and says whether it did;
      of two concurrent callers exactly one wins (Cassandra: a lightweight transaction).
    - `scan` returns up to `limit` (key, row) pairs of one partition in key order
      (descending if asked), starting strictly after `after` when given.
    - `delete` removes a row; deleting a missing row is not an error.
    - An unknown table name raises KeyError.
    """

    @abstractmethod
    def put(self, table: str, partition: str, key: str, row: dict) -> None: ...

    def put_many(self, table: str, rows: Sequence[tuple[str, str, dict]]) -> None:
        """`rows`: (partition, key, row) triples."""
        for partition, key, row in rows:
            self.put(table, partition, key, row)

    @abstractmethod
    def put_if_absent(self, table: str, partition: str, key: str, row: dict) -> bool: ...

    @abstractmethod
    def get(self, table: str, partition: str, key: str) -> dict | None: ...

    @abstractmethod
    def delete(self, table: str, partition: str, key: str) -> None: ...

    @abstractmethod
    def scan(self, table: str, partition: str, *, limit: int, after: str | None = None,
             descending: bool = False) -> list[tuple[str, dict]]: ...

    def close(self) -> None:
        """Release connections. The store is not used afterwards."""
