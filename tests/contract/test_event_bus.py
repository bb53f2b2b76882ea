"""Contract tests for the EventBus port, run against every adapter."""

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from nbml_server.adapters.sqlite_event_bus import SqliteEventBus

# kafka-python's protocol loader uses importlib.resources' legacy API.
pytestmark = pytest.mark.filterwarnings(
    "ignore:(read|open)_text is deprecated:DeprecationWarning")

# Positive waits are generous (a distributed bus needs time to assign partitions);
# polls return as soon as messages come, so they cost nothing when things work.
WAIT = 10.0


def _sqlite(tmp_path):
    return SqliteEventBus(tmp_path / "bus.db")


def _kafka(tmp_path, kafka_broker):
    from nbml_server.adapters.kafka_event_bus import from_uri

    # Several partitions, so the contract holds for a partitioned topic.
    return from_uri(f"{kafka_broker.uri}?partitions=3&session_timeout_ms=6000")


# The broker this factory needs: a session fixture of tests/conftest.py.
_kafka.server = "kafka_broker"


def _kafka_missing() -> str:
    """Why the Kafka runs cannot happen here ("" when they can)."""
    if os.environ.get("NBML_TEST_KAFKA", "1") == "0":
        return "NBML_TEST_KAFKA=0"
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if importlib.util.find_spec("kafka") is None:
        missing.append("kafka-python (the 'cluster' extra)")
    return ", ".join(missing) and f"needs {', '.join(missing)}"


# One factory per adapter: `factory(tmp_path)` opens a bus; calling it again with the
# same tmp_path opens another client of the same bus. A factory naming a `server`
# fixture gets it as a second argument. The Kafka runs share one broker per session
# (started on first use; skipped when Java, Maven or kafka-python are missing, or with
# NBML_TEST_KAFKA=0). Tests use fresh topic and group names, so buses may be shared.
FACTORIES = [pytest.param(_sqlite, id="sqlite"),
             pytest.param(_kafka, id="kafka",
                          marks=pytest.mark.skipif(bool(_kafka_missing()),
                                                   reason=_kafka_missing() or "-"))]


@pytest.fixture(params=FACTORIES)
def factory(request, tmp_path):
    opened = []
    server = getattr(request.param, "server", None)
    servers = (request.getfixturevalue(server),) if server else ()

    def open_bus():
        bus = request.param(tmp_path, *servers)
        opened.append(bus)
        return bus

    yield open_bus
    for bus in opened:
        bus.close()


@pytest.fixture
def bus(factory):
    return factory()


@pytest.fixture
def topic():
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
def group():
    return f"group-{uuid.uuid4().hex}"


