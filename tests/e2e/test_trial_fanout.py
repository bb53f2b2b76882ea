"""A job's trials go over the bus on the embedded platform: the worker coordinates the
search and its own trial runner runs the trials (the SQLite bus has one runner)."""

import pytest

from nbml.v1 import events_pb2, trainer_service_pb2
from nbml_server.adapters.sqlite_event_bus import SqliteEventBus
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.ports.event_bus import TRIALS_TOPIC

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
    # ...and each answered trial names the worker process that ran it.
    workers = {t["worker"] for t in trials if not (t["error"] or "").startswith("lost")}
    assert len(workers) == 1 and all(":" in w for w in workers)
