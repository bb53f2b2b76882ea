"""A job's trials go over the bus on the embedded platform: the worker coordinates the
search and its own trial runners, one per core, run the trials side by side."""

import pytest

from nbml.v1 import events_pb2, trainer_service_pb2
from nbml_server.adapters.sqlite_event_bus import SqliteEventBus
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.ports.event_bus import TRIALS_TOPIC
from nbml_server.settings import machine_cores

pytestmark = pytest.mark.e2e


def test_a_job_s_trials_are_requested_over_the_bus_and_run_by_the_worker(platform, trained):
    job_id = trained["job"]
    store = SqliteTableStore(platform.home / "nbml.db")
    bus = SqliteEventBus(platform.home / "bus.db")
    try:
        trials = [row for _, row in store.scan("trials_by_job", job_id, limit=10_000)]
        subscription = bus.subscribe(TRIALS_TOPIC, f"e2e-reader-{job_id}")  # never commits
        requests, batch = [], subscription.poll(2.0, max_messages=1000)
        while batch:
            requests += [events_pb2.TrialRequest.FromString(m.value) for m in batch]
            batch = subscription.poll(0.2, max_messages=1000)
        subscription.close()
    finally:
        bus.close()
        store.close()
    ours = [r for r in requests if r.training_job == f"trainingJobs/{job_id}"]
    assert trials and trained["final_job"].state == trainer_service_pb2.JOB_STATE_SUCCEEDED
    # Every trial went out as a request (a configuration climbing rungs, more than one).
    assert len({r.key for r in ours}) >= len(trials)
    assert {r.attempt for r in ours} == {1}
    # ...and each answered trial names the runner that ran it: "host:pid/runner".
    runners = {t["worker"] for t in trials if not (t["error"] or "").startswith("lost")}
    assert len({r.split("/")[0] for r in runners}) == 1  # the one worker process
    assert all(":" in r for r in runners)
    # Its runners each took trials: they went out two at a time, on two lanes.
    assert len(runners) == machine_cores()