def poll_n(subscription, n: int, timeout: float = WAIT) -> list:
    """Polls until `n` messages came (or the timeout passed)."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += subscription.poll(deadline - time.monotonic(), max_messages=n - len(got))
    return got


def _values(messages):
    return [m.value for m in messages]


def test_message_published_before_subscribe_arrives(bus, topic, group):
    bus.publish(topic, "k1", b"one")
    bus.publish(topic, "k2", b"two")
    subscription = bus.subscribe(topic, group)
    messages = poll_n(subscription, 2)
    # Sorted: only messages with the same key keep their order (k1 and k2 may be in
    # different partitions).
    assert sorted((m.topic, m.key, m.value) for m in messages) == [
        (topic, "k1", b"one"), (topic, "k2", b"two")]
    subscription.close()


def test_message_published_after_subscribe_arrives(bus, topic, group):
    subscription = bus.subscribe(topic, group)
    assert subscription.poll(0) == []
    bus.publish(topic, "k", b"late")
    assert _values(poll_n(subscription, 1)) == [b"late"]
    subscription.close()


def test_a_waiting_poll_gets_a_message_published_meanwhile(bus, topic, group):
    subscription = bus.subscribe(topic, group)
    publisher = threading.Timer(0.1, bus.publish, (topic, "k", b"while waiting"))
    publisher.start()
    started = time.monotonic()
    messages = subscription.poll(WAIT)
    publisher.join()
    assert _values(messages) == [b"while waiting"]
    assert time.monotonic() - started < WAIT / 2  # returned on arrival, not at timeout
    subscription.close()


def test_message_published_by_another_client_arrives(factory, topic, group):
    consumer, producer = factory(), factory()
    subscription = consumer.subscribe(topic, group)
    producer.publish(topic, "k", b"from elsewhere")
    assert _values(poll_n(subscription, 1)) == [b"from elsewhere"]
    subscription.close()


def test_poll_times_out_promptly_with_nothing(bus, topic, group):
    subscription = bus.subscribe(topic, group)
    started = time.monotonic()
    assert subscription.poll(0.3) == []
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    assert subscription.poll(0) == []
    assert time.monotonic() - started < 0.5
    subscription.close()


def test_poll_returns_at_most_max_messages(bus, topic, group):
    for n in range(5):
        bus.publish(topic, "k", str(n).encode())
    subscription = bus.subscribe(topic, group)
    first = subscription.poll(WAIT, max_messages=2)
    assert 1 <= len(first) <= 2
    rest = poll_n(subscription, 5 - len(first))
    assert _values(first + rest) == [b"0", b"1", b"2", b"3", b"4"]
    subscription.close()


def test_messages_with_one_key_keep_their_order(bus, topic, group):
    for n in range(20):
        bus.publish(topic, f"job{n % 3}", f"{n % 3}:{n}".encode())
    subscription = bus.subscribe(topic, group)
    messages = poll_n(subscription, 20)
    for key in ("job0", "job1", "job2"):
        numbers = [int(m.value.split(b":")[1]) for m in messages if m.key == key]
        assert numbers == sorted(numbers) and len(numbers) > 0
    subscription.close()


def test_topics_are_separate(bus, topic, group):
    other = f"{topic}-other"
    bus.publish(other, "k", b"elsewhere")
    bus.publish(topic, "k", b"here")
    subscription = bus.subscribe(topic, group)
    assert _values(poll_n(subscription, 1)) == [b"here"]
    assert subscription.poll(0.2) == []
    subscription.close()


def test_uncommitted_messages_are_delivered_again(bus, topic, group):
    for n in range(3):
        bus.publish(topic, "k", str(n).encode())
    first = bus.subscribe(topic, group)
    messages = poll_n(first, 3)
    first.commit(messages[0])  # the consumer finished one message, then died
    first.close()
    second = bus.subscribe(topic, group)
    assert _values(poll_n(second, 2)) == [b"1", b"2"]
    second.close()


def test_closing_without_commit_redelivers_everything(bus, topic, group):
    bus.publish(topic, "k", b"job")
    first = bus.subscribe(topic, group)
    assert _values(poll_n(first, 1)) == [b"job"]
    first.close()
    second = bus.subscribe(topic, group)
    assert _values(poll_n(second, 1)) == [b"job"]
    second.close()


def test_a_member_that_joins_gets_no_message_a_live_member_is_handling(bus, topic, group):
    # One message on every partition: whichever the newcomer is assigned, it holds one.
    for lane in range(6):
        bus.publish(topic, "k", str(lane).encode(), lane=lane)
    first = bus.subscribe(topic, group)
    assert sorted(_values(poll_n(first, 6))) == [str(lane).encode() for lane in range(6)]
    second = bus.subscribe(topic, group)
    # The first is still at work on them (a job would run twice).
    assert second.poll(1.0) == []
    first.close()  # without committing: they are the newcomer's now
    assert sorted(_values(poll_n(second, 6))) == [str(lane).encode() for lane in range(6)]
    second.close()


def test_committed_messages_are_not_delivered_again(bus, topic, group):
    for n in range(3):
        bus.publish(topic, "k", str(n).encode())
    first = bus.subscribe(topic, group)
    messages = poll_n(first, 3)
    first.commit(messages[-1])  # commits everything up to it
    first.close()
    second = bus.subscribe(topic, group)
    assert second.poll(0.3) == []
    bus.publish(topic, "k", b"3")
    assert _values(poll_n(second, 1)) == [b"3"]
    second.close()


def test_commits_only_move_forward(bus, topic, group):
    for n in range(3):
        bus.publish(topic, "k", str(n).encode())
    first = bus.subscribe(topic, group)
    messages = poll_n(first, 3)
    first.commit(messages[1])
    first.commit(messages[0])  # late commit of an earlier message
    first.close()
    second = bus.subscribe(topic, group)
    assert _values(poll_n(second, 1)) == [b"2"]
    second.close()


def test_two_groups_each_see_every_message(bus, topic):
    for n in range(3):
        bus.publish(topic, "k", str(n).encode())
    a = bus.subscribe(topic, f"a-{topic}")
    b = bus.subscribe(topic, f"b-{topic}")
    got_a = poll_n(a, 3)
    a.commit(got_a[-1])  # one group's commit does not affect the other
    assert _values(got_a) == [b"0", b"1", b"2"]
    assert _values(poll_n(b, 3)) == [b"0", b"1", b"2"]
    a.close()
    b.close()


def test_messages_survive_reopening_the_bus(factory, topic, group):
    first = factory()
    first.publish(topic, "k", b"durable")
    first.close()
    subscription = factory().subscribe(topic, group)
    assert _values(poll_n(subscription, 1)) == [b"durable"]
    subscription.close()


def _eventually(condition, timeout: float = WAIT) -> bool:
    """True once `condition()` is (a group's membership settles asynchronously)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_messages_of_one_lane_keep_their_order(bus, topic, group):
    for n in range(12):
        bus.publish(topic, f"key-{n}", f"{n % 3}:{n}".encode(), lane=n % 3)
    subscription = bus.subscribe(topic, group)
    messages = poll_n(subscription, 12)
    assert sorted(int(m.value.split(b":")[1]) for m in messages) == list(range(12))
    for lane in (b"0", b"1", b"2"):
        numbers = [int(m.value.split(b":")[1]) for m in messages
                   if m.value.split(b":")[0] == lane]
        assert numbers == sorted(numbers) and len(numbers) == 4
    subscription.close()
    with pytest.raises(ValueError):
        bus.publish(topic, "k", b"x", lane=-1)


def test_group_members_counts_the_open_subscription(bus, topic, group):
    bus.publish(topic, "k", b"x")
    assert bus.group_members(group, topic) == 0
    subscription = bus.subscribe(topic, group)
    assert _values(poll_n(subscription, 1)) == [b"x"]  # a member with its share
    assert _eventually(lambda: bus.group_members(group, topic) == 1)
    assert bus.group_members(f"{group}-other", topic) == 0
    subscription.close()
    assert _eventually(lambda: bus.group_members(group, topic) == 0)


def test_group_members_is_seen_by_another_client(factory, topic, group):
    consumer, observer = factory(), factory()
    consumer.publish(topic, "k", b"x")
    subscription = consumer.subscribe(topic, group)
    poll_n(subscription, 1)
    assert _eventually(lambda: observer.group_members(group, topic) == 1)
    subscription.close()
    assert _eventually(lambda: observer.group_members(group, topic) == 0)


# SQLite specifics: another process publishing to the same file.

_PUBLISHER = """
import sys
from nbml_server.adapters.sqlite_event_bus import SqliteEventBus
bus = SqliteEventBus(sys.argv[1])
for n in range(int(sys.argv[3])):
    bus.publish(sys.argv[2], "k", str(n).encode())
bus.close()
"""


def test_sqlite_messages_from_another_process_arrive(tmp_path, topic, group):
    path = tmp_path / "bus.db"
    bus = SqliteEventBus(path)
    try:
        subscription = bus.subscribe(topic, group)
        # Consume while the other process publishes.
        publisher = subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(path), topic, "50"])
        try:
            assert _values(poll_n(subscription, 50)) == [str(n).encode() for n in range(50)]
        finally:
            assert publisher.wait(timeout=30) == 0
    finally:
        bus.close()


