"""Embedded event bus: a durable message log in one SQLite file, with consumer groups
whose members split a topic's partitions, as Kafka's do.

Tables:
- `messages(offset INTEGER PRIMARY KEY AUTOINCREMENT, topic, key, value BLOB, time,
  part)`: every message of every topic, in publish order, with its partition. SQLite
  serialises writers, so offsets become visible in increasing order with no gaps
  filled in later: a reader that has seen offset N never later finds a new message
  below N.
- `partition_offsets(grp, topic, part, committed_offset)`: the offset of the last
  message each group has committed on each partition of each topic (0 before the
  first commit). Commits only move it forward. (`group_offsets(grp, topic,
  committed_offset)`, one offset per topic, is what versions before partitions kept;
  it still counts as committed for every partition.)
- `group_members(grp, topic, member, pid)`: the open subscriptions; a row whose
  process has died is dropped when seen.
- `partition_owners(grp, topic, part, member)`: which member reads each partition
  now, so that no two live members hold one partition's messages at once.

Partitions: a topic has `partitions` of them (6 by default, or the topic's
`min_partitions` from `ports.event_bus.TOPICS` when larger). A message with a `lane`
goes to partition lane mod that count, others to a hash of their key, so messages
with one key (or one lane) keep their order. The live members of a group, sorted by
member id, split the partitions round-robin (member i of n reads partitions i, i + n,
...), so lanes 0..n-1 go to n different members. Membership is looked at on every
poll. A partition moves to the member it is now assigned to once its owner lets go
of it: when the owner polls again (it is done with the messages it had, as Kafka's
rebalance waits for every member's next poll), closes, or its process dies; the new
owner reads it from the group's committed offset (the uncommitted messages are
delivered again: at least once). So a member that joins never gets a message another
live member is still handling (a job would run twice). A member that lost a
partition while handling a message may still commit it.

A subscription starts reading each of its partitions after the group's committed
offset there, so a group that subscribes for the first time sees the whole topic
(messages published before it subscribed included), and a new subscription after a
close without commit gets the uncommitted messages again. `poll` checks the file
every 50 ms until a message or the timeout comes (a publish in the same process wakes
it at once). `group_members` is the number of live members that have a partition.

Messages are kept for ever, except on topics with a retention (`ports.event_bus.TOPICS`):
their messages older than it are deleted (on subscribe, and on publish at most once a
minute), so a group new to such a topic reads a bounded history. Otherwise the log
grows with the number of jobs, which is fine on one machine.

Safe for several processes and threads on the same file (see `sqlite_connections`).
"""

import os
import threading
import time
import uuid
import zlib

from nbml_server.adapters.sqlite_connections import SqliteConnections
from nbml_server.ports.event_bus import EventBus, Message, Subscription, topic_options

# How often a waiting poll looks for messages published by other processes.
POLL_INTERVAL_SECONDS = 0.05
# How often a publish deletes the expired messages of a topic with a retention.
PRUNE_INTERVAL_SECONDS = 60.0
DEFAULT_PARTITIONS = 6


