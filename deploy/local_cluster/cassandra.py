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

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

from deploy.local_cluster.downloads import free_port, maven_classpath

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


class CassandraNode:
    """One Cassandra node under `data_dir`. Ports 0 mean "pick free ones"; the ports a
    node first ran on are kept in `data_dir/ports.json` and reused from then on."""

    startup_timeout = 180.0  # seconds; a cold JVM on 2 busy cores takes a while
    stop_timeout = 60.0

    def __init__(self, data_dir: str | os.PathLike, *, native_port: int = 0,
                 storage_port: int = 0, heap: str = "1G"):
        self.data_dir = pathlib.Path(data_dir).resolve()
        self.heap = heap
        self._ports_file = self.data_dir / "ports.json"
        saved = (json.loads(self._ports_file.read_text())
                 if self._ports_file.exists() else {})
        self._chosen = not (native_port or storage_port or saved)
        chosen = _free_pair()
        self.native_port = native_port or saved.get("native_port") or chosen[0]
        self.storage_port = storage_port or saved.get("storage_port") or chosen[1]
        if self.native_port == self.storage_port:
            raise ValueError(f"native and storage port are both {self.native_port}")
        self._process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None  # of the last start()

    # Addresses.

    @property
    def contact_point(self) -> str:
        return f"127.0.0.1:{self.native_port}"

    def uri(self, keyspace: str = "nbml") -> str:
        return f"cassandra://127.0.0.1:{self.native_port}/{keyspace}"

    @property
    def log_file(self) -> pathlib.Path:
        return self.data_dir / "logs" / "system.log"

    @property
    def console_file(self) -> pathlib.Path:
        return self.data_dir / "logs" / "console.log"

    # Lifecycle.

    def start(self) -> "CassandraNode":
        if self.running:
            return self
        classpath = maven_classpath(f"cassandra-{VERSION}",
                                    [f"org.apache.cassandra:cassandra-all:{VERSION}"])
        began = time.monotonic()
        for attempt in range(3):
            if self._chosen and not (_bindable(self.native_port)
                                     and _bindable(self.storage_port)):
                self.native_port, self.storage_port = _free_pair()
            self._launch(classpath)
            try:
                self._wait_until_ready(began + self.startup_timeout)
                break
            except _PortTaken:
                # Another process took a port between choosing and binding it. Fresh
                # ports are only safe while the node has never run.
                self._kill()
                if not self._chosen or attempt == 2:
                    raise RuntimeError(
                        f"Cassandra could not bind port {self.native_port} or "
                        f"{self.storage_port}:\n{self.log_tail()}") from None
                self.native_port, self.storage_port = _free_pair()
            except BaseException:
                self._kill()
                raise
        self._chosen = False
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """SIGTERM (the node drains: flushes memtables, closes the commit log), then
        SIGKILL if it has not exited within `stop_timeout`."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(self.stop_timeout)
        finally:  # timed out, or interrupted while waiting
            if process.poll() is None:
                process.kill()
                process.wait()

    def restart(self) -> "CassandraNode":
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> "CassandraNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in (self.console_file, self.log_file):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out) or "(no log written)"

    # Internals.

    def _launch(self, classpath: list[pathlib.Path]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        (self.data_dir / "triggers").mkdir(exist_ok=True)
        self._ports_file.write_text(json.dumps(
            {"native_port": self.native_port, "storage_port": self.storage_port}))
        config = self.data_dir / "cassandra.yaml"
        config.write_text(CASSANDRA_YAML.format(
            native_port=self.native_port, storage_port=self.storage_port,
            data=self.data_dir))
        logback = self.data_dir / "logback.xml"
        logback.write_text(LOGBACK_XML.format(log=self.log_file))
        jamm = next((p for p in classpath if p.name.startswith("jamm-")), None)
        if jamm is None:
            raise RuntimeError("the jamm jar is missing from Cassandra's classpath")
        lib = classpath[0].parent
        command = [
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
        # Logs are appended across starts; only what this start writes is judged.
        self._log_offsets = {path: path.stat().st_size if path.exists() else 0
                             for path in (self.log_file, self.console_file)}
        console = open(self.console_file, "ab")
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                cwd=self.data_dir, start_new_session=True, preexec_fn=_die_with_parent())
        finally:
            console.close()


    def _wait_until_ready(self, deadline: float) -> None:
        while True:
            if self._process.poll() is not None:
                if self._port_taken():
                    raise _PortTaken()
                raise RuntimeError(
                    f"Cassandra exited with code {self._process.returncode} while "
                    f"starting:\n{self.log_tail()}")
            if self._port_taken():
                raise _PortTaken()
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Cassandra did not answer on {self.contact_point} within "
                    f"{self.startup_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def _port_taken(self) -> bool:
        for path, offset in self._log_offsets.items():
            if path.exists():
                with open(path, "rb") as log:
                    log.seek(offset)
                    if b"Address already in use" in log.read():
                        return True
        return False

    def _answers(self) -> bool:
        """The real check: the driver connects and the node answers a query."""
        try:
            with socket.create_connection(("127.0.0.1", self.native_port), timeout=1):
                pass
        except OSError:
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

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


class _PortTaken(Exception):
    pass


def _die_with_parent():
    """On Linux, a preexec_fn that has the kernel SIGTERM the node when the process that
    started it dies (even by SIGKILL), so no JVM outlives a killed test run. The signal
    follows the starting *thread*, so it is only armed when starting from the main one."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def arm():
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return arm


def _free_pair() -> tuple[int, int]:
    while True:
        pair = free_port(), free_port()
        if pair[0] != pair[1]:
            return pair


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
