"""The Kafka event bus on a real broker (the session's `kafka_broker`): what the contract
tests cannot show with one consumer — partitions, groups of several members, a member
that dies mid-job, and a broker that goes away and comes back."""

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from nbml_server.errors import Unavailable

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("NBML_TEST_KAFKA", "1") == "0"
        or shutil.which("java") is None or shutil.which("mvn") is None
        or importlib.util.find_spec("kafka") is None,
        reason="needs Java, Maven and kafka-python (or NBML_TEST_KAFKA=0)"),
    # kafka-python's protocol loader uses importlib.resources' legacy API.
    pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning"),
]

WAIT = 15.0
REBALANCE_WAIT = 60.0


@pytest.fixture
def open_bus(kafka_broker):
    from nbml_server.adapters.kafka_event_bus import from_uri

    opened = []

    def open_(query: str = "partitions=4&session_timeout_ms=2000"):
        bus = from_uri(f"{kafka_broker.uri}?{query}")
        opened.append(bus)
        return bus

    yield open_
    for bus in opened:
        bus.close()


@pytest.fixture
def topic():
    return f"it-{uuid.uuid4().hex}"


@pytest.fixture
def group():
    return f"group-{uuid.uuid4().hex}"


def poll_n(subscription, n: int, timeout: float = WAIT) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += subscription.poll(deadline - time.monotonic(), max_messages=n - len(got))
    return got


def test_from_uri_reads_servers_and_options():
    from nbml_server.adapters.kafka_event_bus import from_uri

    bus = from_uri("kafka://b1:9093,b2?partitions=12&replication_factor=3&timeout_ms=2000")
    assert bus.bootstrap_servers == ["b1:9093", "b2:9092"]
    assert (bus.partitions, bus.replication_factor, bus.timeout_ms) == (12, 3, 2000)
    bus.close()  # nothing was opened: no broker needed
    for bad in ("kafka://b1:x", "kafka://b1/path", "kafka://b1?partitons=3",
                "kafka://b1?partitions=many", "kafka://b1?partitions=0"):
        with pytest.raises(ValueError):
            from_uri(bad)


def test_registry_opens_the_kafka_adapter(kafka_broker):
    from nbml_server.adapters.kafka_event_bus import KafkaEventBus
    from nbml_server.adapters.registry import open_event_bus

    bus = open_event_bus(kafka_broker.uri)
    try:
        assert isinstance(bus, KafkaEventBus)
    finally:
        bus.close()


def test_topics_get_the_partitions_asked_for(open_bus, kafka_broker, topic):
    from kafka import KafkaAdminClient

    open_bus("partitions=5").publish(topic, "k", b"x")
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        [described] = admin.describe_topics([topic])
        assert len(described["partitions"]) == 5
    finally:
        admin.close()


def test_a_topic_s_options_set_its_partitions_and_retention(open_bus, kafka_broker, topic,
                                                           monkeypatch):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from nbml_server.ports import event_bus

    monkeypatch.setitem(event_bus.TOPICS, topic,
                        event_bus.TopicOptions(min_partitions=7, retention_seconds=60))
    open_bus("partitions=5").publish(topic, "k", b"x", lane=9)  # lane 9 -> partition 2
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        [described] = admin.describe_topics([topic])
        assert len(described["partitions"]) == 7  # more than the bus's 5
        configs = admin.describe_configs([ConfigResource(
            ConfigResourceType.TOPIC, topic, configs=["retention.ms", "segment.ms"])])
        values = {k: v["value"] for k, v in configs["topic"][topic].items()}
        assert values == {"retention.ms": "60000", "segment.ms": "15000"}
    finally:
        admin.close()
    subscription = open_bus().subscribe(topic, f"group-{topic}")
    [message] = poll_n(subscription, 1)
    assert message.partition == 2
    subscription.close()


def test_same_key_keeps_order_across_partitions(open_bus, topic, group):
    bus = open_bus()
    keys = [f"job-{n}" for n in range(8)]
    for n in range(80):
        bus.publish(topic, keys[n % len(keys)], f"{n}".encode())
    subscription = bus.subscribe(topic, group)
    messages = poll_n(subscription, 80)
    subscription.close()
    assert sorted(int(m.value) for m in messages) == list(range(80))
    assert len({m.partition for m in messages}) > 1  # the keys were spread
    for key in keys:
        of_key = [m for m in messages if m.key == key]
        assert [int(m.value) for m in of_key] == sorted(int(m.value) for m in of_key)
        assert len({m.partition for m in of_key}) == 1
        offsets = [m.offset for m in of_key]
        assert offsets == sorted(offsets)


