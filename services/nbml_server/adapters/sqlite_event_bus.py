"""Embedded event bus: a durable message log in one SQLite file.

Tables:
- `messages(offset INTEGER PRIMARY KEY AUTOINCREMENT, topic, key, value BLOB, time)`:
  every message of every topic, in publish order. SQLite serialises writers, so offsets
  become visible in increasing order with no gaps filled in later: a reader that has
  seen offset N never later finds a new message below N.
- `group_offsets(grp, topic, committed_offset)`: the offset of the last message each
  group has committed on each topic (0 before the first commit). Commits only move it
  forward.
- `group_members(grp, topic, member, pid)`: the open subscriptions, for
  `group_members()`; a row whose process has died is dropped when counted.

A subscription starts reading after its group's committed offset, so a group that
subscribes for the first time sees the whole topic (messages published before it
subscribed included), and a new subscription after a close without commit gets the
uncommitted messages again. `poll` checks the file every 50 ms until a message or the
timeout comes (a publish in the same process wakes it at once).

Limitation: the embedded platform runs one consumer per group. Two live subscriptions
of the same group both read from the committed offset, so they get the same messages;
there is no partition assignment or rebalancing as with Kafka. So `group_members` is 1
while any subscription of the group is open (they do not split the messages), and a
publish's `lane` changes nothing (one log, in publish order). Messages are kept for
ever, except on topics with a retention (`ports.event_bus.TOPICS`): their messages
older than it are deleted (on subscribe, and on publish at most once a minute), so a
group new to such a topic reads a bounded history. Otherwise the log grows with the
number of jobs, which is fine on one machine.

Safe for several processes and threads on the same file (see `sqlite_connections`).
"""

import os
import threading
import time
import uuid

from nbml_server.adapters.sqlite_connections import SqliteConnections
from nbml_server.ports.event_bus import EventBus, Message, Subscription, topic_options

# How often a waiting poll looks for messages published by other processes.
POLL_INTERVAL_SECONDS = 0.05
# How often a publish deletes the expired messages of a topic with a retention.
PRUNE_INTERVAL_SECONDS = 60.0


