"""`make bench-load`: the mixed Locust scenario (loadtest/locustfile.py) against the
whole platform on this machine (embedded backends, Envoy in front): users signing up,
uploading, training and predicting at once. Prints requests, failures, throughput and
latency percentiles per request type, and writes results.json / results.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import pathlib
import sys
import tempfile

from deploy.envoy.process import free_port
from loadtest.run import LoadRun, run_locust
from nbml_server.launcher import LocalPlatform
from tools.bench.run_info import git_commit, load_average

log = logging.getLogger("bench.load")
ROOT = pathlib.Path(__file__).resolve().parents[2]
# Far above what the scenario's users sign up in a minute, all from 127.0.0.1.
LOCUST_SIGN_UPS_PER_MINUTE = 100_000
HEADER = ("| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")


def table(run: LoadRun) -> str:
    lines = [HEADER]
    for s in sorted(run.stats, key=lambda s: -s.requests):
        lines.append(f"| {s.method} {s.name} | {s.requests} | {s.failures} | "
                     f"{s.requests_per_second:.1f} | {s.p50_ms:.0f} | {s.p95_ms:.0f} | "
                     f"{s.p99_ms:.0f} | {s.max_ms:.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=21, help="simulated users at once")
    parser.add_argument("--seconds", type=int, default=120, help="length of the run")
    parser.add_argument("--output-dir", type=pathlib.Path,
                        default=ROOT / "docs" / "benchmarks" / "load")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = dt.datetime.now().isoformat(timespec="seconds")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="nbml-bench-load-") as work:
        work_dir = pathlib.Path(work)
        with LocalPlatform(work_dir / "home", http_port=free_port(),
                           login_attempts_per_minute=LOCUST_SIGN_UPS_PER_MINUTE) as platform:
            log.info("platform up at %s; %d users for %d s", platform.address, args.users,
                     args.seconds)
            run = run_locust(f"http://{platform.address}", users=args.users,
                             seconds=args.seconds, work_dir=work_dir / "locust")
    summary = table(run)
    print(summary)
    for problem in run.failures + run.exceptions:
        print("FAILED:", problem)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps({
        "started": started, "commit": git_commit(), "load_average_before": load_before,
        "users": args.users, "seconds": args.seconds,
        "stats": [dataclasses.asdict(s) for s in run.stats],
        "failures": run.failures, "exceptions": run.exceptions}, indent=2) + "\n")
    (args.output_dir / "results.md").write_text(
        f"# Load benchmark ({started}, commit {git_commit()})\n\n"
        f"`loadtest/locustfile.py`, {args.users} users for {args.seconds} s on one machine "
        f"(embedded backends, Envoy in front); load average before {load_before}. "
        f"Failures: {sum(s.failures for s in run.stats)}, errors in the users' code: "
        f"{len(run.exceptions)}.\n\n{summary}\n")
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
