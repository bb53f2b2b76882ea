"""A monotonic-clock deadline. No signals: callers poll it between units of work."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class Deadline:
    """`seconds` from construction, measured with `clock` (``time.monotonic`` unless
    given; tests pass a fake clock)."""

    def __init__(self, seconds: float, *, clock: Clock | None = None):
        self.seconds = float(seconds)
        self.clock: Clock = clock or time.monotonic
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed())

    def expired(self) -> bool:
        return self.elapsed() >= self.seconds

    def __repr__(self) -> str:
        return f"Deadline(seconds={self.seconds}, elapsed={self.elapsed():.3f})"
