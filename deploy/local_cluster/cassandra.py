"""A single Apache Cassandra 5.0 node on loopback, run from Maven Central jars on JDK 17.

`cassandra-all` and its runtime dependencies are fetched once into the user cache
(`downloads.maven_classpath`); the node runs the daemon's main class straight from that
classpath, with the jamm agent and the JDK 17 module flags the distribution's start
script would add. Everything the node writes lives under `data_dir`: its cassandra.yaml
and logback.xml, data, commit log, hints, logs (`logs/system.log`, `logs/console.log`)
and `ports.json`, which pins the ports chosen at first start so a restart serves the
same data on the same ports.

    with CassandraNode(tmp / "cassandra") as node:
        store = open_table_store(node.uri("nbml"))

No JMX port is opened (nodetool is not available); the node only listens on its native
(CQL) port and its storage (gossip) port, both on 127.0.0.1.
"""

import os
import pathlib
import time

from deploy.local_cluster.downloads import maven_classpath
from deploy.local_cluster.server import ManagedServer, accepts, bindable

VERSION = "5.0.9"  # newest 5.0.x on Maven Central when written
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"

# The module flags of the distribution's conf/jvm17-server.options: Cassandra reaches
# into JDK internals (jamm, unsafe buffers, the attach API).
JDK17_MODULE_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports", "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
]

# A node sized for a 2-core test machine. Durations and sizes use the 4.1+ unit syntax.
CASSANDRA_YAML = """\
# Written by deploy/local_cluster/cassandra.py; rewritten at every start.
cluster_name: nbml-local
num_tokens: 1
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch

listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {storage_port}
native_transport_port: {native_port}
start_native_transport: true
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{storage_port}"

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer

data_file_directories:
  - {data}/data
commitlog_directory: {data}/commitlog
saved_caches_directory: {data}/saved_caches
hints_directory: {data}/hints
cdc_raw_directory: {data}/cdc_raw

commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB
commitlog_total_space: 128MiB
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
memtable_flush_writers: 1

concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 2
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
compaction_throughput: 64MiB/s
native_transport_max_threads: 32
key_cache_size: 16MiB
counter_cache_size: 0MiB
disk_optimization_strategy: ssd

hinted_handoff_enabled: false
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
paxos_variant: v2
cas_contention_timeout: 5000ms
"""

LOGBACK_XML = """\
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log}</file>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %logger{{0}} - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE" />
  </root>
</configuration>
"""


