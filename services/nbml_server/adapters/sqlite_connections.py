"""A small pool of SQLite connections shared by the embedded adapters.

The embedded platform runs several processes (five services and a worker) on the same
database files, and each process serves gRPC calls from a thread pool. So:

- WAL mode lets readers run while one writer writes, across processes;
- `busy_timeout` makes a writer wait for the file's write lock instead of failing
  with "database is locked" straight away;
- connections are in autocommit mode (`isolation_level=None`): every statement is its
  own short transaction unless the caller opens one explicitly, so nobody holds the
  write lock longer than one statement. An explicit write transaction should start
  with BEGIN IMMEDIATE: a deferred one that reads then writes can fail with
  SQLITE_BUSY at once (busy_timeout does not apply to that lock upgrade);
- a connection is used by one thread at a time: `connection()` lends an idle one (or
  opens a new one) and takes it back afterwards. Unlike one connection per thread,
  connections do not leak when short-lived threads end.
"""

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

BUSY_TIMEOUT_MS = 30_000


def _use_wal(conn: sqlite3.Connection, path: str) -> None:
    """Switches the file to WAL mode (a persistent setting) unless it is already.

    The switch fails at once with "database is locked" (busy_timeout does not apply)
    while another connection holds the write lock, as happens when several processes
    open a new file together; so it is retried for up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower()
            if mode == "wal":
                return
            # Not a lock problem (an in-memory database, say): retrying cannot help.
            raise sqlite3.OperationalError(f"{path} cannot use WAL mode (it stays {mode})")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error):
                raise
            problem = str(error)
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"could not switch {path} to WAL mode: {problem}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class SqliteConnections:
    """Lends connections to one SQLite file; `init` runs once, on the first connection."""

    def __init__(self, path: str, init: Callable[[sqlite3.Connection], None] | None = None):
        self.path = str(path)
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        # Schema set-up runs now, so a bad path fails at open rather than on first use.
        try:
            with self.connection() as conn:
                if init is not None:
                    init(conn)
        except BaseException:
            self.close()
            raise

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False: a pooled connection moves between threads (never
        # used by two at once), and close() may run on yet another thread.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _use_wal(conn, self.path)
            # In WAL mode NORMAL survives a process crash (what matters here); only a
            # power loss can drop the last transactions.
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.path} is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                # Only reached when the caller's code raised mid-transaction.
                conn.rollback()
            with self._lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    def close(self) -> None:
        """Closes idle connections now and lent ones when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
