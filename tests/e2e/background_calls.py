"""A call repeated back to back from a few threads until stopped: the traffic e2e tests
keep up while they kill, restart or redeploy something."""

import threading
from collections.abc import Callable
from typing import Any

WAIT_SECONDS = 60


class CallsInBackground:
    """`results`: what each successful call returned, in the order the calls ended;
    `failures`: what the others raised."""

    def __init__(self, call: Callable[[], Any], callers: int = 2):
        self._call = call
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self.results: list[Any] = []
        self.failures: list[Exception] = []
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(callers)]

    @property
    def calls(self) -> int:
        return len(self.results) + len(self.failures)

    def __enter__(self) -> "CallsInBackground":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(WAIT_SECONDS)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                result = self._call()
            except Exception as failure:  # noqa: BLE001 - every failure is the finding
                with self._progress:
                    self.failures.append(failure)
                    self._progress.notify_all()
                continue
            with self._progress:
                self.results.append(result)
                self._progress.notify_all()

    def pause(self, seconds: float) -> bool:
        """For a call to wait between steps: True (at once) when the calls are stopped."""
        return self._stopping.wait(seconds)

    def wait_for(self, condition: Callable[["CallsInBackground"], bool], what: str) -> None:
        """Until `condition(self)` holds (or a call fails)."""
        with self._progress:
            if not self._progress.wait_for(lambda: condition(self) or self.failures,
                                           WAIT_SECONDS):
                raise AssertionError(f"timed out waiting for {what}")

    def wait_for_more(self, count: int) -> None:
        with self._progress:
            target = self.calls + count
        self.wait_for(lambda calls: calls.calls >= target, f"{count} more calls")