class CassandraNode(ManagedServer):
    """One Cassandra node under `data_dir`. Ports 0 mean "pick free ones"; the ports a
    node first ran on are kept in `data_dir/ports.json` and reused from then on."""

    name = "Cassandra"
    port_names = ("native_port", "storage_port")
    poll_interval = 0.5
    startup_timeout = 180.0  # seconds; a cold JVM on 2 busy cores takes a while
    stop_timeout = 60.0

    def __init__(self, data_dir: str | os.PathLike, *, native_port: int = 0,
                 storage_port: int = 0, heap: str = "1G"):
        super().__init__(pathlib.Path(data_dir).resolve())
        self.heap = heap
        if native_port and native_port == storage_port:
            raise ValueError(f"native and storage port are both {native_port}")
        # Ports picked here (none given, none saved) may be picked again until it ran.
        self._chosen = not (native_port or storage_port or self._saved_ports())
        self._choose_ports({"native_port": native_port, "storage_port": storage_port})

    # Addresses.

    @property
    def contact_point(self) -> str:
        return f"127.0.0.1:{self.native_port}"

    address = contact_point

    def uri(self, keyspace: str = "nbml") -> str:
        return f"cassandra://127.0.0.1:{self.native_port}/{keyspace}"

    @property
    def log_file(self) -> pathlib.Path:
        return self.data_dir / "logs" / "system.log"

    @property
    def console_file(self) -> pathlib.Path:
        return self.data_dir / "logs" / "console.log"

    output_file = console_file

    @property
    def start_timeout(self) -> float:
        return self.startup_timeout

    # Lifecycle.

    def start(self) -> "CassandraNode":
        """As `ManagedServer.start`, but when another process takes a freshly picked port
        between picking and binding it, tries again (3 times at most) on new ones."""
        if self.running:
            return self
        self._install()
        began = time.monotonic()
        for attempt in range(3):
            if self._chosen and not (bindable(self.native_port)
                                     and bindable(self.storage_port)):
                self._choose_ports(fresh=True)
            self._launch(self._command())
            try:
                self._wait_ready(since=began)
                break
            except BaseException as error:
                self.kill()
                if not (isinstance(error, Exception) and self._port_taken()):
                    raise
                # Fresh ports are only safe while the node has never run.
                if not self._chosen or attempt == 2:
                    raise RuntimeError(
                        f"Cassandra could not bind port {self.native_port} or "
                        f"{self.storage_port}:\n{self.log_tail()}") from None
                self._choose_ports(fresh=True)
        self._chosen = False
        self.startup_seconds = time.monotonic() - began
        return self

    # Internals.

    def _install(self) -> None:
        self._classpath = maven_classpath(f"cassandra-{VERSION}",
                                          [f"org.apache.cassandra:cassandra-all:{VERSION}"])

    def _command(self) -> list[str]:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "triggers").mkdir(exist_ok=True)
        config = self.data_dir / "cassandra.yaml"
        config.write_text(CASSANDRA_YAML.format(
            native_port=self.native_port, storage_port=self.storage_port,
            data=self.data_dir))
        logback = self.data_dir / "logback.xml"
        logback.write_text(LOGBACK_XML.format(log=self.log_file))
        jamm = next((p for p in self._classpath if p.name.startswith("jamm-")), None)
        if jamm is None:
            raise RuntimeError("the jamm jar is missing from Cassandra's classpath")
        lib = self._classpath[0].parent
        # Logs are appended across starts; only what this start writes is judged.
        self._log_offsets = {path: path.stat().st_size if path.exists() else 0
                             for path in (self.log_file, self.console_file)}
        return [
            "java",
            f"-Xms{self.heap}", f"-Xmx{self.heap}", "-Xss256k",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=300", "-XX:+ExitOnOutOfMemoryError",
            "-XX:+PerfDisableSharedMem",
            "-Djava.net.preferIPv4Stack=true",
            f"-javaagent:{jamm}",
            *JDK17_MODULE_FLAGS,
            f"-Dcassandra.config={config.as_uri()}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.storagedir={self.data_dir}",
            f"-Dcassandra.logdir={self.data_dir / 'logs'}",
            f"-Dlogback.configurationFile={logback}",
            f"-Dcassandra.triggers_dir={self.data_dir / 'triggers'}",
            # A lone seed: nothing to wait for.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=100",
            "-Dcassandra.superuser_setup_delay_ms=0",
            # Nobody to tell about a shutdown (saves 2 s per stop).
            "-Dcassandra.shutdown_announce_in_ms=0",
            "-Dcassandra.available_processors=2",
            "-cp", f"{lib}/*",
            MAIN_CLASS,
        ]

    def _ready(self, remaining: float) -> bool:
        """The real check: the driver connects and the node answers a query."""
        if self._port_taken():
            raise _PortTaken()
        if not accepts(self.native_port):
            return False
        from cassandra.cluster import Cluster

        cluster = Cluster(["127.0.0.1"], port=self.native_port, connect_timeout=5,
                          control_connection_timeout=5, schema_metadata_enabled=False)
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local",
                                  timeout=10).one()
            return row is not None and bool(row.release_version)
        except Exception:
            return False
        finally:
            cluster.shutdown()

    def _port_taken(self) -> bool:
        for path, offset in self._log_offsets.items():
            if path.exists():
                with open(path, "rb") as log:
                    log.seek(offset)
                    text = log.read()
                    # The native port says the first; the storage port, the second.
                    if (b"Address already in use" in text
                            or b"is in use by another process" in text):
                        return True
        return False


class _PortTaken(Exception):
    """The node's log says it could not bind a port."""
