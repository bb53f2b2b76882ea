"""A Google Cloud Storage emulator for the local cluster: fake-gcs-server, built from
the Go module proxy.

`GcsEmulator(data_dir)` runs fake-gcs-server over plain HTTP on 127.0.0.1 only, with the
filesystem backend:

    <data_dir>/port.json        the port, chosen once
    <data_dir>/storage/         buckets and objects (fake-gcs-server's filesystem root)
    <data_dir>/gcs.log          the server's stdout/stderr

The port is kept in `port.json` so a later emulator on the same folder listens where
clients expect it, and the objects survive `stop()`/`start()`.

Clients reach it through `STORAGE_EMULATOR_HOST` (see `env()`), which
google-cloud-storage and the GCS blob store adapter honour; the adapter's URI is
`uri(bucket)`, and buckets are created on first use against an emulator.

`start()` returns once `GET /storage/v1/b` answers 200; `stop()` sends SIGTERM and kills
the server if it has not exited in time.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from deploy.local_cluster.downloads import free_port, go_binary

MODULE = "github.com/fsouza/fake-gcs-server"
VERSION = "v1.56.1"
BINARY = "fake-gcs-server"


class GcsEmulator:
    """fake-gcs-server on 127.0.0.1; a context manager (start on enter, stop on exit)."""

    def __init__(self, data_dir: str | os.PathLike, *, port: int = 0,
                 start_timeout: float = 30.0, stop_timeout: float = 10.0):
        self.data_dir = pathlib.Path(data_dir).absolute()
        self._wanted_port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._out = None

    # Where clients connect.

    @property
    def emulator_host(self) -> str:
        """The value for STORAGE_EMULATOR_HOST (with scheme, as the clients expect)."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.emulator_host}

    def uri(self, bucket: str = "nbml") -> str:
        """The blob store URI of a bucket (the adapter takes the emulator from the
        environment, see `env()`)."""
        return f"gs://{bucket}"

    @property
    def storage_dir(self) -> pathlib.Path:
        return self.data_dir / "storage"

    @property
    def log_file(self) -> pathlib.Path:
        return self.data_dir / "gcs.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # Lifecycle.

    def start(self) -> "GcsEmulator":
        if self.running:
            return self
        binary = go_binary(MODULE, VERSION, BINARY)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        self._choose_port()
        address = f"127.0.0.1:{self.port}"
        command = [str(binary), "-scheme", "http", "-host", "127.0.0.1",
                   "-port", str(self.port), "-backend", "filesystem",
                   "-filesystem-root", str(self.storage_dir),
                   "-public-host", address, "-external-url", f"http://{address}",
                   "-log-level", "warn"]
        self._out = open(self.log_file, "ab")
        self.process = subprocess.Popen(
            _die_with_parent(command), cwd=self.data_dir, stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout` seconds. Objects are on disk
        already (each upload is written when it completes), so nothing is lost."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._out is not None:
            self._out.close()
            self._out = None

    def restart(self) -> "GcsEmulator":
        """Stops and starts again on the same folder and port."""
        self.stop()
        return self.start()

    def __enter__(self) -> "GcsEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Steps.

    def _choose_port(self) -> None:
        """The port given, else that of an earlier start on this folder, else a free
        one; remembered in port.json."""
        saved_file = self.data_dir / "port.json"
        saved = json.loads(saved_file.read_text()) if saved_file.exists() else {}
        self.port = self._wanted_port or saved.get("port") or free_port()
        if saved.get("port") != self.port:
            saved_file.write_text(json.dumps({"port": self.port}) + "\n")

    def _wait_ready(self) -> None:
        """Until the JSON API lists buckets (so it serves requests on this port)."""
        url = f"{self.emulator_host}/storage/v1/b"
        deadline = time.monotonic() + self.start_timeout
        last_error: object = None
        # Straight to 127.0.0.1, whatever proxy the environment names.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"fake-gcs-server exited with code {self.process.returncode} while "
                    f"starting; log tail:\n{self._log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"the GCS emulator on {self.emulator_host} was not ready within "
                    f"{self.start_timeout:.0f} s (last error: {last_error!r}); "
                    f"log tail:\n{self._log_tail()}")
            try:
                with opener.open(url, timeout=min(remaining, 1.0)) as response:
                    body = json.loads(response.read() or b"{}")
                    if response.status == 200 and body.get("kind") == "storage#buckets":
                        return
                    last_error = f"HTTP {response.status}: {body!r}"
            except (OSError, ValueError) as error:  # not listening yet; URLError is an OSError
                last_error = error
            time.sleep(0.1)

    def _log_tail(self, lines: int = 40) -> str:
        if self._out is not None:
            self._out.flush()
        if not self.log_file.exists():
            return "(no log)"
        text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text) or "(empty log)"


def _die_with_parent(command: list[str]) -> list[str]:
    """On Linux, the server gets SIGTERM if the process that started it dies (a killed
    test run leaves no emulator behind). The parent is the starting *thread*: start the
    emulator from a thread that lives as long as it should."""
    setpriv = shutil.which("setpriv")
    if sys.platform.startswith("linux") and setpriv:
        return [setpriv, "--pdeathsig", "TERM", "--", *command]
    return command
