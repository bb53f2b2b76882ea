"""`make bench-fanout`: trials per second of one job with 1 and with 2 workers.

    python -m tools.bench.fanout [--workers 1,2] [--runners 1] [--dataset churn]
                                 [--budget 30] [--repeats 1] [--inline] [--workdir DIR]

Starts the local cluster (Kafka, Cassandra, the GCS emulator: `deploy/local_cluster`,
installed into the user cache on first use) once, then for each worker count the whole
platform on it (`LocalPlatform`, a keyspace and bucket of its own), waits until every
worker's trial runner is in the runners' consumer group (a readiness check, not a
sleep), uploads the data set (tools/bench/suite.py), trains one job and reports:

- trials: the job's trials (pruned and failed ones included: each took a runner);
- search seconds: from the job's progress, the search alone (the budget bounds it);
- trials/s = trials / search seconds; how many trials each runner ran; and how busy
  the runners were: the trials' fit seconds over search seconds x runners (idle
  runners, e.g. a trial queued behind another while a worker waits, lower it; so do
  the coordinator's own pauses and the data preparation a runner does first).

Each worker runs `--runners` trial runners (NBML_TRIAL_RUNNERS; 1 by default, so the
numbers measure workers; the platform's own default is one per core).

`--inline` adds a run with one worker and NBML_TRIAL_FANOUT=false (the trials in the
coordinator's thread, no bus): the fan-out's own cost.

Cancellation (each fan-out run, unless `--no-cancel`): a second job with a long budget
is cancelled once it has finished `--cancel-after` trials, and the script reports, from
the cancel request: when the job's search stopped (its "refitting" stage, where the
watch stream shows it), when the job was CANCELLED (after refitting the best trial
found, which the job keeps), and when the last trial still running on a runner sent
its outcome (an observer reads the outcomes topic in a consumer group of its own for
`CANCEL_WINDOW_SECONDS` after the cancel; a trial still running at the window's end is
not seen, which the window's length makes news).

The numbers depend on the machine's cores and load (the script prints the load
average): two workers cannot beat one by much on a machine with two busy cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field

from . import run_info, suite

log = logging.getLogger("bench.fanout")
PASSWORD = "bench password, long enough"
READY_SECONDS = 120.0
CANCEL_BUDGET_SECONDS = 600  # long enough that only the cancel ends the job
CANCEL_WINDOW_SECONDS = 10.0  # how long after a cancel trial outcomes are watched for


@dataclass
class Cancellation:
    """Seconds from the cancel request (None: not seen)."""
    trials_before: int = 0
    search_stopped: float | None = None
    job_cancelled: float | None = None
    last_outcome: float | None = None
    outcomes_after: int = 0  # outcomes of trials still running at the cancel
    stopped_by_cancel: int = 0  # of those, cut short by it
    state: str = ""
    models: int = 0


@dataclass
class Run:
    label: str
    workers: int
    fanout: bool
    runners_per_worker: int = 1
    trials: int = 0
    search_seconds: float = 0.0
    job_seconds: float = 0.0
    state: str = ""
    by_worker: dict[str, int] = field(default_factory=dict)
    fit_seconds: float = 0.0  # summed over the trials
    cancellation: Cancellation | None = None

    @property
    def runners(self) -> int:
        return self.workers * self.runners_per_worker

    @property
    def busy(self) -> float:
        seconds = self.search_seconds * self.runners
        return self.fit_seconds / seconds if seconds else 0.0

    @property
    def trials_per_second(self) -> float:
        return self.trials / self.search_seconds if self.search_seconds else 0.0


def wait_for_runners(bus_uri: str, runners: int) -> float:
    """Seconds until `runners` trial runners share the trials topic."""
    from nbml_server.adapters.registry import open_event_bus
    from nbml_server.ports.event_bus import TRIALS_TOPIC
    from nbml_server.worker.trial_fanout import TRIAL_RUNNERS_GROUP

    bus = open_event_bus(bus_uri)
    try:
        return wait_for_members(bus, TRIAL_RUNNERS_GROUP, TRIALS_TOPIC, runners,
                                f"{runners} trial runners")
    finally:
        bus.close()


def wait_for_members(bus, group: str, topic: str, members: int, who: str) -> float:
    """Seconds until `members` subscriptions of `group` share `topic`."""
    started = time.monotonic()
    while bus.group_members(group, topic) != members:
        if time.monotonic() - started > READY_SECONDS:
            raise RuntimeError(f"{who} did not join in {READY_SECONDS} s")
        time.sleep(0.2)
    return time.monotonic() - started


class OutcomeObserver:
    """Reads every trial outcome of one job off the bus as it arrives, in a consumer
    group of its own (the coordinator's and the runners' groups are untouched)."""

    def __init__(self, bus_uri: str):
        from nbml_server.adapters.registry import open_event_bus
        from nbml_server.ports.event_bus import TRIAL_OUTCOMES_TOPIC

        self.bus = open_event_bus(bus_uri)
        self.group = f"bench-outcomes-{uuid.uuid4().hex[:8]}"
        self.topic = TRIAL_OUTCOMES_TOPIC
        self.subscription = self.bus.subscribe(self.topic, self.group)
        self.job_name = ""
        self.seen: list[tuple[float, str]] = []  # (monotonic arrival, error) of the job's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        from nbml.v1 import events_pb2

        while not self._stop.is_set():
            for message in self.subscription.poll(0.2, max_messages=100):
                outcome = events_pb2.TrialOutcome.FromString(message.value)
                if outcome.training_job == self.job_name:
                    self.seen.append((time.monotonic(), outcome.error))

    def wait_until_subscribed(self) -> None:
        wait_for_members(self.bus, self.group, self.topic, 1, "the outcome observer")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.subscription.close()
        self.bus.close()


def cancel_once(client, uploaded_name: str, dataset: suite.Dataset, bus_uri: str,
                cancel_after: int) -> Cancellation:
    """Starts a long job, cancels it after `cancel_after` trials, times what stops."""
    from nbml.client import job_state_to_str

    result = Cancellation()
    observer = OutcomeObserver(bus_uri)
    try:
        observer.wait_until_subscribed()
        job = client.train(uploaded_name, dataset.target, budget_seconds=CANCEL_BUDGET_SECONDS)
        job_id = job.name.split("/")[-1]
        observer.job_name = job.name
        for update in client.watch_job(job_id):
            if update.progress.trials_completed >= cancel_after:
                result.trials_before = update.progress.trials_completed
                break
        cancelled_at = time.monotonic()
        client.cancel_job(job_id)

        def on_update(update) -> None:
            if update.progress.stage == "refitting" and result.search_stopped is None:
                result.search_stopped = time.monotonic() - cancelled_at
        final = client.wait_for_job(job_id, on_update=on_update, timeout=READY_SECONDS)
        result.job_cancelled = time.monotonic() - cancelled_at
        result.state = job_state_to_str(final.state) or ""
        # A measurement window, not a readiness wait: whatever runs on shows up in it.
        time.sleep(max(0.0, cancelled_at + CANCEL_WINDOW_SECONDS - time.monotonic()))
        after = [(at - cancelled_at, error) for at, error in observer.seen if at > cancelled_at]
        result.outcomes_after = len(after)
        result.stopped_by_cancel = sum("cancelled" in error for _, error in after)
        result.last_outcome = max((at for at, _ in after), default=None)
        result.models = len(client.models(job_id)) if result.state == "cancelled" else 0
    finally:
        observer.close()
    return result


def train_once(run: Run, cluster, dataset: suite.Dataset, budget: int, workdir: pathlib.Path,
               index: int, cancel_after: int = 0) -> Run:
    from deploy.envoy.process import free_port
    from nbml.client import Client, job_state_to_str
    from nbml_server.adapters.registry import open_table_store
    from nbml_server.launcher import LocalPlatform

    name = f"bench_fanout_{index}_{int(time.time())}"
    env = {**cluster.settings_env(), "NBML_STORE": cluster.cassandra.uri(name),
           "NBML_BLOBS": cluster.gcs.uri(name.replace("_", "-")),
           "NBML_TRIAL_FANOUT": "true" if run.fanout else "false", "NBML_LOG_LEVEL": "WARNING",
           "NBML_TRIAL_RUNNERS": str(run.runners_per_worker)}
    home = workdir / name
    with LocalPlatform(home, http_port=free_port(), workers=run.workers, env=env) as platform:
        if run.fanout:
            log.info("%s: runners ready in %.1f s", run.label,
                     wait_for_runners(env["NBML_BUS"], run.runners))
        with Client(platform.address, timeout=900) as client:
            client.sign_up("bench", PASSWORD)
            path = workdir / f"{dataset.name}.csv"
            dataset.split[0].to_csv(path, index=False)
            uploaded = client.upload_dataset(path, name=path.name)
            trace = []
            started = time.monotonic()
            job = client.train(uploaded.name, dataset.target, budget_seconds=budget)
            final = client.wait_for_job(job.name, on_update=lambda j: trace.append(
                (j.progress.stage, j.progress.elapsed_seconds, j.progress.trials_completed)),
                timeout=20 * budget + 300)
            run.job_seconds = time.monotonic() - started
            run.state = job_state_to_str(final.state) or ""
            refit = next((t for t in trace if t[0] == "refitting"), None)
            run.search_seconds = refit[1] if refit else final.progress.elapsed_seconds
            run.trials = refit[2] if refit else final.progress.trials_completed
            store = open_table_store(env["NBML_STORE"])
            try:
                rows = store.scan("trials_by_job", job.name.split("/")[-1], limit=100_000)
            finally:
                store.close()
            run.by_worker = dict(Counter(row.get("worker") or "(lost)" for _, row in rows))
            run.fit_seconds = sum(row.get("fit_seconds") or 0.0 for _, row in rows)
            if cancel_after and run.fanout:
                run.cancellation = cancel_once(client, uploaded.name, dataset, env["NBML_BUS"],
                                               cancel_after)
        failed = platform.failed_children()
        if failed:
            raise RuntimeError(f"platform processes exited: {failed} (logs in {home / 'logs'})")
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--runners", type=int, default=1, help="trial runners per worker")
    parser.add_argument("--dataset", default="churn", choices=sorted(suite.DATASETS))
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--inline", action="store_true",
                        help="also one worker without the fan-out (trials in its thread)")
    parser.add_argument("--cancel-after", type=int, default=5,
                        help="trials a second job finishes before it is cancelled")
    parser.add_argument("--no-cancel", action="store_true",
                        help="do not measure cancellation")
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="where the cluster and platforms keep their data (default: a "
                             "temporary folder, removed at the end)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    for noisy in ("kafka", "cassandra"):  # connection chatter, protocol downgrades
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from deploy.local_cluster.stack import LocalCluster

    per = "" if args.runners == 1 else f" x {args.runners} runners"
    runs = [Run(f"{n} worker{'s' if n > 1 else ''}{per}", n, True, args.runners)
            for n in map(int, args.workers.split(",")) for _ in range(args.repeats)]
    if args.inline:
        runs.insert(0, Run("1 worker, no fan-out", 1, False))
    dataset = suite.DATASETS[args.dataset]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nbml-bench-fanout-") as scratch:
        workdir = args.workdir or pathlib.Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with LocalCluster(workdir / "cluster") as cluster:
            log.info("local cluster up in %.1f s", time.monotonic() - started)
            for index, run in enumerate(runs):
                train_once(run, cluster, dataset, args.budget, workdir, index,
                           0 if args.no_cancel else args.cancel_after)
                log.info("%s: %d trials in %.1f s of search (%.2f trials/s), %s", run.label,
                         run.trials, run.search_seconds, run.trials_per_second, run.by_worker)
    report = {"commit": run_info.git_commit(),
              "dataset": dataset.name, "rows": len(dataset.split[0]), "budget": args.budget,
              "cores": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "runs": [{"label": r.label, "workers": r.workers, "fanout": r.fanout,
                        "runners": r.runners if r.fanout else 0,
                        "state": r.state, "trials": r.trials,
                        "search_seconds": round(r.search_seconds, 2),
                        "trials_per_second": round(r.trials_per_second, 3),
                        "job_seconds": round(r.job_seconds, 1), "busy": round(r.busy, 3),
                        "trials_by_worker": r.by_worker,
                        "cancellation": rounded(r.cancellation)}
                       for r in runs]}
    if args.json:
        print(json.dumps(report))
        return
    print(f"\ncommit {report['commit']}: {dataset.name} ({report['rows']} training rows), "
          f"budget {args.budget} s, "
          f"{report['cores']} cores, load average before {report['load_average_before'][0]}, "
          f"after {report['load_average_after'][0]}")
    print(f"{'run':<24}{'state':<11}{'trials':>7}{'search s':>10}{'trials/s':>10}"
          f"{'busy':>7}  trials by runner")
    for r in runs:
        shares = ", ".join(str(v) for _, v in sorted(r.by_worker.items()))
        print(f"{r.label:<24}{r.state:<11}{r.trials:>7}{r.search_seconds:>10.1f}"
              f"{r.trials_per_second:>10.2f}{r.busy:>7.0%}  {shares}")
    cancelled = [r for r in runs if r.cancellation is not None]
    if cancelled:
        print("\ncancelled after N trials; seconds from the cancel request until the search "
              "stopped, the job was CANCELLED, the last running trial reported")
        print(f"{'run':<24}{'state':<11}{'N':>4}{'search':>8}{'job':>7}{'last trial':>12}"
              f"  outcomes after (cut short)  models kept")
        for r in cancelled:
            c = r.cancellation
            print(f"{r.label:<24}{c.state:<11}{c.trials_before:>4}{seconds(c.search_stopped):>8}"
                  f"{seconds(c.job_cancelled):>7}{seconds(c.last_outcome):>12}"
                  f"  {c.outcomes_after} ({c.stopped_by_cancel}){'':<20}{c.models}")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rounded(cancellation: Cancellation | None) -> dict | None:
    if cancellation is None:
        return None
    return {k: round(v, 3) if isinstance(v, float) else v
            for k, v in asdict(cancellation).items()}


if __name__ == "__main__":
    main()
