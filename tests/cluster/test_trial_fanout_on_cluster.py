"""One job's trials fan out to both workers over Kafka, and a worker killed mid-trial
costs the job one trial, not its budget."""

import json
import os
import signal
import socket
import time

import pytest
from cassandra.cluster import Cluster
from kafka import KafkaConsumer

from deploy.envoy.process import free_port
from nbml.client import Client
from nbml.v1 import events_pb2, trainer_service_pb2
from nbml_server.adapters.kafka_event_bus import from_uri
from nbml_server.launcher import LocalPlatform
from nbml_server.ports.event_bus import TRIAL_OUTCOMES_TOPIC, TRIALS_TOPIC
from nbml_server.worker.trial_fanout import TRIAL_RUNNERS_GROUP
from tools.bench.suite import churn

pytestmark = [pytest.mark.e2e,
              pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning")]
KEYSPACE, BUCKET = "nbml_fanout", "nbml-fanout"
SUCCEEDED = trainer_service_pb2.JOB_STATE_SUCCEEDED
READY_SECONDS = 120.0


def wait_until(condition, what: str, timeout: float = READY_SECONDS):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


@pytest.fixture(scope="module")
def platform(tmp_path_factory, kafka_broker, cassandra_node, gcs_emulator):
    env = {"NBML_STORE": cassandra_node.uri(KEYSPACE), "NBML_BLOBS": gcs_emulator.uri(BUCKET),
           "NBML_BUS": kafka_broker.uri, **gcs_emulator.env(),
           "NBML_TRIAL_RUNNERS": "1"}  # one runner per worker: the test is about workers
    home = tmp_path_factory.mktemp("fanout-home")
    with LocalPlatform(home, http_port=free_port(), workers=2, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def workers(platform, kafka_broker):
    """The two worker processes' names (as job rows record them; trial rows add the
    runner: `process_of`), once both trial runners are in the runners' group
    (readiness: they get their share of the trials)."""
    bus = from_uri(kafka_broker.uri)
    try:
        wait_until(lambda: bus.group_members(TRIAL_RUNNERS_GROUP, TRIALS_TOPIC) == 2,
                   "both trial runners to join")
    finally:
        bus.close()
    host = socket.gethostname()
    return {f"{host}:{c.process.pid}": c.process for c in platform.children
            if c.name.startswith("worker-")}


def process_of(runner: str) -> str:
    """The worker process of a trial runner's name ("host:pid/1" -> "host:pid")."""
    return runner.split("/")[0]


@pytest.fixture(scope="module")
def cql(cassandra_node):
    host, port = cassandra_node.contact_point.rsplit(":", 1)
    cluster = Cluster([host], port=int(port))
    yield cluster.connect(KEYSPACE)
    cluster.shutdown()


@pytest.fixture(scope="module")
def frank(platform):
    with Client(platform.address) as client:
        client.sign_up("frank", "frank's long password")
        yield client


@pytest.fixture(scope="module")
def churn_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "churn.csv"
    churn(4000).to_csv(path, index=False)
    return path


def trial_rows(cql, job_id: str) -> list[dict]:
    return [json.loads(r.row) for r in
            cql.execute("SELECT row FROM trials_by_job WHERE partition = %s", (job_id,))]


def job_row(cql, job_id: str) -> dict:
    return json.loads(cql.execute("SELECT row FROM jobs_by_id WHERE partition = %s",
                                  (job_id,)).one().row)


def messages(kafka_broker, topic: str, job_id: str, kind) -> list[tuple[int, object]]:
    """(partition, message) of each of the job's messages on `topic`."""
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=5000, group_id=None)
    try:
        return [(m.partition, kind.FromString(m.value)) for m in consumer
                if m.key.split(b":")[0] == job_id.encode()]
    finally:
        consumer.close()


def outcomes(kafka_broker, job_id: str) -> list[events_pb2.TrialOutcome]:
    return [o for _, o in messages(kafka_broker, TRIAL_OUTCOMES_TOPIC, job_id,
                                   events_pb2.TrialOutcome)]


def running_worker(cql, job_id: str) -> str | None:
    row = job_row(cql, job_id)
    return row.get("worker") if row["state"] == "running" else None


def search_seconds(updates) -> float:
    """The search's own seconds, from the first progress update of the refit."""
    return next(u.progress.elapsed_seconds for u in updates
                if u.progress.stage == "refitting")


def train(client, dataset, budget):
    job = client.train(dataset.name, "churn", budget_seconds=budget)
    return job.name.split("/")[-1]


def test_one_job_s_trials_run_on_both_workers(platform, workers, frank, churn_csv, cql,
                                              kafka_broker):
    dataset = frank.upload_dataset(churn_csv)
    job_id = train(frank, dataset, 15)
    updates = []
    final = frank.wait_for_job(job_id, on_update=updates.append)
    assert final.state == SUCCEEDED
    rows = trial_rows(cql, job_id)
    ran = {process_of(row["worker"]) for row in rows}
    assert ran == set(workers), f"trials by {ran}, workers {set(workers)}"
    answered = outcomes(kafka_broker, job_id)
    assert {process_of(o.worker) for o in answered} == set(workers)
    assert search_seconds(updates) <= 15 * 1.1 + 1  # the search keeps to the budget
    # The out-of-fold predictions went through the blob store and were cleaned up.
    assert any(o.oof_blob for o in answered)


def test_a_worker_killed_mid_trial_costs_one_trial_not_the_budget(platform, workers, frank,
                                                                 churn_csv, cql, kafka_broker):
    budget = 20
    dataset = frank.upload_dataset(churn_csv)
    started = time.monotonic()
    job_id = train(frank, dataset, budget)
    coordinator = wait_until(lambda: running_worker(cql, job_id), "the job to start")
    [victim] = [name for name in workers if name != coordinator]
    # Once the victim has answered a trial it has the next one (the coordinator keeps
    # one trial per runner out): kill it then.
    wait_until(lambda: any(process_of(r["worker"]) == victim for r in trial_rows(cql, job_id)),
               "a trial by the other worker", timeout=budget)
    os.kill(workers[victim].pid, signal.SIGKILL)

    updates = []
    final = frank.wait_for_job(job_id, on_update=updates.append)
    elapsed = time.monotonic() - started
    assert final.state == SUCCEEDED
    row = job_row(cql, job_id)
    assert row["attempt"] == 1 and row["worker"] == coordinator  # the job went on
    # Within its budget: the search ends by budget * 1.1 (a lost trial's wait included),
    # then the refit (a quarter of the budget); a generous margin for a loaded machine.
    assert search_seconds(updates) <= budget * 1.1 + 1
    assert elapsed < budget * 3 + 60
    rows = trial_rows(cql, job_id)
    assert {process_of(r["worker"]) for r in rows} >= {victim, coordinator}
    # The victim's partitions (its lanes) held a trial it never answered: killed
    # mid-trial. Each such trial was then run again by the survivor once the bus gave
    # it the partitions (or answered as having waited past its time), or declared lost.
    requests = messages(kafka_broker, TRIALS_TOPIC, job_id, events_pb2.TrialRequest)
    answers = outcomes(kafka_broker, job_id)
    answered = {(o.key, o.rung): o for o in answers if process_of(o.worker) != victim}
    by_victim = {(o.key, o.rung) for o in answers if process_of(o.worker) == victim}
    lanes = {partition for partition, r in requests if (r.key, r.rung) in by_victim}
    stuck = [(r.key, r.rung) for partition, r in requests
             if partition in lanes and (r.key, r.rung) not in by_victim]
    assert stuck, "the victim had no trial when it was killed"
    retried = [key for key in stuck if key in answered]
    lost = [r for r in rows if (r["error"] or "").startswith("lost")]
    assert len(retried) + len(lost) >= len(stuck), (stuck, retried, [r["error"] for r in rows])
    assert all(process_of(answered[key].worker) == coordinator for key in retried)
