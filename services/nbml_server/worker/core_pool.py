"""The cores of one machine, shared by the trial runners of one worker process.

A worker runs several trial runners (one per core by default), so that trials on
small data, which use one core each, run side by side. A trial on larger data uses
several cores (`TrialRequest.cores`, its models' n_jobs); it waits until that many
are free, so the runners never ask for more threads than the machine has (OpenMP
libraries slow down many times over when oversubscribed).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class CorePool:
    """`total` cores handed out to trials, first come first served: `hold(n)` blocks
    until n are free and every earlier request got its cores (so a trial that needs
    two is not starved by a stream of one-core trials)."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic):
        if total < 1:
            raise ValueError(f"a core pool needs at least one core, got {total}")
        self.total = total
        self.free = total
        self.clock = clock
        self._changed = threading.Condition()
        self._tickets = 0  # requests so far
        self._serving = 0  # the ticket whose turn it is
        self._abandoned: set[int] = set()  # tickets given up before their turn

    @contextlib.contextmanager
    def hold(self, cores: int, stopping: threading.Event | None = None,
             check_seconds: float = 0.2) -> Iterator[float]:
        """Holds `cores` (at least 1, at most `total`) while the block runs; yields
        the seconds it waited for them. Raises `PoolStopping` when `stopping` is set
        while it waits."""
        wanted = min(max(1, cores), self.total)
        started = self.clock()
        with self._changed:
            ticket = self._tickets
            self._tickets += 1
            try:
                while self._serving != ticket or self.free < wanted:
                    if stopping is not None and stopping.is_set():
                        raise PoolStopping()
                    self._changed.wait(check_seconds)
            except BaseException:
                self._abandoned.add(ticket)
                self._pass_abandoned_turns()
                raise
            self.free -= wanted
            self._serving += 1
            self._pass_abandoned_turns()
        try:
            yield self.clock() - started
        finally:
            with self._changed:
                self.free += wanted
                self._changed.notify_all()

    def _pass_abandoned_turns(self) -> None:
        """The turn passes over requests given up while they waited."""
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._changed.notify_all()


class PoolStopping(Exception):
    """The runner stopped while its trial waited for cores."""