def _create_tables(conn) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        'CREATE TABLE IF NOT EXISTS messages ("offset" INTEGER PRIMARY KEY AUTOINCREMENT,'
        " topic TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, time REAL NOT NULL,"
        " part INTEGER NOT NULL DEFAULT 0)")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "part" not in columns:  # a bus file from before partitions
        conn.execute("ALTER TABLE messages ADD COLUMN part INTEGER NOT NULL DEFAULT 0")
    conn.execute('CREATE INDEX IF NOT EXISTS messages_by_topic ON messages (topic, "offset")')
    conn.execute('CREATE INDEX IF NOT EXISTS messages_by_partition'
                 ' ON messages (topic, part, "offset")')
    conn.execute(
        "CREATE TABLE IF NOT EXISTS group_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,"
        " committed_offset INTEGER NOT NULL, PRIMARY KEY (grp, topic)) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS partition_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,"
        " part INTEGER NOT NULL, committed_offset INTEGER NOT NULL,"
        " PRIMARY KEY (grp, topic, part)) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS group_members (grp TEXT NOT NULL, topic TEXT NOT NULL,"
        " member TEXT NOT NULL, pid INTEGER NOT NULL, PRIMARY KEY (grp, topic, member))"
        " WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS partition_owners (grp TEXT NOT NULL, topic TEXT NOT NULL,"
        " part INTEGER NOT NULL, member TEXT NOT NULL, PRIMARY KEY (grp, topic, part))"
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
    def __init__(self, path: str | os.PathLike, partitions: int = DEFAULT_PARTITIONS):
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self._db = SqliteConnections(os.fspath(path), init=_create_tables)
        self.partitions = partitions
        # Wakes this process's waiting polls on publish; other processes' publishes are
        # found by the periodic check.
        self._published = threading.Condition()
        self._lock = threading.Lock()
        self._pruned: dict[str, float] = {}  # topic -> monotonic time of the last prune
        self._subscriptions: set[_SqliteSubscription] = set()

    def topic_partitions(self, topic: str) -> int:
        return max(self.partitions, topic_options(topic).min_partitions)

    def publish(self, topic: str, key: str, value: bytes, *, lane: int | None = None) -> None:
        if lane is not None and lane < 0:
            raise ValueError(f"lane must be >= 0, got {lane}")
        self._prune(topic, every=PRUNE_INTERVAL_SECONDS)
        spread = lane if lane is not None else zlib.crc32(key.encode("utf-8"))
        with self._db.connection() as conn:
            conn.execute("INSERT INTO messages (topic, key, value, time, part)"
                         " VALUES (?, ?, ?, ?, ?)",
                         (topic, key, bytes(value), time.time(),
                          spread % self.topic_partitions(topic)))
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
        return min(len(self._live_members(group, topic)), self.topic_partitions(topic))

    def close(self) -> None:
        with self._lock:
            subscriptions, self._subscriptions = list(self._subscriptions), set()
        for subscription in subscriptions:
            subscription.close()
        with self._published:
            self._published.notify_all()
        self._db.close()

    # Used by subscriptions.

    def _live_members(self, group: str, topic: str) -> list[str]:
        """The group's members whose process lives, sorted; forgets the others."""
        with self._db.connection() as conn:
            rows = conn.execute("SELECT member, pid FROM group_members WHERE grp = ? AND topic = ?",
                                (group, topic)).fetchall()
            dead = [member for member, pid in rows if not _alive(pid)]
            if dead:
                conn.executemany("DELETE FROM group_members WHERE grp = ? AND topic = ? AND"
                                 " member = ?", [(group, topic, member) for member in dead])
        return sorted(member for member, _ in rows if member not in dead)

    def _committed(self, topic: str, group: str, part: int) -> int:
        with self._db.connection() as conn:
            found = conn.execute(
                "SELECT max(committed_offset) FROM (SELECT committed_offset FROM"
                " partition_offsets WHERE grp = ? AND topic = ? AND part = ? UNION ALL"
                " SELECT committed_offset FROM group_offsets WHERE grp = ? AND topic = ?)",
                (group, topic, part, group, topic)).fetchone()
        return found[0] or 0

    def _read(self, topic: str, positions: dict[int, int], limit: int) -> list[Message]:
        """Up to `limit` messages of the partitions in `positions`, each after its
        position, in offset order."""
        found = []
        with self._db.connection() as conn:
            for part, after in positions.items():
                found += conn.execute(
                    'SELECT "offset", key, value, part FROM messages WHERE topic = ? AND'
                    ' part = ? AND "offset" > ? ORDER BY "offset" LIMIT ?',
                    (topic, part, after, limit)).fetchall()
        found.sort()
        return [Message(topic=topic, key=key, value=bytes(value), offset=offset, partition=part)
                for offset, key, value, part in found[:limit]]

    def _claim(self, group: str, topic: str, member: str, assigned: set[int],
               live: list[str]) -> set[int]:
        """Lets go of the member's partitions not in `assigned` and takes those of
        `assigned` that nobody live holds; returns the assigned partitions it holds."""
        def owners(conn) -> dict[int, str]:
            return dict(conn.execute(
                "SELECT part, member FROM partition_owners WHERE grp = ? AND topic = ?",
                (group, topic)).fetchall())

        def changes(held: dict[int, str]) -> tuple[list[int], list[int]]:
            release = [p for p, m in held.items() if m == member and p not in assigned]
            take = [p for p in assigned if held.get(p) != member and held.get(p) not in live]
            return release, take

        with self._db.connection() as conn:
            held = owners(conn)
            if any(changes(held)):
                # Decided again inside the write transaction: another member may have
                # taken a partition meanwhile.
                conn.execute("BEGIN IMMEDIATE")
                held = owners(conn)
                release, take = changes(held)
                conn.executemany("DELETE FROM partition_owners WHERE grp = ? AND topic = ?"
                                 " AND part = ?", [(group, topic, p) for p in release])
                conn.executemany("INSERT OR REPLACE INTO partition_owners (grp, topic, part,"
                                 " member) VALUES (?, ?, ?, ?)",
                                 [(group, topic, p, member) for p in take])
                conn.execute("COMMIT")
                held = owners(conn)
        return {p for p in assigned if held.get(p) == member}

    def _commit(self, topic: str, group: str, part: int, offset: int) -> None:
        with self._db.connection() as conn:
            conn.execute(
                "INSERT INTO partition_offsets (grp, topic, part, committed_offset)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (grp, topic, part) DO UPDATE"
                " SET committed_offset = max(committed_offset, excluded.committed_offset)",
                (group, topic, part, offset))

    def _wait(self, seconds: float) -> None:
        with self._published:
            self._published.wait(seconds)

    def _leave(self, subscription: "_SqliteSubscription") -> None:
        with self._lock:
            self._subscriptions.discard(subscription)
        with self._db.connection() as conn:
            conn.execute("DELETE FROM group_members WHERE grp = ? AND topic = ? AND member = ?",
                         (subscription._group, subscription._topic, subscription.member))
            conn.execute("DELETE FROM partition_owners WHERE grp = ? AND topic = ? AND"
                         " member = ?",
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
    """One member of `group` consuming `topic`; used by one thread at a time."""

    def __init__(self, bus: SqliteEventBus, topic: str, group: str):
        self._bus = bus
        self._topic = topic
        self._group = group
        self.member = uuid.uuid4().hex  # its row in group_members
        # Offset of the last message handed out, per partition this member reads;
        # a partition it gains starts at the group's committed offset there.
        self._positions: dict[int, int] = {}
        self._closed = False

    def _own_partitions(self) -> dict[int, int]:
        members = self._bus._live_members(self._group, self._topic)
        if self.member not in members:
            return {}  # not registered (yet), or closed
        index, count = members.index(self.member), len(members)
        assigned = set(range(index, self._bus.topic_partitions(self._topic), count))
        owned = self._bus._claim(self._group, self._topic, self.member, assigned, members)
        self._positions = {p: self._positions[p] if p in self._positions
                           else self._bus._committed(self._topic, self._group, p)
                           for p in owned}
        return self._positions

    def poll(self, timeout_seconds: float, max_messages: int = 1) -> list[Message]:
        if self._closed:
            raise RuntimeError("subscription is closed")
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        deadline = time.monotonic() + max(0.0, timeout_seconds)
        while True:
            positions = self._own_partitions()
            messages = self._bus._read(self._topic, positions, max_messages) if positions else []
            if messages:
                for message in messages:
                    positions[message.partition] = message.offset
                return messages
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return []
            self._bus._wait(min(POLL_INTERVAL_SECONDS, remaining))

    def commit(self, message: Message) -> None:
        if message.topic != self._topic:
            raise ValueError(f"message is from topic {message.topic!r}, "
                             f"this subscription reads {self._topic!r}")
        self._bus._commit(self._topic, self._group, message.partition, message.offset)

    def close(self) -> None:
        # Uncommitted messages stay uncommitted: the next subscription gets them again.
        if self._closed:
            return
        self._closed = True
        self._bus._leave(self)