_SUBSCRIBER = """
import sys
from nbml_server.adapters.sqlite_event_bus import SqliteEventBus
bus = SqliteEventBus(sys.argv[1])
bus.subscribe(sys.argv[2], sys.argv[3])
print("SUBSCRIBED", flush=True)
sys.stdin.read()  # until killed
"""


def test_sqlite_group_members_forgets_a_killed_process(tmp_path, topic, group):
    path = tmp_path / "bus.db"
    bus = SqliteEventBus(path)
    try:
        member = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER, str(path), topic, group],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert member.stdout.readline().strip() == "SUBSCRIBED"
            assert bus.group_members(group, topic) == 1
        finally:
            member.kill()
            member.wait()
            member.stdin.close()
            member.stdout.close()
        assert bus.group_members(group, topic) == 0  # died without closing
    finally:
        bus.close()


def test_sqlite_members_of_a_group_split_the_lanes_and_take_over_a_leaver_s(tmp_path, group):
    topic = "split"
    bus = SqliteEventBus(tmp_path / "bus.db", partitions=4)
    try:
        first, second = bus.subscribe(topic, group), bus.subscribe(topic, group)
        assert bus.group_members(group, topic) == 2
        for n in range(8):
            bus.publish(topic, "k", str(n).encode(), lane=n % 2)
        got = {name: _values(poll_n(sub, 4)) for name, sub in (("a", first), ("b", second))}
        assert first.poll(0.1) == [] and second.poll(0.1) == []
        # Each member has one lane, in order: lanes 0..n-1 go to n different members.
        assert sorted(got.values()) == [[b"0", b"2", b"4", b"6"], [b"1", b"3", b"5", b"7"]]
        # The second commits two of its four and leaves: the first gets the other two.
        mine = poll_n(bus.subscribe(topic, f"{group}-reader"), 8)
        second_lane = [m for m in mine if m.value in got["b"]]
        second.commit(second_lane[1])
        second.close()
        assert bus.group_members(group, topic) == 1
        assert _values(poll_n(first, 2)) == got["b"][2:]
        first.close()
    finally:
        bus.close()


