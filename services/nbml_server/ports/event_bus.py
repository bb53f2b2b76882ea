"""Event bus port: durable topics of keyed messages, consumed by groups.

Delivery is at least once: a subscriber commits a message after its outcome is
recorded, and a message not committed (the consumer died) is delivered again to the
group. Messages with the same key keep their order.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

TRAINING_JOBS_TOPIC = "training-jobs"
DEAD_LETTER_TOPIC = "training-jobs.dead-letter"


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

    - A message published before or after `subscribe` reaches the group once it polls.
    - A group sees each message until it commits it: a new subscription of the same
      group after close without commit gets the uncommitted messages again.
    - Two groups each see every message.
    """

    @abstractmethod
    def publish(self, topic: str, key: str, value: bytes) -> None: ...

    @abstractmethod
    def subscribe(self, topic: str, group: str) -> Subscription: ...

    def close(self) -> None:
        """Flush and release connections."""
