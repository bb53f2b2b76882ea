"""Distributed event bus: Apache Kafka, through kafka-python.

URI: `kafka://host:port[,host2:port2]` with optional query parameters:

- `partitions` (default 6): partitions of the topics this bus creates. Consumers of one
  group split a topic's partitions, so this caps how many workers share a topic.
- `replication_factor` (default: the broker's `default.replication.factor`).
- `timeout_ms` (default 5000): bound on connecting, on waiting for topic metadata and
  on a publish's acknowledgement, and on commits. When the broker cannot be reached in
  that time, operations raise `nbml_server.errors.Unavailable` rather than hang.
- `session_timeout_ms` (default 10000): how long a consumer that died without closing
  (killed worker) keeps its partitions before the group gives them to another member.
- `max_poll_interval_ms` (default 24 h): how long a consumer may go between polls,
  i.e. the longest job a worker may run between two polls without losing its
  partitions. Heartbeats come from a background thread, so a busy worker stays alive.

Mapping of the port:

- `publish` creates the topic on first use (`partitions` partitions, or the topic's
  `min_partitions` from `ports.event_bus.TOPICS` when larger, and its retention as
  `retention.ms`, with `segment.ms` a quarter of it since Kafka deletes whole
  segments; an existing topic is kept as it is), then sends one keyed message with
  acks=all and waits for its acknowledgement: a publish that returned is durable.
  Messages with the same key go to the same partition, so they keep their order; a
  message with a `lane` goes to partition lane mod the topic's partition count. One
  producer per bus, shared by threads (kafka-python's producer is thread-safe).
  After a failed publish the producer is replaced, so a message that timed out is
  not sent later behind the caller's back.
- `subscribe` opens a KafkaConsumer of its own per subscription, in consumer group
  `group`, without auto-commit, starting at the earliest message when the group has
  no committed offset. Partitions are assigned round-robin (member i of n, sorted by
  member id, gets partitions i, i + n, ...), so lanes 0..n-1 go to n different
  members. `poll` returns messages with their partition and offset;
  `commit(message)` synchronously commits offset + 1 of the message's partition, and
  never moves a partition's committed offset back (a late commit of an earlier
  message is skipped). Closing without committing leaves the messages to the next
  member of the group.
- `group_members` asks the group coordinator (the admin client's DescribeGroups):
  the members with partitions of the topic when the group is stable; while it
  rebalances, its members, at most the topic's partition count.

Limits (Kafka's classic consumer group protocol, as kafka-python speaks it):

- A rebalance (a member joins or leaves) completes only when every live member has
  polled again. A worker busy with a long job (between polls) holds up a new worker's
  first messages until it finishes; the dead are dropped after `session_timeout_ms`.
- If the group was rebalanced while a message was being handled, its commit is
  refused (the partition now belongs to another member); the message is then
  delivered again (at least once), and `commit` logs a warning instead of failing.
- While the broker is down, `poll` returns [] and the consumer reconnects by itself;
  `publish`, `subscribe` and `commit` raise `Unavailable`.
"""

import contextlib
import heapq
import logging
import threading
import time
from urllib.parse import parse_qsl, urlsplit

import kafka.errors as kafka_errors
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.structs import OffsetAndMetadata, TopicPartition

from nbml_server.errors import Unavailable
from nbml_server.ports.event_bus import EventBus, Message, Subscription, topic_options

log = logging.getLogger("nbml.kafka_event_bus")

DEFAULT_PORT = 9092
DEFAULT_PARTITIONS = 6
DEFAULT_TIMEOUT_MS = 5_000
DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_MAX_POLL_INTERVAL_MS = 24 * 3600 * 1000
# A backstop: a consumer sees a topic's new partitions (and its group rebalances onto
# them) within this long, not kafka-python's default five minutes.
METADATA_MAX_AGE_MS = 10_000

_QUERY_PARAMETERS = ("partitions", "replication_factor", "timeout_ms", "session_timeout_ms",
                     "max_poll_interval_ms")

# Errors that mean "the broker cannot be reached or did not answer in time". kafka-python
# 2.x has NoBrokersAvailable; 3.x reports a failed bootstrap as KafkaTimeoutError.
_NO_BROKERS = tuple(getattr(kafka_errors, name) for name in ("NoBrokersAvailable",)
                    if hasattr(kafka_errors, name))
