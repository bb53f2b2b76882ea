"""Event bus port: durable topics of keyed messages, consumed by groups.

Delivery is at least once: a subscriber commits a message after its outcome is
recorded, and a message not committed (the consumer died) is delivered again to the
group. Messages with the same key keep their order.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

TRAINING_JOBS_TOPIC = "training-jobs"
DEAD_LETTER_TOPIC = "training-jobs.dead-letter"
# Trials of one job fanned out to every worker (nbml.v1.TrialRequest, lane = the
# coordinator's slot), and their outcomes back to the job's coordinator
# (nbml.v1.TrialOutcome, key = job id).
TRIALS_TOPIC = "training-trials"
TRIAL_OUTCOMES_TOPIC = "training-trial-outcomes"


@dataclass(frozen=True)
class TopicOptions:
    """How a bus should keep a topic; adapters apply it when they create the topic."""

    # At least this many partitions on a partitioned bus (more when the bus's default
    # is larger). Members of a group split a topic's partitions, so this caps how many
    # of them share its messages.
    min_partitions: int = 1
    # Messages may be dropped this long after they were published (None: kept). For
    # topics whose messages matter for minutes: a group new to the topic then reads a
    # bounded history, not every message ever published.
    retention_seconds: float | None = None


TOPICS: dict[str, TopicOptions] = {
    # Enough partitions for many workers; a request is stale once its job ended.
    TRIALS_TOPIC: TopicOptions(min_partitions=24, retention_seconds=24 * 3600),
    # Read within seconds by a coordinator that subscribes in a group of its own.
    TRIAL_OUTCOMES_TOPIC: TopicOptions(retention_seconds=5 * 60),
}


def topic_options(topic: str) -> TopicOptions:
    return TOPICS.get(topic, TopicOptions())


@dataclass(frozen=True)
class Message:
    topic: str
    key: str
    value: bytes
    # Position in the topic (per partition for partitioned buses); opaque to callers.
    offset: int
    partition: int = 0


class Subscription(ABC):
    @abstractmethod
    def poll(self, timeout_seconds: float, max_messages: int = 1) -> list[Message]:
        """Waits up to `timeout_seconds` for messages; returns [] when none came."""

    @abstractmethod
    def commit(self, message: Message) -> None:
        """Marks `message` and everything before it in its partition as done for the group."""

    @abstractmethod
    def close(self) -> None: ...


class EventBus(ABC):
    """Contract (checked by tests/contract on every adapter):

    - A message published before or after `subscribe` reaches the group once it polls
      (on a topic with a retention (`TOPICS`), while it is retained).
    - A group sees each message until it commits it: a new subscription of the same
      group after close without commit gets the uncommitted messages again.
    - Two groups each see every message.
    - `group_members` counts the live subscriptions of a group that share a topic's
      messages: 0 when none, 1 for one (and none once it closed).
    """

    @abstractmethod
    def publish(self, topic: str, key: str, value: bytes, *, lane: int | None = None) -> None:
        """Publishes one message. `lane` (>= 0), when given, places the message instead
        of its key: messages of one lane keep their order, and the members of a group
        get lanes 0, 1, 2, ... in turn (lane i goes to member i mod n, while the topic
        has more partitions than lanes). A publisher that keeps at most one message
        out per lane, with as many lanes as the group has members, never has one
        message queued behind another while a member idles."""

    @abstractmethod
    def subscribe(self, topic: str, group: str) -> Subscription: ...

    @abstractmethod
    def group_members(self, group: str, topic: str) -> int:
        """How many subscriptions of `group` currently share `topic`'s messages, each
        getting its own part of them (a partitioned bus: members with partitions of
        the topic). 0 when none. A member that died without closing may count until
        the bus notices (Kafka: its session timeout)."""

    def close(self) -> None:
        """Flush and release connections."""
