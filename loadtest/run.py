"""Runs the Locust scenario (`locustfile.py`) headless in its own process and reads
back what it measured, per request type."""

from __future__ import annotations

import csv
import pathlib
import subprocess
import sys
from dataclasses import dataclass

LOCUSTFILE = pathlib.Path(__file__).with_name("locustfile.py")
# Users finish the task in hand when the time is up (a training job runs to its end).
STOP_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class RequestStats:
    method: str
    name: str
    requests: int
    failures: int
    requests_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class LoadRun:
    stats: list[RequestStats]  # one per request type; the "Aggregated" row is left out
    failures: list[str]  # "<count>x <method> <name>: <error>"
    exceptions: list[str]  # errors raised in the users' own code
    log: str

    @property
    def ok(self) -> bool:
        return not self.failures and not self.exceptions


def run_locust(host: str, *, users: int, seconds: int, work_dir: pathlib.Path,
               env: dict[str, str] | None = None) -> LoadRun:
    work_dir.mkdir(parents=True, exist_ok=True)
    prefix = work_dir / "locust"
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host,
               "--headless", "--users", str(users), "--spawn-rate", str(users),
               "--run-time", f"{seconds}s", "--stop-timeout", str(STOP_TIMEOUT_SECONDS),
               "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"]
    finished = subprocess.run(command, capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL,
                              timeout=seconds + STOP_TIMEOUT_SECONDS + 600)
    return LoadRun(stats=_stats(prefix), failures=_failures(prefix),
                   exceptions=_exceptions(prefix), log=finished.stdout + finished.stderr)


def _rows(path: pathlib.Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _stats(prefix: pathlib.Path) -> list[RequestStats]:
    return [RequestStats(method=row["Type"], name=row["Name"],
                         requests=int(row["Request Count"]),
                         failures=int(row["Failure Count"]),
                         requests_per_second=float(row["Requests/s"]),
                         p50_ms=_ms(row["50%"]), p95_ms=_ms(row["95%"]),
                         p99_ms=_ms(row["99%"]), max_ms=_ms(row["Max Response Time"]))
            for row in _rows(pathlib.Path(f"{prefix}_stats.csv"))
            if row["Name"] != "Aggregated"]


def _ms(text: str) -> float:
    return float(text) if text not in ("", "N/A") else float("nan")


def _failures(prefix: pathlib.Path) -> list[str]:
    return [f"{row['Occurrences']}x {row['Method']} {row['Name']}: {row['Error']}"
            for row in _rows(pathlib.Path(f"{prefix}_failures.csv"))]


def _exceptions(prefix: pathlib.Path) -> list[str]:
    return [f"{row['Count']}x {row['Message']}\n{row['Traceback']}"
            for row in _rows(pathlib.Path(f"{prefix}_exceptions.csv"))]