class _Member(threading.Thread):
    """A group member that polls, 'handles' and commits every message, as a worker does."""

    def __init__(self, bus, topic, group):
        super().__init__(daemon=True)
        self.subscription = bus.subscribe(topic, group)
        self.handled: list = []
        self.assignment: set = set()
        self.stopping = threading.Event()

    def run(self):
        try:
            while not self.stopping.is_set():
                for message in self.subscription.poll(0.2, max_messages=5):
                    self.handled.append(message)
                    self.subscription.commit(message)
                self.assignment = {tp.partition
                                   for tp in self.subscription._consumer.assignment()}
        finally:
            self.subscription.close()


def _wait_until(condition, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_two_members_of_a_group_split_partitions_and_handle_each_message_once(
        open_bus, topic, group):
    bus = open_bus()
    bus.subscribe(topic, f"{group}-other").close()  # creates the topic (4 partitions)
    members = [_Member(open_bus(), topic, group) for _ in range(2)]
    for member in members:
        member.start()
    try:
        # A readiness wait: the classic group protocol settles two joiners in a few
        # rebalance rounds, which take much longer on a loaded 2-core CI machine.
        _wait_until(lambda: all(m.assignment for m in members)
                    and sum(len(m.assignment) for m in members) == 4,
                    timeout=REBALANCE_WAIT, what="both members to get partitions")
        a, b = members
        assert not a.assignment & b.assignment
        for n in range(60):
            bus.publish(topic, f"job-{n}", str(n).encode())
        _wait_until(lambda: sum(len(m.handled) for m in members) >= 60,
                    what="all messages to be handled")
        time.sleep(0.5)  # nothing more comes
    finally:
        for member in members:
            member.stopping.set()
        for member in members:
            member.join(10)
    values = sorted(int(m.value) for member in members for m in member.handled)
    assert values == list(range(60))  # each message once overall
    assert all(member.handled for member in members)  # both did work
    for member in members:
        assert {m.partition for m in member.handled} <= member.assignment


def test_lanes_go_to_different_members_and_group_members_counts_them(open_bus, topic, group):
    """No head-of-line blocking: a publisher with one message out per lane and as many
    lanes as members (as the trial fan-out does) reaches every member each round.
    (By key, two messages land on one member about half the time.)"""
    bus = open_bus("partitions=24&session_timeout_ms=2000")
    bus.subscribe(topic, f"{group}-other").close()  # creates the topic (24 partitions)
    members = [_Member(open_bus(), topic, group) for _ in range(2)]
    for member in members:
        member.start()
    try:
        _wait_until(lambda: all(m.assignment for m in members)
                    and sum(len(m.assignment) for m in members) == 24
                    and bus.group_members(group, topic) == 2,
                    timeout=REBALANCE_WAIT, what="both members to get partitions")
        for n in range(10):
            handled = sum(len(m.handled) for m in members)
            for lane in (0, 1):
                bus.publish(topic, "job", f"{n}:{lane}".encode(), lane=lane)
            _wait_until(lambda: sum(len(m.handled) for m in members) == handled + 2,
                        what=f"round {n} to be handled")
    finally:
        for member in members:
            member.stopping.set()
        for member in members:
            member.join(10)
    for member in members:
        lanes = {m.value.split(b":")[1] for m in member.handled}
        assert len(member.handled) == 10 and len(lanes) == 1  # one lane each, every round
    assert {m.partition for member in members for m in member.handled} == {0, 1}
    _wait_until(lambda: bus.group_members(group, topic) == 0, what="the members to leave")


def test_uncommitted_messages_go_to_another_member_when_the_first_closes(
        open_bus, topic, group):
    bus = open_bus()
    for n in range(3):
        bus.publish(topic, f"job-{n}", str(n).encode())
    first = open_bus().subscribe(topic, group)
    taken = poll_n(first, 3)  # the first member takes the jobs...
    assert len(taken) == 3
    first.commit(taken[0])  # ...finishes one, and stops mid-way through the others
    second = open_bus().subscribe(topic, group)
    assert second.poll(0.5) == []  # the group is still the first member's
    first.close()
    redelivered = poll_n(second, 2)
    assert sorted(m.value for m in redelivered) == sorted(m.value for m in taken[1:])
    assert second.poll(0.5) == []
    second.close()


def test_a_member_busy_longer_than_the_session_timeout_keeps_its_message(
        open_bus, topic, group):
    """A worker runs a job for minutes between two polls: heartbeats (a background
    thread) keep it in the group, so its commit counts and nobody else gets the job."""
    bus = open_bus("partitions=2&session_timeout_ms=1500")
    bus.publish(topic, "job", b"long job")
    worker = bus.subscribe(topic, group)
    [job] = poll_n(worker, 1)
    time.sleep(4.5)  # three session timeouts without polling
    worker.commit(job)
    worker.close()
    after = bus.subscribe(topic, group)
    bus.publish(topic, "job", b"next job")  # same key: behind the first in its partition
    assert [m.value for m in poll_n(after, 1)] == [b"next job"]  # the commit counted
    after.close()


_KILLED_WORKER = """
import sys, time
from nbml_server.adapters.kafka_event_bus import from_uri
bus = from_uri(sys.argv[1])
subscription = bus.subscribe(sys.argv[2], sys.argv[3])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    for message in subscription.poll(1.0):
        print("TOOK", message.value.decode(), flush=True)
        time.sleep(600)  # "runs the job" until killed
"""


def test_a_killed_member_s_message_is_delivered_again(kafka_broker, open_bus, topic, group):
    """The worker dies mid-job without closing (SIGKILL): its group membership expires
    after the session timeout and another member gets the uncommitted message."""
    uri = f"{kafka_broker.uri}?partitions=2&session_timeout_ms=2000"
    bus = open_bus("partitions=2&session_timeout_ms=2000")
    bus.publish(topic, "job", b"the job")
    worker = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, uri, topic, group],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = worker.stdout.readline()
        assert line.strip() == "TOOK the job"
    finally:
        worker.kill()
        worker.wait()
        worker.stdout.close()
    started = time.monotonic()
    survivor = bus.subscribe(topic, group)
    assert [m.value for m in poll_n(survivor, 1, timeout=20)] == [b"the job"]
    assert time.monotonic() - started < 15
    survivor.close()


