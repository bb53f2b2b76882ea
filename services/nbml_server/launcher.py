"""Starts the whole platform on one machine: five services, one worker, Envoy.

Used by `nbml up` and by the end-to-end tests. Each service is its own process, started
with port 0; it prints `LISTENING <name> <host:port>` once serving, which is how the
launcher learns its port (no fixed ports, no sleeps). The predictor may run as several
replicas (`predictor-1`, `predictor-2`, ...), each its own process and port, all behind
Envoy's one predictor cluster. Envoy is configured from those ports and started last;
its readiness (`/ready` = LIVE) means every upstream passed its first health check.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from deploy.envoy.process import EnvoyProcess
from nbml_server.domain.tokens import ensure_keypair
from nbml_server.settings import Settings, machine_cores

SERVICES = ("auth", "dataset", "trainer", "evaluator", "predictor")
# Each child imports pandas and scikit-learn; eight of them starting at once on two busy
# cores took over 60 s (load average 12), so a hung child is told apart at 3 minutes.
START_TIMEOUT_SECONDS = 180


@dataclass
class _Child:
    name: str
    module: str
    env: dict[str, str]
    service: str = ""  # the Envoy cluster it is a host of; "" for a worker
    process: subprocess.Popen | None = None
    address: str = ""

    def arguments(self) -> list[str]:
        if not self.service:
            return []
        # Port 0 at first (the OS picks one); a restarted service gets the port it had,
        # the only one Envoy's static configuration knows.
        return ["--port", self.address.rpartition(":")[2] if self.address else "0"]


@dataclass
class LocalPlatform:
    """The mesh as child processes. `start()` returns when Envoy serves every service."""

    home: pathlib.Path
    http_port: int = 8080
    workers: int = 1
    predictor_replicas: int = 1
    # Log-in and sign-up attempts per client address and minute, limited by Envoy;
    # None: the setting NBML_LOGIN_ATTEMPTS_PER_MINUTE.
    login_attempts_per_minute: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    children: list[_Child] = field(default_factory=list)
    envoy: EnvoyProcess | None = None

    @property
    def address(self) -> str:
        return self.envoy.address if self.envoy else ""

    def start(self) -> "LocalPlatform":
        if self.predictor_replicas < 1:
            raise ValueError(
                f"predictor_replicas must be at least 1, got {self.predictor_replicas}")
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        settings = Settings(home=self.home)
        ensure_keypair(settings.private_key_path, settings.public_key_path)
        try:
            for child in self._planned_children():
                self._spawn(child)
                self.children.append(child)
            for child in self.children:
                child.address = self._await_listening(child)
            upstreams: dict[str, list[tuple[str, int]]] = {}
            for child in self.children:
                if child.service:
                    upstreams.setdefault(child.service, []).append(_split(child.address))
            attempts = (settings.login_attempts_per_minute
                        if self.login_attempts_per_minute is None
                        else self.login_attempts_per_minute)
            self.envoy = EnvoyProcess(self.home / "envoy", upstreams=upstreams,
                                      listen_port=self.http_port, wait_healthy=True,
                                      login_attempts_per_minute=attempts)
            (self.home / "envoy").mkdir(exist_ok=True)
            self.envoy.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _planned_children(self) -> list[_Child]:
        children = []
        for service in SERVICES:
            replicas = self.predictor_replicas if service == "predictor" else 1
            for index in range(replicas):
                name = f"{service}-{index + 1}" if replicas > 1 else service
                children.append(_Child(name, f"nbml_server.{service}", {}, service))
        # The workers share this machine's cores: one trial runner per core in all.
        runners = str(max(1, machine_cores() // self.workers))
        for index in range(self.workers):
            children.append(_Child(f"worker-{index + 1}", "nbml_server.worker",
                                   {"NBML_TRIAL_RUNNERS": runners}))
        return children

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
            self.envoy = None
        for child in self.children:
            if child.process.poll() is None:
                child.process.terminate()
        for child in self.children:
            try:
                child.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.children.clear()

    def __enter__(self) -> "LocalPlatform":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def failed_children(self) -> list[str]:
        return [c.name for c in self.children if c.process.poll() is not None]

    def stop_child(self, name: str, *, kill: bool = False) -> None:
        """Stops one child: SIGTERM (it drains) or, with `kill`, SIGKILL (as a crash
        would); returns once it has exited."""
        child = self._child(name)
        if kill:
            child.process.kill()
        else:
            child.process.terminate()
        child.process.wait(timeout=15)

    def restart_child(self, name: str) -> None:
        """Starts a stopped child again, as a supervisor would; a service comes back on
        its old port, so Envoy, configured once, finds it there with its next health
        check. Returns once it listens."""
        child = self._child(name)
        if child.process.poll() is None:
            raise RuntimeError(f"{name} is still running")
        child.process.stdout.close()
        self._spawn(child)
        address = self._await_listening(child)
        if child.service and address != child.address:
            raise RuntimeError(f"{name} came back on {address}, not {child.address}")

    def _child(self, name: str) -> _Child:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(f"no child {name!r}; there are {[c.name for c in self.children]}")

    def _spawn(self, child: _Child) -> None:
        """Starts (or restarts) a child; `child.env` holds defaults that the caller's
        environment and `self.env` override."""
        # One OpenMP thread per process: the processes already share the cores, and
        # OpenMP's spinning threads slow a loaded machine to a crawl (a histogram
        # gradient boosting predict went from 11 ms to 600 ms).
        env = {"OMP_NUM_THREADS": "1", **child.env, **os.environ, **self.env,
               "NBML_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        log = open(self.home / "logs" / f"{child.name}.log", "ab")
        child.process = subprocess.Popen(
            [sys.executable, "-m", child.module, *child.arguments()], env=env,
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def _await_listening(self, child: _Child) -> str:
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(child.process.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_SECONDS)
        text = line[0].decode().strip() if line else ""
        if not text.startswith("LISTENING"):
            raise RuntimeError(
                f"{child.name} did not start (see {self.home / 'logs' / (child.name + '.log')})")
        return text.split()[-1]


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


STACKS = ("embedded", "local-cluster")


def serve_forever(http_port: int = 8080, json_output: bool = False,
                  stack: str = "embedded", predictor_replicas: int | None = None) -> None:
    """`nbml up`: run in the foreground until Ctrl-C (or SIGTERM).

    `stack="local-cluster"` first starts Kafka, Cassandra and the GCS emulator under
    `$NBML_HOME/cluster` and points the platform at them (two workers share the jobs).
    `predictor_replicas`: predictor processes behind Envoy (default
    `NBML_PREDICTOR_REPLICAS`, 1).
    """
    if stack not in STACKS:
        raise ValueError(f"unknown stack {stack!r}; one of {', '.join(STACKS)}")
    settings = Settings()
    # SIGTERM stops as Ctrl-C does, so the children never outlive us; SIGINT is set
    # too because a shell starting us in the background would have it ignored.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    started = time.monotonic()
    cluster = None
    replicas = predictor_replicas or settings.predictor_replicas
    platform = LocalPlatform(settings.home, http_port=http_port, predictor_replicas=replicas)
    try:
        if stack == "local-cluster":
            from deploy.local_cluster.stack import LocalCluster
            cluster = LocalCluster(settings.home / "cluster").start()
            platform = LocalPlatform(settings.home, http_port=http_port, workers=2,
                                     predictor_replicas=replicas, env=cluster.settings_env())
        platform.start()
    except KeyboardInterrupt:
        if cluster is not None:
            cluster.stop()
        return
    info = {"address": platform.address, "grpc": platform.address,
            "rest": f"http://{platform.address}", "home": str(settings.home), "stack": stack,
            "backends": {k: platform.env.get(k, "") for k in ("NBML_STORE", "NBML_BLOBS",
                                                              "NBML_BUS")},
            "logs": str(settings.home / "logs"),
            "services": {c.name: c.address for c in platform.children}}
    if json_output:
        print(json.dumps(info), flush=True)
    else:
        print(f"No Brains ML is up in {time.monotonic() - started:.1f} s\n"
              f"  gRPC and REST: {platform.address}  (e.g. http://{platform.address}/v1/users/me)\n"
              f"  data:          {settings.home}\n  logs:          {settings.home / 'logs'}\n"
              "Press Ctrl-C to stop.", flush=True)
    try:
        while not platform.failed_children():
            time.sleep(1.0)
        print(f"stopping: {', '.join(platform.failed_children())} exited "
              f"(see {settings.home / 'logs'})", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        platform.stop()
        if cluster is not None:
            cluster.stop()
    if not json_output:
        print("stopped", flush=True)