def test_sqlite_reads_a_bus_file_from_before_partitions(tmp_path, group):
    import sqlite3

    path = tmp_path / "bus.db"
    old = sqlite3.connect(path)
    old.executescript(
        'CREATE TABLE messages ("offset" INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,'
        " key TEXT NOT NULL, value BLOB NOT NULL, time REAL NOT NULL);"
        "CREATE TABLE group_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,"
        " committed_offset INTEGER NOT NULL, PRIMARY KEY (grp, topic)) WITHOUT ROWID;"
        "INSERT INTO messages (topic, key, value, time) VALUES ('t', 'k', CAST('done' AS BLOB), 0), "
        "('t', 'k', CAST('pending' AS BLOB), 0);"
        f"INSERT INTO group_offsets VALUES ('{group}', 't', 1);")
    old.close()
    bus = SqliteEventBus(path)
    try:
        subscription = bus.subscribe("t", group)
        assert _values(poll_n(subscription, 1)) == [b"pending"]  # the old commit holds
        subscription.close()
    finally:
        bus.close()


def test_sqlite_drops_expired_messages_of_a_topic_with_a_retention(tmp_path, monkeypatch,
                                                                   group):
    from nbml_server.adapters import sqlite_event_bus
    from nbml_server.ports import event_bus

    topic = "short-lived"
    monkeypatch.setitem(event_bus.TOPICS, topic, event_bus.TopicOptions(retention_seconds=60))
    now = [1_000_000.0]
    monkeypatch.setattr(sqlite_event_bus.time, "time", lambda: now[0])
    bus = SqliteEventBus(tmp_path / "bus.db")
    try:
        bus.publish(topic, "k", b"old")
        bus.publish("long-lived", "k", b"kept")
        now[0] += 61
        bus.publish(topic, "k", b"new")  # at most one prune a minute: none yet
        subscription = bus.subscribe(topic, group)  # a new group prunes first
        assert _values(poll_n(subscription, 1)) == [b"new"]
        assert subscription.poll(0.1) == []
        subscription.close()
        other = bus.subscribe("long-lived", group)
        assert _values(poll_n(other, 1)) == [b"kept"]
        other.close()
    finally:
        bus.close()
