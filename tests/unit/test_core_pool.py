"""The cores a worker's trial runners share (`worker.core_pool`)."""

import threading

import pytest

from nbml_server.worker.core_pool import CorePool, PoolStopping

WAIT = 10.0  # seconds a test waits for a thread; only a hang reaches it


def holder(pool: CorePool, cores: int, log: list, name: str,
           release: threading.Event, stopping: threading.Event | None = None):
    """A thread that holds `cores` until `release` is set, logging when it got them."""
    def run():
        try:
            with pool.hold(cores, stopping, check_seconds=0.01):
                log.append(name)
                release.wait(WAIT)
        except PoolStopping:
            log.append(f"{name} stopped")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_until(condition) -> None:
    event = threading.Event()
    for _ in range(1000):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("the condition never held")


def test_one_core_trials_run_side_by_side_up_to_the_machine():
    pool, log, release = CorePool(2), [], threading.Event()
    threads = [holder(pool, 1, log, name, release) for name in ("a", "b", "c")]
    wait_until(lambda: len(log) == 2)
    assert pool.free == 0 and sorted(log) == ["a", "b"]  # the third waits
    release.set()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(log) == ["a", "b", "c"] and pool.free == 2


def test_a_trial_on_more_cores_waits_for_them_and_is_not_overtaken():
    pool, log = CorePool(2), []
    first, wide, later = threading.Event(), threading.Event(), threading.Event()
    holder(pool, 1, log, "one-core", first)
    wait_until(lambda: log == ["one-core"])
    holder(pool, 2, log, "two-core", wide)
    wait_until(lambda: pool._tickets == 2)
    holder(pool, 1, log, "later", later)  # a core is free, but two-core came first
    wait_until(lambda: pool._tickets == 3)
    assert log == ["one-core"]
    first.set()
    wait_until(lambda: log[-1:] == ["two-core"])
    assert pool.free == 0
    wide.set()
    wait_until(lambda: log[-1:] == ["later"])
    later.set()


def test_a_request_given_up_while_waiting_lets_the_next_one_through():
    pool, log, stopping = CorePool(1), [], threading.Event()
    busy, rest = threading.Event(), threading.Event()
    holder(pool, 1, log, "busy", busy)
    wait_until(lambda: log == ["busy"])
    holder(pool, 1, log, "stopped", rest, stopping)
    wait_until(lambda: pool._tickets == 2)
    holder(pool, 1, log, "next", rest)
    wait_until(lambda: pool._tickets == 3)
    stopping.set()
    wait_until(lambda: "stopped stopped" in log)
    busy.set()
    wait_until(lambda: log[-1:] == ["next"])
    rest.set()


def test_asking_for_more_cores_than_the_machine_has_takes_them_all():
    pool = CorePool(2)
    with pool.hold(8) as waited:
        assert pool.free == 0 and waited >= 0
    assert pool.free == 2
    with pytest.raises(ValueError):
        CorePool(0)
