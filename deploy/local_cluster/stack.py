"""The local cluster as one object: a Kafka broker, a Cassandra node and a GCS
emulator under one folder, and the settings that point the platform at them."""

import pathlib
from dataclasses import dataclass, field


@dataclass
class LocalCluster:
    """`start()` brings the three servers up (installing them on first use) and
    returns once each answers a real readiness check; data survives `stop()`."""

    root: pathlib.Path
    keyspace: str = "nbml"
    bucket: str = "nbml"
    servers: list = field(default_factory=list)

    def start(self) -> "LocalCluster":
        from deploy.local_cluster.cassandra import CassandraNode
        from deploy.local_cluster.gcs import GcsEmulator
        from deploy.local_cluster.kafka import KafkaBroker

        self.root.mkdir(parents=True, exist_ok=True)
        self.kafka = KafkaBroker(self.root / "kafka")
        self.cassandra = CassandraNode(self.root / "cassandra")
        self.gcs = GcsEmulator(self.root / "gcs")
        try:
            for server in (self.gcs, self.kafka, self.cassandra):
                server.start()
                self.servers.append(server)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        while self.servers:
            self.servers.pop().stop()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def settings_env(self) -> dict[str, str]:
        """The environment that points the platform's processes at this cluster."""
        return {"NBML_STORE": self.cassandra.uri(self.keyspace),
                "NBML_BLOBS": self.gcs.uri(self.bucket),
                "NBML_BUS": self.kafka.uri,
                **self.gcs.env()}
