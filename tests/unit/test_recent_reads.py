import threading

import pytest

from nbml_server.domain.recent import RecentReads


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_record_is_read_again_only_after_its_time():
    clock, loads = Clock(), []
    recent = RecentReads(seconds=2.0, clock=clock)

    def load():
        loads.append(clock.now)
        return {"v": len(loads)}
    assert recent.get("k", load) == {"v": 1}
    clock.now = 1.9
    assert recent.get("k", load) == {"v": 1}
    clock.now = 2.1
    assert recent.get("k", load) == {"v": 2}
    assert loads == [0.0, 2.1]


def test_forget_makes_the_next_get_load():
    recent, values = RecentReads(clock=Clock()), iter(["old", "new"])
    assert recent.get("k", lambda: next(values)) == "old"
    recent.forget("k")
    assert recent.get("k", lambda: next(values)) == "new"


def test_what_load_raises_is_not_kept():
    recent = RecentReads(clock=Clock())

    def missing():
        raise KeyError("gone")
    with pytest.raises(KeyError):
        recent.get("k", missing)
    assert recent.get("k", lambda: "back") == "back"


def test_a_value_loaded_while_it_was_forgotten_is_not_kept():
    recent, loading, forgotten = RecentReads(clock=Clock()), threading.Event(), threading.Event()

    def slow_old_read():
        loading.set()
        forgotten.wait(5)
        return "old"
    reader = threading.Thread(target=lambda: recent.get("k", slow_old_read))
    reader.start()
    loading.wait(5)
    recent.forget("k")  # e.g. the endpoint was deleted while the read was in flight
    forgotten.set()
    reader.join(5)
    assert recent.get("k", lambda: "new") == "new"