# A commit refused because the group moved the partition to another member.
_REBALANCED = tuple(getattr(kafka_errors, name) for name in (
    "CommitFailedError", "RebalanceInProgressError", "IllegalGenerationError",
    "UnknownMemberIdError", "FencedInstanceIdError") if hasattr(kafka_errors, name))

# How describe_groups reports an unknown group (its errors come as text).
_GROUP_NOT_FOUND = f"[Error {kafka_errors.GroupIdNotFoundError.errno}]"


def from_uri(uri: str) -> "KafkaEventBus":
    parts = urlsplit(uri)
    if parts.scheme != "kafka":
        raise ValueError(f"{uri!r} is not a kafka:// URI")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"{uri!r} must be kafka://host:port[,host:port]?options, "
                         "without a path or fragment")
    servers = []
    for server in parts.netloc.split(","):
        host, _, port = server.strip().partition(":")
        if not host or (port and not port.isdigit()):
            raise ValueError(f"{uri!r}: bad broker address {server!r}, expected host:port")
        servers.append(f"{host}:{port or DEFAULT_PORT}")
    options = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name not in _QUERY_PARAMETERS:
            raise ValueError(f"{uri!r}: unknown option {name!r}; known: "
                             + ", ".join(_QUERY_PARAMETERS))
        try:
            options[name] = int(value)
        except ValueError:
            raise ValueError(f"{uri!r}: {name} must be an integer, got {value!r}") from None
    return KafkaEventBus(servers, **options)


@contextlib.contextmanager
def _unavailable(bootstrap: str, action: str):
    """Turns "cannot reach the broker" errors into `Unavailable`."""
    try:
        yield
    except kafka_errors.KafkaError as error:
        if not (error.retriable or isinstance(error, (kafka_errors.KafkaTimeoutError,
                                                      *_NO_BROKERS))):
            raise
        raise Unavailable(f"the Kafka event bus at {bootstrap} is unavailable: could not "
                          f"{action} ({error})") from error


