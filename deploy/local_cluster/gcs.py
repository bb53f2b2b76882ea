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
import urllib.request

from deploy.local_cluster.downloads import go_binary
from deploy.local_cluster.server import ManagedServer

MODULE = "github.com/fsouza/fake-gcs-server"
VERSION = "v1.56.1"
BINARY = "fake-gcs-server"


class GcsEmulator(ManagedServer):
    """fake-gcs-server on 127.0.0.1; a context manager (start on enter, stop on exit)."""

    name = "fake-gcs-server"
    ports_file_name = "port.json"

    def __init__(self, data_dir: str | os.PathLike, *, port: int = 0,
                 start_timeout: float = 30.0, stop_timeout: float = 10.0):
        super().__init__(data_dir)
        self._wanted_port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

    # Where clients connect.

    @property
    def emulator_host(self) -> str:
        """The value for STORAGE_EMULATOR_HOST (with scheme, as the clients expect)."""
        return f"http://127.0.0.1:{self.port}"

    address = emulator_host

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

    # Steps. Objects are on disk as soon as each upload completes, so `stop()` (SIGTERM,
    # then SIGKILL after `stop_timeout` seconds) loses nothing.

    def _install(self) -> None:
        self._binary = go_binary(MODULE, VERSION, BINARY)

    def _command(self) -> list[str]:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._choose_ports({"port": self._wanted_port})
        address = f"127.0.0.1:{self.port}"
        return [str(self._binary), "-scheme", "http", "-host", "127.0.0.1",
                "-port", str(self.port), "-backend", "filesystem",
                "-filesystem-root", str(self.storage_dir),
                "-public-host", address, "-external-url", f"http://{address}",
                "-log-level", "warn"]

    def _ready(self, remaining: float) -> object:
        """The JSON API lists buckets (so it serves requests on this port)."""
        try:
            with _DIRECT.open(f"{self.emulator_host}/storage/v1/b",
                              timeout=min(remaining, 1.0)) as response:
                body = json.loads(response.read() or b"{}")
                if response.status == 200 and body.get("kind") == "storage#buckets":
                    return True
                return f"HTTP {response.status}: {body!r}"
        except (OSError, ValueError) as error:  # not listening yet; URLError is an OSError
            return error


# Straight to 127.0.0.1, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
