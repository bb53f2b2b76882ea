"""The life of one local server process, shared by Kafka, Cassandra and the GCS emulator.

A `ManagedServer` lives in a data folder. Its ports are chosen once and kept in a JSON
file there, so a restart (or a new object on the same folder) listens where clients
expect it. The process writes its stdout/stderr to a file in that folder and dies with
the process that started it (`die_with_parent`). `start()` returns once a real
readiness check passes (`wait_until`), and fails with the log tail when the process
exits or the check does not pass in time. `stop()` is SIGTERM, then SIGKILL after
`stop_timeout`; `kill()` is a crash.

A subclass names its ports (`port_names`, also their attribute names and their keys
in the ports file), says where clients connect (`address`), and fills in the hooks:
`_install()` (fetch the program; not counted in `start_timeout`), `_command()` (folders,
ports, configuration; returns the command line) and `_ready(remaining)` (one readiness
check).
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from deploy.local_cluster.downloads import free_port


class ManagedServer:
    name = "server"  # in messages
    port_names: tuple[str, ...] = ("port",)
    ports_file_name = "ports.json"
    poll_interval = 0.1  # seconds between readiness checks
    start_timeout: float
    stop_timeout: float

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = pathlib.Path(data_dir).absolute()
        for name in self.port_names:
            setattr(self, name, 0)
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None  # of the last start()

    # What a subclass says.

    @property
    def address(self) -> str:
        """Where clients connect, for messages."""
        raise NotImplementedError

    @property
    def log_file(self) -> pathlib.Path:
        """The server's own log."""
        raise NotImplementedError

    @property
    def output_file(self) -> pathlib.Path:
        """Where the process's stdout and stderr go."""
        return self.log_file

    def _install(self) -> None:
        """Fetches the program (once; later calls are quick)."""

    def _command(self) -> list[str]:
        """Everything else up to the launch (folders, ports, configuration); returns the
        command line."""
        raise NotImplementedError

    def _ready(self, remaining: float) -> object:
        """One readiness check, given the seconds left: True when the server serves;
        anything else (False, or why not, as an error or text) means not yet."""
        raise NotImplementedError

    # Lifecycle.

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self):
        if self.running:
            return self
        self.stop()  # the remains of a server that exited by itself
        self._install()
        began = time.monotonic()
        self._launch(self._command())
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the process has not exited within `stop_timeout`
        seconds (or the wait is interrupted)."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no controlled shutdown."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self):
        """Stops and starts again on the same folder and ports."""
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the process's output and of the server's log."""
        tails = []
        for path in dict.fromkeys((self.output_file, self.log_file)):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    tails.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(tails) or "(no log)"

    # Steps.

    @property
    def ports_file(self) -> pathlib.Path:
        return self.data_dir / self.ports_file_name

    def _saved_ports(self) -> dict[str, int]:
        return json.loads(self.ports_file.read_text()) if self.ports_file.exists() else {}

    def _choose_ports(self, wanted: dict[str, int] | None = None, *,
                      fresh: bool = False) -> None:
        """Sets each port: the one wanted, else the one saved by an earlier start on this
        folder (unless `fresh`), else a free one; never one port twice."""
        sources = [wanted or {}, {} if fresh else self._saved_ports()]
        chosen: dict[str, int] = {}
        for source in sources:
            for name in self.port_names:
                port = source.get(name)
                if name not in chosen and port and port not in chosen.values():
                    chosen[name] = port
        for name in self.port_names:
            while name not in chosen:
                port = free_port()
                if port not in chosen.values():
                    chosen[name] = port
        for name in self.port_names:
            setattr(self, name, chosen[name])

    def _save_ports(self) -> None:
        ports = {name: getattr(self, name) for name in self.port_names}
        if ports != self._saved_ports():
            self.ports_file.write_text(json.dumps(ports) + "\n")

    def _launch(self, command: list[str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._save_ports()
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.output_file, "ab") as out:  # the process keeps its own copy
            self.process = subprocess.Popen(
                die_with_parent(command), cwd=self.data_dir, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_ready(self, since: float | None = None) -> None:
        wait_until(self._ready, self.start_timeout, f"{self.name} on {self.address}",
                   since=since, process=self.process, log_tail=self.log_tail,
                   interval=self.poll_interval)


def wait_until(check: Callable[[float], object], timeout: float, describe: str, *,
               since: float | None = None, process: subprocess.Popen | None = None,
               log_tail: Callable[[], str] = lambda: "(no log)",
               interval: float = 0.1) -> None:
    """Calls `check(seconds_left)` every `interval` seconds until it returns True, for
    at most `timeout` seconds from `since` (default: now). Anything else it returns is
    "not yet", and the last such answer is in the TimeoutError; what it raises goes
    through. Fails at once with RuntimeError if `process` exits."""
    deadline = (time.monotonic() if since is None else since) + timeout
    last: object = None
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{describe} exited with code {process.returncode} while "
                               f"starting; log tail:\n{log_tail()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{describe} was not ready within {timeout:.0f} s "
                               f"(last check: {last!r}); log tail:\n{log_tail()}")
        result = check(remaining)
        if result is True:
            return
        last = result
        time.sleep(interval)


def die_with_parent(command: list[str]) -> list[str]:
    """On Linux, `command` under `setpriv --pdeathsig TERM`: the kernel sends it SIGTERM
    when the process that started it dies, even by SIGKILL (a killed test run leaves
    no server behind). The signal follows the starting *thread*, so it is only armed
    when starting from the main thread: a server started from another thread must not
    die with that thread."""
    setpriv = shutil.which("setpriv")
    if (sys.platform.startswith("linux") and setpriv
            and threading.current_thread() is threading.main_thread()):
        return [setpriv, "--pdeathsig", "TERM", "--", *command]
    return command


def bindable(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (connections in TIME_WAIT from an earlier run
    do not count: the JVM binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def accepts(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        return True
    except OSError:
        return False
