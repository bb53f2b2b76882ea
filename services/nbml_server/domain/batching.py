"""Micro-batching: concurrent requests for one thing run as one call - predictions of
one model as one predict call, history records as one write.

A fitted pipeline costs about as much on a hundred rows as on one (its per-call work -
frame checks, column transformers, the estimator's setup - dominates small calls), so
requests that arrive while their model is busy wait and then run together. There is
no timer: a request that finds its model idle runs at once with whatever is queued
(leader/follower), so a lone request pays nothing and batches grow with the load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

# One call predicts at most this many rows (a bigger request still runs, alone).
MAX_BATCH_ROWS = 10_000


@dataclass(eq=False)  # compared by identity: two requests may hold equal rows
class _Request:
    rows: Sequence[Any]
    result: Sequence[Any] = ()
    error: BaseException | None = None
    done: bool = False


class MicroBatcher:
    def __init__(self, max_rows: int = MAX_BATCH_ROWS):
        self.max_rows = max_rows
        self._changed = threading.Condition()
        self._queues: dict[Hashable, list[_Request]] = {}
        self._busy: set[Hashable] = set()

    def queued(self, key: Hashable) -> int:
        """Requests waiting for `key` (not counting a batch running)."""
        with self._changed:
            return len(self._queues.get(key, ()))

    def run(self, key: Hashable, rows: Sequence[Any],
            predict: Callable[[list[Any]], Sequence[Any]]) -> Sequence[Any]:
        """`predict(rows)` for these rows, possibly in one call with other callers' rows
        for the same `key` (their `predict` must do the same: same model). Returns one
        result per row of this request; raises what predicting its rows raised."""
        request = _Request(rows)
        with self._changed:
            self._queues.setdefault(key, []).append(request)
            while not request.done and key in self._busy:
                self._changed.wait()
            if not request.done:
                self._busy.add(key)
                batch = self._take(key, request)
        if not request.done:
            self._run_batch(key, batch, predict)
        if request.error is not None:
            raise request.error
        return request.result

    def _take(self, key: Hashable, own: _Request) -> list[_Request]:
        """The leader's own request, then the others queued for `key`, oldest first,
        while they fit in max_rows."""
        queue = self._queues[key]
        batch, rows = [own], len(own.rows)
        for request in queue:
            if request is not own and rows + len(request.rows) <= self.max_rows:
                batch.append(request)
                rows += len(request.rows)
        self._queues[key] = [r for r in queue if r not in batch]
        return batch

    def _run_batch(self, key: Hashable, batch: list[_Request], predict) -> None:
        try:
            try:
                results = predict([row for request in batch for row in request.rows])
                start = 0
                for request in batch:
                    request.result = results[start:start + len(request.rows)]
                    start += len(request.rows)
            except Exception as error:  # noqa: BLE001 - whose rows? each runs alone
                if len(batch) == 1:
                    batch[0].error = error
                else:
                    for request in batch:
                        try:
                            request.result = predict(list(request.rows))
                        except Exception as own_error:  # noqa: BLE001
                            request.error = own_error
        finally:
            with self._changed:
                for request in batch:
                    request.done = True
                self._busy.discard(key)
                if not self._queues.get(key):
                    self._queues.pop(key, None)
                self._changed.notify_all()
