"""Servers of the local cluster (Kafka, Cassandra, the GCS emulator), started once per
test session on loopback when a test asks for them, stopped at the end."""

import pytest


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    from deploy.local_cluster.kafka import KafkaBroker
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def cassandra_node(tmp_path_factory):
    from deploy.local_cluster.cassandra import CassandraNode
    with CassandraNode(tmp_path_factory.mktemp("cassandra")) as node:
        yield node


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    from deploy.local_cluster.gcs import GcsEmulator
    with GcsEmulator(tmp_path_factory.mktemp("gcs")) as emulator:
        yield emulator
