"""Wakes WatchTrainingJob streams when the bus carries an event about their job.

The job record stays the source of truth: an event only says "look again". Each
trainer process listens with a group of its own (every process must see every event)
and never commits, so it keeps no state on the bus. A slow fallback re-read covers a
bus that is down.
"""

import logging
import threading
import uuid
from collections import defaultdict

from nbml_server.ports.event_bus import TRAINING_JOBS_TOPIC, EventBus

log = logging.getLogger("nbml.trainer.watch")


class JobChangeNotifier:
    def __init__(self, bus: EventBus):
        self.bus = bus
        self._changed = threading.Condition()
        self._versions: defaultdict[str, int] = defaultdict(int)

    def start(self) -> "JobChangeNotifier":
        threading.Thread(target=self._listen, name="job-change-notifier", daemon=True).start()
        return self

    def version(self, job_id: str) -> int:
        with self._changed:
            return self._versions[job_id]

    def wait_for_change(self, job_id: str, seen: int, timeout: float) -> int:
        """Returns the job's event count once it passes `seen`, or after `timeout`."""
        with self._changed:
            self._changed.wait_for(lambda: self._versions[job_id] != seen, timeout=timeout)
            return self._versions[job_id]

    def _listen(self) -> None:
        group = f"trainer-watch-{uuid.uuid4().hex}"
        while True:
            try:
                subscription = self.bus.subscribe(TRAINING_JOBS_TOPIC, group)
                try:
                    while True:
                        messages = subscription.poll(timeout_seconds=1.0, max_messages=100)
                        if messages:
                            with self._changed:
                                for message in messages:
                                    self._versions[message.key] += 1
                                self._changed.notify_all()
                finally:
                    subscription.close()
            except Exception:
                # The bus is down: watchers fall back to re-reading; listen again soon.
                log.warning("job events unavailable; retrying", exc_info=True)
                threading.Event().wait(2.0)
