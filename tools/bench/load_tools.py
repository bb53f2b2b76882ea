"""Native load generators for `make bench-serving`: wrk for HTTP (REST through Envoy,
MLflow's server) and ghz for gRPC, each run for a fixed time at a fixed concurrency.

A Python load generator costs as much CPU per call as the server it measures (see
FIELD-NOTES), so both are native: wrk from Debian's package, ghz built by `go install`
into build/tools/bin (the Makefile installs them). Each run returns one `LoadResult`;
the CPU seconds the server processes used during the run are read from /proc.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

# wrk's Lua hooks: one fixed request, and a JSON summary on stdout at the end.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(headers)s
local f = io.open("%(body)s", "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write("@@RESULT@@" .. string.format(
    '{"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "mean_us": %%f, ' ..
    '"non_2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
"""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def tool(name: str) -> str:
    """Path of a load tool: on PATH, or in build/tools/bin (where the Makefile puts ghz)."""
    local = pathlib.Path(__file__).resolve().parents[2] / "build" / "tools" / "bin" / name
    found = shutil.which(name) or (str(local) if local.exists() else None)
    if found is None:
        raise RuntimeError(f"{name} is not installed; `make bench-serving` installs it")
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        for each in [pid, *_descendants(pid)]:
            try:
                fields = pathlib.Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _descendants(pid: int) -> list[int]:
    out = []
    for child in pathlib.Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(p) for p in child.read_text().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *_descendants(kid)]
    return out


def wrk(url: str, body: bytes, *, concurrency: int, seconds: float,
        headers: dict[str, str] | None = None, server_pids: list[int] = ()) -> LoadResult:
    """POSTs `body` to `url` for `seconds` with `concurrency` connections (one thread
    per 8 connections, at most 2: the machine also runs the server)."""
    with tempfile.TemporaryDirectory() as scratch:
        body_path = pathlib.Path(scratch) / "body"
        body_path.write_bytes(body)
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
        script = pathlib.Path(scratch) / "post.lua"
        script.write_text(WRK_SCRIPT % {"headers": lines, "body": body_path})
        threads = max(1, min(2, concurrency // 8))
        before = cpu_seconds(list(server_pids))
        done = subprocess.run(
            [tool("wrk"), f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout",
             "10s", "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60)
        used = cpu_seconds(list(server_pids)) - before
    marker = [l for l in done.stdout.splitlines() if l.startswith("@@RESULT@@")]
    if done.returncode != 0 or not marker:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    raw = json.loads(marker[0][len("@@RESULT@@"):])
    duration = raw["duration_us"] / 1e6
    return LoadResult(requests=raw["requests"], seconds=duration,
                      requests_per_second=raw["requests"] / duration,
                      p50_ms=raw["p50_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
                      errors=raw["non_2xx"] + raw["socket_errors"], server_cpu_seconds=used)


def ghz(address: str, method: str, request: dict, *, concurrency: int, seconds: float,
        proto: pathlib.Path, import_paths: list[pathlib.Path], metadata: dict[str, str],
        server_pids: list[int] = ()) -> LoadResult:
    """Calls gRPC `method` ("package.Service/Method") with `request` (JSON) for
    `seconds`, `concurrency` calls at a time over one HTTP/2 connection."""
    with tempfile.TemporaryDirectory() as scratch:
        data = pathlib.Path(scratch) / "request.json"
        data.write_text(json.dumps(request))
        before = cpu_seconds(list(server_pids))
        done = subprocess.run(
            [tool("ghz"), "--insecure", "--proto", str(proto),
             "--import-paths", ",".join(str(path) for path in import_paths),
             "--call", method, "--data-file", str(data), "--metadata", json.dumps(metadata),
             "--concurrency", str(concurrency), "--duration", f"{seconds:g}s",
             # Calls still running when the time is up finish and count (by default ghz
             # cancels them and reports them as errors).
             "--duration-stop", "wait", "--timeout", "10s", "--format", "json", address],
            capture_output=True, text=True, timeout=seconds + 60)
        used = cpu_seconds(list(server_pids)) - before
    if not done.stdout.strip().startswith("{"):
        raise RuntimeError(f"ghz failed ({done.returncode}): {done.stderr or done.stdout}")
    raw = json.loads(done.stdout)
    percentiles = {p["percentage"]: p["latency"] / 1e6 for p in raw.get("latencyDistribution") or []}
    statuses = raw.get("statusCodeDistribution") or {}
    ok = statuses.get("OK", 0)
    seconds_run = raw["total"] / 1e9
    return LoadResult(requests=raw["count"], seconds=seconds_run,
                      requests_per_second=ok / seconds_run if seconds_run else 0.0,
                      p50_ms=percentiles.get(50, 0.0), p99_ms=percentiles.get(99, 0.0),
                      errors=raw["count"] - ok, server_cpu_seconds=used)
