"""The whole mesh on real Kafka, Cassandra and the GCS emulator: the user path, the
data where each system's own client sees it, and the faults it must survive."""

import json
import os
import signal
import time

import pandas as pd
import pytest
from cassandra.cluster import Cluster
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from kafka import KafkaConsumer
from sklearn.datasets import load_breast_cancer

from deploy.envoy.process import free_port
from nbml.client import Client
from nbml.errors import NbmlError
from nbml.v1 import events_pb2, trainer_service_pb2
from nbml_server.launcher import LocalPlatform

pytestmark = pytest.mark.e2e
KEYSPACE, BUCKET = "nbml_e2e", "nbml-e2e"
SUCCEEDED = trainer_service_pb2.JOB_STATE_SUCCEEDED


@pytest.fixture(scope="module")
def platform(tmp_path_factory, kafka_broker, cassandra_node, gcs_emulator):
    env = {"NBML_STORE": cassandra_node.uri(KEYSPACE), "NBML_BLOBS": gcs_emulator.uri(BUCKET),
           "NBML_BUS": kafka_broker.uri, **gcs_emulator.env()}
    home = tmp_path_factory.mktemp("cluster-home")
    with LocalPlatform(home, http_port=free_port(), workers=2, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def cql(cassandra_node):
    host, port = cassandra_node.contact_point.rsplit(":", 1)
    cluster = Cluster([host], port=int(port))
    session = cluster.connect(KEYSPACE)
    yield session
    cluster.shutdown()


@pytest.fixture(scope="module")
def erin(platform):
    with Client(platform.address) as client:
        client.sign_up("erin", "erin's long password")
        yield client


@pytest.fixture(scope="module")
def cancer_csv(tmp_path_factory):
    frame = load_breast_cancer(as_frame=True).frame
    path = tmp_path_factory.mktemp("data") / "cancer.csv"
    frame.to_csv(path, index=False)
    return path


def eventually(call, timeout: float = 90.0):
    """`call()` once it stops answering UNAVAILABLE: a backend that came back is found
    again by every service within seconds, not necessarily at the first request."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except NbmlError as error:
            if error.code != "UNAVAILABLE" or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def job_events(kafka_broker, job_id: str) -> list[str]:
    consumer = KafkaConsumer("training-jobs", bootstrap_servers=kafka_broker.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=5000, group_id=None)
    try:
        return [events_pb2.JobEvent.FromString(m.value).WhichOneof("kind")
                for m in consumer if m.key == job_id.encode()]
    finally:
        consumer.close()


def job_row(cql, job_id: str) -> dict:
    return json.loads(cql.execute("SELECT row FROM jobs_by_id WHERE partition = %s",
                                  (job_id,)).one().row)


def test_user_path_lands_in_each_system(platform, erin, cancer_csv, cql, gcs_emulator,
                                        kafka_broker):
    dataset = erin.upload_dataset(cancer_csv)
    job = erin.wait_for_job(erin.train(dataset.name, "target", budget_seconds=10).name)
    assert job.state == SUCCEEDED
    endpoint = erin.deploy(job.best_model)
    features = pd.read_csv(cancer_csv).drop(columns=["target"]).head(20)
    assert len(erin.predict(endpoint.name, features)) == 20

    user_id = erin.whoami().name.split("/")[-1]
    # Cassandra: the user and the history are rows.
    user = json.loads(cql.execute("SELECT row FROM users_by_name WHERE partition = 'erin'")
                      .one().row)
    assert user["user_id"] == user_id
    history = [json.loads(r.row)["method"] for r in
               cql.execute("SELECT row FROM activity_by_user WHERE partition = %s", (user_id,))]
    assert "/nbml.v1.PredictorService/Predict" in history
    # The GCS emulator: the uploaded file and the model are objects.
    client = storage.Client(project="nbml-local", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": gcs_emulator.emulator_host})
    names = [b.name for b in client.list_blobs(BUCKET, prefix=f"users/{user_id}/")]
    dataset_id, model_id = dataset.name.split("/")[-1], job.best_model.split("/")[-1]
    assert f"users/{user_id}/datasets/{dataset_id}/data.parquet" in names
    assert f"users/{user_id}/models/{model_id}/model.skops" in names
    # Kafka: the job's events are messages keyed by the job id.
    kinds = job_events(kafka_broker, job.name.split("/")[-1])
    assert kinds[0] == "requested" and kinds.count("completed") == 1
    assert "trial_completed" in kinds


def test_worker_killed_mid_job_is_finished_by_the_other(platform, erin, cancer_csv, cql,
                                                        kafka_broker):
    dataset = erin.upload_dataset(cancer_csv)
    job_id = erin.train(dataset.name, "target", budget_seconds=20).name.split("/")[-1]
    for update in erin.watch_job(job_id):
        if update.state == trainer_service_pb2.JOB_STATE_RUNNING:
            break
    worker = job_row(cql, job_id)["worker"]
    os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)

    final = erin.wait_for_job(job_id)
    assert final.state == SUCCEEDED
    row = job_row(cql, job_id)
    assert row["attempt"] == 2 and row["worker"] != worker
    assert job_events(kafka_broker, job_id).count("completed") == 1
    assert len(erin.leaderboard(job_id).entries) >= 1


def test_cassandra_down_means_unavailable_then_recovers(platform, erin, cassandra_node):
    before = {d.name for d in erin.datasets()}
    cassandra_node.stop()
    try:
        with pytest.raises(NbmlError) as caught:
            erin.datasets()
        # UNAVAILABLE, not the client's DEADLINE_EXCEEDED: an answer, not a hang.
        assert caught.value.code == "UNAVAILABLE"
    finally:
        cassandra_node.start()
    assert {d.name for d in eventually(erin.datasets)} == before
    assert eventually(erin.jobs)  # every service is back, not only the first one asked


def test_kafka_down_means_unavailable_then_recovers(platform, erin, cancer_csv, kafka_broker):
    dataset = erin.upload_dataset(cancer_csv)
    jobs_before = len(erin.jobs())
    kafka_broker.stop()
    try:
        with pytest.raises(NbmlError) as caught:
            erin.train(dataset.name, "target", budget_seconds=5)
        assert caught.value.code == "UNAVAILABLE"
        assert len(erin.jobs()) == jobs_before  # nothing half-written
    finally:
        kafka_broker.start()
    job = erin.wait_for_job(eventually(
        lambda: erin.train(dataset.name, "target", budget_seconds=5)).name)
    assert job.state == SUCCEEDED