class KafkaEventBus(EventBus):
    def __init__(self, bootstrap_servers: list[str] | str, *,
                 partitions: int = DEFAULT_PARTITIONS, replication_factor: int = -1,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
                 max_poll_interval_ms: int = DEFAULT_MAX_POLL_INTERVAL_MS):
        if isinstance(bootstrap_servers, str):
            bootstrap_servers = bootstrap_servers.split(",")
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        if replication_factor == 0 or replication_factor < -1:
            raise ValueError(f"replication_factor must be >= 1, got {replication_factor}")
        if timeout_ms < 1000:
            raise ValueError(f"timeout_ms must be >= 1000, got {timeout_ms}")
        self.bootstrap_servers = list(bootstrap_servers)
        self.bootstrap = ",".join(self.bootstrap_servers)
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.timeout_ms = timeout_ms
        self.session_timeout_ms = session_timeout_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        # Opened on first use, so a bus can be opened while the broker is down.
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._admin: KafkaAdminClient | None = None
        self._topics: set[str] = set()  # known to exist
        self._partition_counts: dict[str, int] = {}  # of topics published to by lane
        self._subscriptions: set["_KafkaSubscription"] = set()
        self._closed = False

    # The port.

    def publish(self, topic: str, key: str, value: bytes, *, lane: int | None = None) -> None:
        if lane is not None and lane < 0:
            raise ValueError(f"lane must be >= 0, got {lane}")
        self._ensure_topic(topic)
        producer = self._get_producer()
        try:
            with _unavailable(self.bootstrap, f"publish to {topic!r}"):
                partition = None if lane is None else lane % self._partition_count(producer,
                                                                                   topic)
                future = producer.send(topic, key=key.encode("utf-8"), value=bytes(value),
                                       partition=partition)
                # Waits for this message's acknowledgement (acks=all), as flush() would,
                # without waiting for other threads' messages.
                future.get(timeout=self.timeout_ms / 1000 + 1.0)
        except Unavailable:
            self._drop_producer(producer)
            raise

    def subscribe(self, topic: str, group: str) -> Subscription:
        self._check_open()
        self._ensure_topic(topic)
        subscription = _KafkaSubscription(self, topic, group)
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def group_members(self, group: str, topic: str) -> int:
        self._check_open()
        with self._lock:
            with _unavailable(self.bootstrap, f"describe consumer group {group!r}"):
                try:
                    described = self._get_admin().describe_groups([group])[group]
                except kafka_errors.CoordinatorNotAvailableError:
                    return 0  # no group has ever formed on this cluster yet
        error = described.get("error")
        if error and _GROUP_NOT_FOUND in error:
            return 0  # Kafka 4 says so of a group without members or offsets
        if error:
            raise Unavailable(f"could not describe consumer group {group!r} on {self.bootstrap}"
                              f": {described['error']}")
        members = described.get("members") or []
        if described.get("group_state") == "Stable":
            return sum(1 for m in members if any(
                a.get("topic") == topic and a.get("partitions")
                for a in (m.get("member_assignment") or {}).get("assigned_partitions", [])
                if isinstance(a, dict)))
        subscribed = [m for m in members if topic in
                      ((m.get("member_metadata") or {}).get("topics") or [topic])]
        return min(len(subscribed), self._topic_partitions(topic)) if subscribed else 0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            subscriptions, self._subscriptions = list(self._subscriptions), set()
            producer, self._producer = self._producer, None
            admin, self._admin = self._admin, None
        for subscription in subscriptions:
            subscription.close()
        if producer is not None:
            # Every publish waited for its acknowledgement: nothing is left to flush.
            producer.close(timeout=self.timeout_ms / 1000)
        if admin is not None:
            admin.close()

    # Clients.

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the event bus is closed")

    def _client_config(self, role: str) -> dict:
        return {"bootstrap_servers": self.bootstrap_servers,
                "client_id": f"nbml-{role}",
                "bootstrap_timeout_ms": self.timeout_ms,
                "request_timeout_ms": self.timeout_ms,
                "reconnect_backoff_max_ms": 1000}

    def _get_producer(self) -> KafkaProducer:
        with self._lock:
            self._check_open()
            if self._producer is None:
                with _unavailable(self.bootstrap, "connect a producer"):
                    self._producer = KafkaProducer(
                        **self._client_config("producer"),
                        acks="all", linger_ms=0, allow_auto_create_topics=False,
                        max_block_ms=self.timeout_ms,
                        # A message not acknowledged in time fails instead of waiting
                        # in the producer for the broker to come back.
                        delivery_timeout_ms=self.timeout_ms)
            return self._producer

    def _drop_producer(self, producer: KafkaProducer) -> None:
        with self._lock:
            if self._producer is producer:
                self._producer = None
        # timeout 0: drop what was not sent rather than send it later.
        with contextlib.suppress(Exception):
            producer.close(timeout=0)

    def _get_admin(self) -> KafkaAdminClient:
        """The admin client; the caller holds `_lock`."""
        if self._admin is None:
            self._admin = KafkaAdminClient(**self._client_config("admin"))
        return self._admin

    def _partition_count(self, producer: KafkaProducer, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            # Waits (up to max_block_ms) for the topic's metadata.
            count = len(producer.partitions_for(topic) or ()) or 1
            self._partition_counts[topic] = count
        return count

    def _topic_partitions(self, topic: str) -> int:
        with self._lock, _unavailable(self.bootstrap, f"describe topic {topic!r}"):
            described = self._get_admin().describe_topics([topic])
        return max(1, len(described[0].get("partitions") or ())) if described else 1

    def _new_topic(self, topic: str) -> dict:
        options = topic_options(topic)
        spec = {"num_partitions": max(self.partitions, options.min_partitions),
                "replication_factor": self.replication_factor}
        if options.retention_seconds is not None:
            retention_ms = int(options.retention_seconds * 1000)
            spec["configs"] = {"retention.ms": str(retention_ms),
                               "segment.ms": str(max(1000, retention_ms // 4))}
        return spec

    def _ensure_topic(self, topic: str) -> None:
        if topic in self._topics:
            return
        with self._lock:
            self._check_open()
            if topic in self._topics:
                return
            try:
                with _unavailable(self.bootstrap, f"create topic {topic!r}"):
                    admin = self._get_admin()
                    try:
                        admin.create_topics({topic: self._new_topic(topic)},
                                            timeout_ms=self.timeout_ms)
                    except kafka_errors.TopicAlreadyExistsError:
                        pass
                    # Wait until every partition has a leader (also when another client
                    # has just created the topic), so the first publish does not wait for
                    # metadata and a group's first assignment sees every partition.
                    admin.wait_for_topics([topic], timeout_ms=self.timeout_ms)
            except Unavailable:
                admin, self._admin = self._admin, None
                if admin is not None:
                    with contextlib.suppress(Exception):
                        admin.close()
                raise
            self._topics.add(topic)

    def _forget(self, subscription: "_KafkaSubscription") -> None:
        with self._lock:
            self._subscriptions.discard(subscription)


class _KafkaSubscription(Subscription):
    """One consumer of `topic` in `group`; used by one thread at a time."""

    def __init__(self, bus: KafkaEventBus, topic: str, group: str):
        self._bus = bus
        self._topic = topic
        self._group = group
        # Highest offset committed per partition by this subscription (commits only
        # move forward).
        self._committed: dict[int, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        session = bus.session_timeout_ms
        with _unavailable(bus.bootstrap, f"subscribe to {topic!r}"):
            self._consumer = KafkaConsumer(
                **bus._client_config(f"consumer-{group}"),
                group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
                allow_auto_create_topics=False,
                partition_assignment_strategy=(RoundRobinPartitionAssignor,
                                               RangePartitionAssignor),
                session_timeout_ms=session,
                heartbeat_interval_ms=max(100, min(3000, session // 3)),
                max_poll_interval_ms=bus.max_poll_interval_ms,
                fetch_max_wait_ms=min(500, bus.timeout_ms // 2),
                metadata_max_age_ms=METADATA_MAX_AGE_MS)
            # The group's leader assigns partitions from its own metadata: one that
            # joins before it knows the topic's partitions hands out none ("No
            # partition metadata" from the assignor), and the group only rebalances
            # when that member's metadata next refreshes. So know them first.
            deadline = time.monotonic() + bus.timeout_ms / 1000
            while (not self._consumer.partitions_for_topic(topic)
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            self._consumer.subscribe([topic])

    def poll(self, timeout_seconds: float, max_messages: int = 1) -> list[Message]:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        with self._lock:
            if self._closed:
                raise RuntimeError("subscription is closed")
            with _unavailable(self._bus.bootstrap, f"poll {self._topic!r}"):
                batches = self._consumer.poll(
                    timeout_ms=max(0, int(timeout_seconds * 1000)), max_records=max_messages)
        # Each partition's records are in order; interleave partitions by time.
        records = heapq.merge(*batches.values(), key=lambda record: record.timestamp)
        return [Message(topic=record.topic,
                        key=(record.key or b"").decode("utf-8", errors="replace"),
                        value=bytes(record.value or b""), offset=record.offset,
                        partition=record.partition)
                for record in records]

    def commit(self, message: Message) -> None:
        if message.topic != self._topic:
            raise ValueError(f"message is from topic {message.topic!r}, "
                             f"this subscription reads {self._topic!r}")
        next_offset = message.offset + 1
        with self._lock:
            if self._closed:
                raise RuntimeError("subscription is closed")
            if self._committed.get(message.partition, -1) >= next_offset:
                return  # an earlier message than one already committed
            partition = TopicPartition(self._topic, message.partition)
            try:
                with _unavailable(self._bus.bootstrap,
                                  f"commit offset {message.offset} of {self._topic!r}"):
                    self._consumer.commit({partition: OffsetAndMetadata(next_offset, "", -1)},
                                          timeout_ms=self._bus.timeout_ms)
            except _REBALANCED as error:
                log.warning("commit of %s[%d]@%d for group %s refused after a rebalance; "
                            "the message will be delivered again (%s)", self._topic,
                            message.partition, message.offset, self._group, error)
                return
            self._committed[message.partition] = next_offset

    def close(self) -> None:
        """Leaves the group at once (its partitions go to the other members);
        uncommitted messages stay uncommitted."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(Exception):
                self._consumer.close(autocommit=False, timeout_ms=self._bus.timeout_ms)
        self._bus._forget(self)