def _create_tables(conn) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        'CREATE TABLE IF NOT EXISTS messages ("offset" INTEGER PRIMARY KEY AUTOINCREMENT,'
        " topic TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, time REAL NOT NULL)")
    conn.execute('CREATE INDEX IF NOT EXISTS messages_by_topic ON messages (topic, "offset")')
    conn.execute(
        "CREATE TABLE IF NOT EXISTS group_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,"
        " committed_offset INTEGER NOT NULL, PRIMARY KEY (grp, topic)) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS group_members (grp TEXT NOT NULL, topic TEXT NOT NULL,"
        " member TEXT NOT NULL, pid INTEGER NOT NULL, PRIMARY KEY (grp, topic, member))"
        " WITHOUT ROWID")
    conn.execute("COMMIT")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class SqliteEventBus(EventBus):
    def __init__(self, path: str | os.PathLike):
        self._db = SqliteConnections(os.fspath(path), init=_create_tables)
        # Wakes this process's waiting polls on publish; other processes' publishes are
        # found by the periodic check.
        self._published = threading.Condition()
        self._lock = threading.Lock()
        self._pruned: dict[str, float] = {}  # topic -> monotonic time of the last prune
        self._subscriptions: set[_SqliteSubscription] = set()

    def publish(self, topic: str, key: str, value: bytes, *, lane: int | None = None) -> None:
        if lane is not None and lane < 0:
            raise ValueError(f"lane must be >= 0, got {lane}")
        self._prune(topic, every=PRUNE_INTERVAL_SECONDS)
        with self._db.connection() as conn:
            conn.execute("INSERT INTO messages (topic, key, value, time) VALUES (?, ?, ?, ?)",
                         (topic, key, bytes(value), time.time()))
        with self._published:
            self._published.notify_all()

    def subscribe(self, topic: str, group: str) -> Subscription:
        self._prune(topic, every=0.0)
        subscription = _SqliteSubscription(self, topic, group)
        with self._db.connection() as conn:
            conn.execute("INSERT INTO group_members (grp, topic, member, pid) VALUES (?, ?, ?, ?)",
                         (group, topic, subscription.member, os.getpid()))
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def group_members(self, group: str, topic: str) -> int:
        with self._db.connection() as conn:
            rows = conn.execute("SELECT member, pid FROM group_members WHERE grp = ? AND topic = ?",
                                (group, topic)).fetchall()
            dead = [member for member, pid in rows if not _alive(pid)]
            if dead:
                conn.executemany("DELETE FROM group_members WHERE grp = ? AND topic = ? AND"
                                 " member = ?", [(group, topic, member) for member in dead])
        # Every subscription of a group gets every message: they never split them.
        return min(1, len(rows) - len(dead))

    def close(self) -> None:
        with self._lock:
            subscriptions, self._subscriptions = list(self._subscriptions), set()
        for subscription in subscriptions:
            subscription.close()
        with self._published:
            self._published.notify_all()
        self._db.close()

    # Used by subscriptions.

    def _committed(self, topic: str, group: str) -> int:
        with self._db.connection() as conn:
            found = conn.execute(
                "SELECT committed_offset FROM group_offsets WHERE grp = ? AND topic = ?",
                (group, topic)).fetchone()
        return 0 if found is None else found[0]

    def _read(self, topic: str, after: int, limit: int) -> list[Message]:
        with self._db.connection() as conn:
            rows = conn.execute(
                'SELECT "offset", key, value FROM messages WHERE topic = ? AND "offset" > ?'
                ' ORDER BY "offset" LIMIT ?', (topic, after, limit)).fetchall()
        return [Message(topic=topic, key=key, value=bytes(value), offset=offset)
                for offset, key, value in rows]

    def _commit(self, topic: str, group: str, offset: int) -> None:
        with self._db.connection() as conn:
            conn.execute(
                "INSERT INTO group_offsets (grp, topic, committed_offset) VALUES (?, ?, ?)"
                " ON CONFLICT (grp, topic) DO UPDATE"
                " SET committed_offset = max(committed_offset, excluded.committed_offset)",
                (group, topic, offset))

    def _wait(self, seconds: float) -> None:
        with self._published:
            self._published.wait(seconds)

    def _leave(self, subscription: "_SqliteSubscription") -> None:
        with self._lock:
            self._subscriptions.discard(subscription)
        with self._db.connection() as conn:
            conn.execute("DELETE FROM group_members WHERE grp = ? AND topic = ? AND member = ?",
                         (subscription._group, subscription._topic, subscription.member))

    def _prune(self, topic: str, every: float) -> None:
        """Deletes the topic's messages older than its retention, if it has one."""
        retention = topic_options(topic).retention_seconds
        if retention is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._pruned.get(topic, -float("inf")) < every:
                return
            self._pruned[topic] = now
        with self._db.connection() as conn:
            # Offsets grow with time: everything up to the newest expired message goes.
            conn.execute(
                'DELETE FROM messages WHERE topic = ? AND "offset" <= (SELECT max("offset")'
                " FROM messages WHERE topic = ? AND time < ?)",
                (topic, topic, time.time() - retention))


class _SqliteSubscription(Subscription):
    """One consumer of `topic` for `group`; used by one thread at a time."""

    def __init__(self, bus: SqliteEventBus, topic: str, group: str):
        self._bus = bus
        self._topic = topic
        self._group = group
        self.member = uuid.uuid4().hex  # its row in group_members
        # Offset of the last message handed out; starts at the group's committed one.
        self._position = bus._committed(topic, group)
        self._closed = False

    def poll(self, timeout_seconds: float, max_messages: int = 1) -> list[Message]:
        if self._closed:
            raise RuntimeError("subscription is closed")
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        deadline = time.monotonic() + max(0.0, timeout_seconds)
        while True:
            messages = self._bus._read(self._topic, self._position, max_messages)
            if messages:
                self._position = messages[-1].offset
                return messages
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return []
            self._bus._wait(min(POLL_INTERVAL_SECONDS, remaining))

    def commit(self, message: Message) -> None:
        if message.topic != self._topic:
            raise ValueError(f"message is from topic {message.topic!r}, "
                             f"this subscription reads {self._topic!r}")
        self._bus._commit(self._topic, self._group, message.offset)

    def close(self) -> None:
        # Uncommitted messages stay uncommitted: the next subscription gets them again.
        if self._closed:
            return
        self._closed = True
        self._bus._leave(self)
