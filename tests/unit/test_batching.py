"""Micro-batching: concurrent requests for one model share predict calls, each gets its
own rows' results, and one request's bad rows do not fail the others."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from nbml_server.domain.batching import MicroBatcher


class Model:
    """predict doubles each row; the first call waits until `hold` is released."""

    def __init__(self):
        self.calls = []
        self.hold = threading.Event()

    def predict(self, rows):
        if not self.calls:
            self.calls.append(list(rows))
            assert self.hold.wait(10)
        else:
            self.calls.append(list(rows))
        if any(r == "bad" for r in rows):
            raise ValueError("bad row")
        return [r * 2 for r in rows]


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_a_lone_request_runs_at_once():
    batcher, model = MicroBatcher(), Model()
    model.hold.set()
    assert list(batcher.run("m", [1, 2], model.predict)) == [2, 4]
    assert model.calls == [[1, 2]] and batcher.queued("m") == 0


def test_requests_arriving_while_the_model_is_busy_run_together():
    batcher, model = MicroBatcher(), Model()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.run, "m", [0], model.predict)
        wait_until(lambda: model.calls)  # the first call is running
        rest = [pool.submit(batcher.run, "m", [i, i + 100], model.predict) for i in range(1, 8)]
        wait_until(lambda: batcher.queued("m") == 7)
        model.hold.set()
        assert list(first.result()) == [0]
        for i, future in enumerate(rest, start=1):
            assert list(future.result()) == [2 * i, 2 * (i + 100)]
    assert len(model.calls) == 2 and len(model.calls[1]) == 14


def test_other_models_do_not_wait_for_a_busy_one():
    batcher, slow = MicroBatcher(), Model()
    with ThreadPoolExecutor(2) as pool:
        blocked = pool.submit(batcher.run, "slow", [1], slow.predict)
        wait_until(lambda: slow.calls)
        assert list(batcher.run("fast", [3], lambda rows: [r + 1 for r in rows])) == [4]
        slow.hold.set()
        assert list(blocked.result()) == [2]


def test_a_failing_batch_is_retried_request_by_request():
    batcher, model = MicroBatcher(), Model()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.run, "m", [1], model.predict)
        wait_until(lambda: model.calls)
        good = pool.submit(batcher.run, "m", [2], model.predict)
        bad = pool.submit(batcher.run, "m", ["bad"], model.predict)
        wait_until(lambda: batcher.queued("m") == 2)
        model.hold.set()
        assert list(first.result()) == [2] and list(good.result()) == [4]
        with pytest.raises(ValueError, match="bad row"):
            bad.result()


def test_a_batch_stops_at_max_rows_but_always_holds_its_leader():
    batcher, model = MicroBatcher(max_rows=3), Model()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.run, "m", [1], model.predict)
        wait_until(lambda: model.calls)
        queued = [pool.submit(batcher.run, "m", [i, i], model.predict) for i in (2, 3)]
        wait_until(lambda: batcher.queued("m") == 2)
        model.hold.set()
        assert [list(f.result()) for f in [first, *queued]] == [[2], [4, 4], [6, 6]]
    assert [len(c) for c in model.calls] == [1, 2, 2]
    assert list(batcher.run("m", list(range(5)), model.predict)) == [0, 2, 4, 6, 8]


def test_requests_with_equal_rows_each_get_their_answer():
    batcher, model = MicroBatcher(), Model()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.run, "m", [5], model.predict)
        wait_until(lambda: model.calls)
        twins = [pool.submit(batcher.run, "m", [5], model.predict) for _ in range(3)]
        wait_until(lambda: batcher.queued("m") == 3)
        model.hold.set()
        assert [list(f.result(timeout=10)) for f in [first, *twins]] == [[10]] * 4
