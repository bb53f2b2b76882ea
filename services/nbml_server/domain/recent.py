"""Records read recently, kept for a few seconds.

The serving path reads the same API key, endpoint and model records on every request;
reading them again at most every `RECENT_READ_SECONDS` takes three store round trips
off each prediction. The price: a change made by another process (a revoked API key,
a deleted or redeployed endpoint) takes effect there within that time; the process
that makes the change forgets its copy at once.
"""

import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from cachetools import TTLCache

RECENT_READ_SECONDS = 2.0
CAPACITY = 10_000

Value = TypeVar("Value")
_MISSING = object()


class RecentReads:
    """A read-through cache: `get` loads on a miss; what `load` raises is not kept.
    Values are shared between callers: they must not be modified."""

    def __init__(self, seconds: float = RECENT_READ_SECONDS, capacity: int = CAPACITY,
                 clock: Callable[[], float] = time.monotonic):
        self._kept: TTLCache = TTLCache(maxsize=capacity, ttl=seconds, timer=clock)
        self._lock = threading.Lock()  # TTLCache is not thread-safe
        # Counts `forget` calls: a value loaded while one ran may be what it forgot.
        self._forgotten = 0

    def get(self, key: Hashable, load: Callable[[], Value]) -> Value:
        with self._lock:
            found = self._kept.get(key, _MISSING)
            forgotten = self._forgotten
        if found is not _MISSING:
            return found
        value = load()
        with self._lock:
            if forgotten == self._forgotten:
                self._kept[key] = value
        return value

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._kept.pop(key, None)
            self._forgotten += 1
