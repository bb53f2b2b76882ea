"""A real Apache Kafka broker for the local cluster, run from the jars on Maven Central.

`KafkaBroker(data_dir)` runs one Kafka 4 node in KRaft combined mode (broker and
controller in one JVM, a single-voter quorum; Kafka 4 has no ZooKeeper), listening on
127.0.0.1 only:

    <data_dir>/ports.json          the PLAINTEXT and CONTROLLER ports, chosen once
    <data_dir>/server.properties   written on every start from the ports
    <data_dir>/log4j2.properties   the broker's logging: to files, not the terminal
    <data_dir>/data/               log.dirs (topics, offsets, the KRaft metadata log)
    <data_dir>/logs/server.log     the broker's log; logs/kafka.out its stdout/stderr

The storage is formatted (`kafka.tools.StorageTool format`) only on the first start,
so messages and committed offsets survive `stop()`/`start()`, and the ports are kept
in `ports.json` so a later broker on the same folder listens where clients expect it.

`start()` installs Kafka on first use (`maven_classpath`: kafka_2.13 and its runtime
dependencies, plus the SLF4J binding of log4j) and returns once a Kafka client
(kafka-python's admin client) gets cluster metadata listing this broker, unfenced;
it fails with the log tail if the JVM exits or is not ready in `start_timeout`.
`stop()` sends SIGTERM (a controlled shutdown) and kills the JVM if it has not exited
in `stop_timeout`; `restart()` is both, on the same folder and ports; `kill()` is a
crash (the lifecycle is `server.ManagedServer`'s). On Linux the JVM also gets SIGTERM
when the process that started it (from its main thread) dies.
About 4-6 s to start on 2 cores, under a second to stop.
"""

import base64
import os
import pathlib
import shutil
import subprocess
import uuid

from deploy.local_cluster.downloads import maven_classpath
from deploy.local_cluster.server import ManagedServer, accepts, bindable

KAFKA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
# log4j-core comes with Kafka; the SLF4J 1.x binding (shipped in the Kafka distribution,
# not a Maven dependency of kafka_2.13) sends Kafka's SLF4J logging to it.
LOG4J_VERSION = "2.25.5"
COORDINATES = [f"org.apache.kafka:kafka_{SCALA_VERSION}:{KAFKA_VERSION}",
               f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}"]
NODE_ID = 1
HEAP = "512m"  # -Xmx; the JVM starts smaller (-Xms) and grows as needed
INITIAL_HEAP = "128m"

SERVER_PROPERTIES = """\
# Written by deploy/local_cluster/kafka.py on every start; edits are overwritten.
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={node_id}@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs={log_dirs}

# One node: internal topics have one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

# Clients create their topics with the partition count they want.
auto.create.topics.enable=false

# Consumer groups form at once, and tests may use short session timeouts.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000

# A small machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
"""

LOG4J2_PROPERTIES = """\
# Written by deploy/local_cluster/kafka.py.
status = warn
# Kafka logs its own shutdown from a JVM shutdown hook: keep logging until exit.
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
"""


class KafkaBroker(ManagedServer):
    """One Kafka node on 127.0.0.1; a context manager (start on enter, stop on exit)."""

    name = "Kafka"
    port_names = ("port", "controller_port")
    poll_interval = 0.2

    def __init__(self, data_dir: str | os.PathLike, *, port: int = 0, controller_port: int = 0,
                 start_timeout: float = 90.0, stop_timeout: float = 30.0):
        super().__init__(data_dir)
        self._wanted = {"port": port, "controller_port": controller_port}
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

    # Where clients connect.

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def uri(self) -> str:
        return f"kafka://{self.bootstrap}"

    address = bootstrap

    @property
    def log_file(self) -> pathlib.Path:
        return self.data_dir / "logs" / "server.log"

    @property
    def output_file(self) -> pathlib.Path:
        return self.data_dir / "logs" / "kafka.out"

    # Steps.

    def _install(self) -> None:
        if shutil.which("java") is None:
            raise RuntimeError("Java (17 or newer) is needed to run the local Kafka broker")
        self._lib = maven_classpath(f"kafka-{KAFKA_VERSION}", COORDINATES)[0].parent

    def _command(self) -> list[str]:
        lib = self._lib
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._choose_ports(self._wanted)
        for port in (self.port, self.controller_port):
            if not bindable(port):
                raise RuntimeError(
                    f"port {port} of the Kafka broker in {self.data_dir} is taken by another "
                    f"process (ports are kept in {self.ports_file})")
        properties = self._write_config()
        if not (self.data_dir / "data" / "meta.properties").exists():
            self._format(lib, properties)
        return self._java(lib, "kafka.Kafka", str(properties))

    def _write_config(self) -> pathlib.Path:
        properties = self.data_dir / "server.properties"
        properties.write_text(SERVER_PROPERTIES.format(
            node_id=NODE_ID, port=self.port, controller_port=self.controller_port,
            log_dirs=_escape(str(self.data_dir / "data"))))
        (self.data_dir / "log4j2.properties").write_text(
            LOG4J2_PROPERTIES.format(log=self.log_file))
        return properties

    def _format(self, lib: pathlib.Path, properties: pathlib.Path) -> None:
        cluster_id = _random_cluster_id()
        result = subprocess.run(
            self._java(lib, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                       "-c", str(properties)),
            cwd=self.data_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage in {self.data_dir / 'data'} failed "
                               f"(exit {result.returncode}):\n{result.stdout}{result.stderr}")

    def _java(self, lib: pathlib.Path, main: str, *args: str) -> list[str]:
        # C1 only (TieredStopAtLevel=1): faster start and less CPU on a small machine
        # shared with the other servers; a local broker's load is light.
        return ["java", f"-Xmx{HEAP}", f"-Xms{INITIAL_HEAP}", "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-XX:TieredStopAtLevel=1",
                "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
                "-cp", f"{lib}/*", main, *args]

    def _ready(self, remaining: float) -> object:
        """A client gets metadata that lists this broker, unfenced (so it serves)."""
        from kafka import KafkaAdminClient

        if not accepts(self.port):
            return ConnectionRefusedError(f"nothing listens on {self.bootstrap} yet")
        admin = None
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, client_id="nbml-local-cluster-check",
                bootstrap_timeout_ms=int(min(remaining, 5.0) * 1000),
                request_timeout_ms=5000)
            cluster = admin.describe_cluster()
            if any(b.get("broker_id") == NODE_ID and not b.get("is_fenced")
                   for b in cluster.get("brokers", [])):
                admin.list_topics()
                return True
            return RuntimeError(f"broker not registered yet: {cluster}")
        except Exception as error:  # not listening yet, or not serving yet
            return error
        finally:
            if admin is not None:
                admin.close()


def _random_cluster_id() -> str:
    """A Kafka Uuid as text: 16 random bytes in URL-safe base64 without padding (as
    `kafka-storage random-uuid` prints), not starting with '-' (read as an option)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _escape(value: str) -> str:
    """A value for a Java .properties file."""
    return value.replace("\\", "\\\\")