def test_broker_down_fails_fast_and_the_bus_recovers_after_restart(
        kafka_broker, open_bus, topic, group):
    bus = open_bus("partitions=2&timeout_ms=2000&session_timeout_ms=2000")
    bus.publish(topic, "k", b"before")
    subscription = bus.subscribe(topic, group)
    [before] = poll_n(subscription, 1)
    assert before.value == b"before"
    subscription.commit(before)
    kafka_broker.stop()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="unavailable"):
            bus.publish(topic, "k", b"while down")  # known topic, warm producer
        assert time.monotonic() - started < 6
        started = time.monotonic()
        fresh = open_bus("timeout_ms=2000")
        with pytest.raises(Unavailable):
            fresh.publish(f"{topic}-new", "k", b"x")  # no connection yet
        with pytest.raises(Unavailable):
            fresh.subscribe(f"{topic}-new", group)
        assert time.monotonic() - started < 12
        started = time.monotonic()
        assert subscription.poll(1.0) == []  # a consumer just waits
        assert time.monotonic() - started < 4
    finally:
        kafka_broker.start()
    bus.publish(topic, "k", b"after")  # the same bus works again
    # The subscription reconnects by itself and carries on after its commit.
    assert [m.value for m in poll_n(subscription, 1, timeout=30)] == [b"after"]
    subscription.close()
    # Messages published before the restart survived it.
    again = bus.subscribe(topic, f"{group}-new")
    assert sorted(m.value for m in poll_n(again, 2)) == [b"after", b"before"]
    again.close()



def test_a_broker_whose_port_is_taken_says_so(tmp_path):
    import socket

    from deploy.local_cluster.kafka import KafkaBroker

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = KafkaBroker(tmp_path / "kafka", port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="taken by another process"):
            broker.start()
    assert not broker.running
