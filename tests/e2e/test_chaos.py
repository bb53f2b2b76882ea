"""Bounded chaos: under a load of uploads, training jobs and predictions through Envoy, a
worker, a predictor replica and the dataset service are each killed (SIGKILL) three
times on schedules seeded per kind (side by side, so kills of different kinds overlap)
and restarted as a supervisor would, each back in service before its next kill.
Afterwards nothing the client was told went missing: every acknowledged upload reads
back whole, every accepted job ended (succeeded with its best model there, or failed
with a reason), no job started again but after its worker died, not one prediction
failed (one replica was up at all times), and every service is healthy."""

import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from deploy.envoy.process import free_port
from nbml.client import TERMINAL_JOB_STATES, Client
from nbml.errors import NbmlError
from nbml.v1 import trainer_service_pb2
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.launcher import LocalPlatform
from tests.e2e.background_calls import CallsInBackground
from tests.e2e.small_model import deploy_small_model

pytestmark = pytest.mark.e2e

SEED = 6
ROUNDS = 3  # kills of a worker, of a predictor replica and of the dataset service, each
# Pacing of each kind's kills, in predictions through Envoy (progress, not time): how
# many go by before a kill, and while the victim is down (before its restart).
CALM_PREDICTIONS = (20, 80)
DOWN_PREDICTIONS = (10, 40)
PREDICTION_CALLERS = 2  # so that calls are in flight when a replica dies
# Pacing of the load, not waiting for anything: the restarted processes (each imports
# scikit-learn: seconds of CPU) share the two cores with it.
PREDICTION_PAUSE_SECONDS = 0.05
UPLOAD_PAUSE_SECONDS = 0.5
JOB_CALLERS = 2  # jobs in flight at once: both workers busy when one dies
KINDS = ("worker", "predictor", "dataset")
RUNNING_JOB_WAIT_SECONDS = 30
# An interrupted job runs again from the start (up to three attempts), after the job
# it waits behind: a few 5-second jobs, on two shared cores.
JOBS_END_SECONDS = 120
HEALTHY_SECONDS = 60  # a restarted service back in Envoy's rotation, on a loaded machine
SUCCEEDED, FAILED = trainer_service_pb2.JOB_STATE_SUCCEEDED, trainer_service_pb2.JOB_STATE_FAILED
STATE_NAMES = trainer_service_pb2.JobState.Name


def training_frame(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    frame = pd.DataFrame({"x": rng.normal(size=rows), "z": rng.normal(size=rows)})
    frame["y"] = np.where(frame["x"] + frame["z"] > 0, "up", "down")
    return frame


@pytest.fixture(scope="module")
def chaotic(tmp_path_factory):
    home = tmp_path_factory.mktemp("nbml-chaos")
    with LocalPlatform(home, http_port=free_port(), workers=2,
                       predictor_replicas=2) as platform:
        yield platform


@pytest.fixture(scope="module")
def deployed(chaotic):
    """A signed-up client, a data set to train on, a deployed endpoint and rows for it."""
    frame = training_frame(np.random.default_rng(SEED), 60)
    with Client(chaotic.address) as client:
        client.sign_up("dora", "correct horse battery staple")
        model = deploy_small_model(client, frame, "chaos-training")
        yield client, model.dataset, model.endpoint, frame.drop(columns="y").head(3)


class Uploads(CallsInBackground):
    """Uploads small data sets one after another; `acknowledged`: data set name -> rows, for
    each upload the client was told succeeded; `failures`: what the others raised."""

    def __init__(self, client: Client):
        super().__init__(self._upload, callers=1)
        self._client = client
        self._rng = np.random.default_rng(SEED + 1)

    @property
    def acknowledged(self) -> dict[str, int]:
        return dict(self.results)

    def _upload(self) -> tuple[str, int]:
        rows = int(self._rng.integers(5, 50))
        try:
            dataset = self._client.upload_dataset(training_frame(self._rng, rows),
                                                  name=f"chaos-{rows}")
        finally:
            self.pause(UPLOAD_PAUSE_SECONDS)
        return dataset.name, rows


class TrainingJobs(CallsInBackground):
    """`callers` threads, each creating a small job and following it until it ends (or
    the load stops); `accepted`: the names of the jobs the client was told were created."""

    def __init__(self, client: Client, dataset: str, callers: int):
        super().__init__(self._train_and_follow, callers)
        self._client = client
        self._dataset = dataset
        self.accepted: list[str] = []

    def _train_and_follow(self) -> None:
        job = self._client.train(self._dataset, "y", budget_seconds=5, holdout_fraction=0,
                                 max_trials=2, families=["logistic_regression", "knn"])
        self.accepted.append(job.name)
        while (not self.pause(0.5)
               and self._client.get_job(job.name).state not in TERMINAL_JOB_STATES):
            pass


def job_records(platform: LocalPlatform, names: list[str]) -> list[dict]:
    """The stored records of the jobs (as the workers see them: with `attempt`, the
    number of times a worker started the job, and `worker`, "host:pid")."""
    store = SqliteTableStore(platform.home / "nbml.db")
    try:
        return [row for name in names
                if (row := store.get("jobs_by_id", name.removeprefix("trainingJobs/"), ""))]
    finally:
        store.close()


def workers_running_jobs(platform: LocalPlatform, jobs: TrainingJobs) -> list[str]:
    """The worker children that run one of the accepted jobs now, read from the job
    records (their `worker` is "host:pid")."""
    by_pid = {c.process.pid: c.name for c in platform.children if c.name.startswith("worker")}
    return sorted({by_pid[pid] for row in job_records(platform, list(jobs.accepted))
                   if row["state"] == "running"
                   and (pid := int(row["worker"].rpartition(":")[2])) in by_pid})


def poll_until(found: Callable[[], object], seconds: float):
    """`found()` once it is truthy, or its last value after `seconds`."""
    deadline = time.monotonic() + seconds
    delay = 0.05
    while not (value := found()) and time.monotonic() < deadline:
        time.sleep(delay)  # polling, not waiting for a fixed time
        delay = min(delay * 2, 0.5)
    return value


def victim_of(kind: str, platform: LocalPlatform, jobs: TrainingJobs,
              rng: random.Random) -> str:
    if kind == "dataset":
        return "dataset"
    if kind == "predictor":
        return rng.choice(["predictor-1", "predictor-2"])
    # A worker in the middle of a job, the case that matters.
    busy = poll_until(lambda: workers_running_jobs(platform, jobs), RUNNING_JOB_WAIT_SECONDS)
    return rng.choice(busy or ["worker-1", "worker-2"])


def in_rotation(platform: LocalPlatform, name: str) -> bool:
    """Whether Envoy sends requests to the child: its health check passed and it is not
    ejected."""
    child = next(c for c in platform.children if c.name == name)
    status, body = platform.envoy.admin_get("/clusters?format=json")
    assert status == 200, body
    [cluster] = [c for c in json.loads(body)["cluster_statuses"] if c["name"] == child.service]
    for host in cluster["host_statuses"]:
        address = host["address"]["socket_address"]
        if f"{address['address']}:{address['port_value']}" == child.address:
            health = host["health_status"]
            return health.get("eds_health_status") == "HEALTHY" and not any(
                value is True and key.startswith("failed") for key, value in health.items())
    raise AssertionError(f"Envoy does not know {name} at {child.address}")


def kill_and_restart(kind: str, platform: LocalPlatform, predictions: CallsInBackground,
                     jobs: TrainingJobs) -> list[tuple[str, float]]:
    """Kills a process of one kind ROUNDS times, on a schedule seeded per kind, each
    time restarting it and waiting until it serves again; (victim, seconds from the
    kill until it served again) for each kill."""
    rng = random.Random(f"{SEED}-{kind}")
    kills = []
    for _ in range(ROUNDS):
        predictions.wait_for_more(rng.randint(*CALM_PREDICTIONS))
        victim = victim_of(kind, platform, jobs, rng)
        killed_at = time.monotonic()
        platform.stop_child(victim, kill=True)
        predictions.wait_for_more(rng.randint(*DOWN_PREDICTIONS))
        platform.restart_child(victim)  # a worker is ready once it consumes
        if kind != "worker":
            # Back in Envoy's rotation before the next kill (of the other replica).
            assert poll_until(lambda: in_rotation(platform, victim), HEALTHY_SECONDS), (
                f"{victim} not back in rotation {HEALTHY_SECONDS} s after its restart")
        kills.append((victim, time.monotonic() - killed_at))
    return kills


def unfinished_jobs(client: Client, names: list[str]) -> dict[str, str]:
    """Job name -> state and stage, for the jobs that have not ended."""
    unfinished = {}
    for name in names:
        job = client.get_job(name)
        if job.state not in TERMINAL_JOB_STATES:
            unfinished[name] = f"{STATE_NAMES(job.state)} ({job.progress.stage})"
    return unfinished


def jobs_left_unfinished(client: Client, names: list[str], seconds: float) -> dict[str, str]:
    """The jobs that have not ended `seconds` from now ({} as soon as all have)."""
    deadline = time.monotonic() + seconds
    while (unfinished := unfinished_jobs(client, names)) and time.monotonic() < deadline:
        time.sleep(0.5)  # polling the jobs, not waiting for a fixed time
    return unfinished


def unreadable(client: Client, datasets: dict[str, int]) -> dict[str, str]:
    """Data set name -> what is wrong, for those of `datasets` (name -> rows) that cannot
    be read back whole: looked up, and previewed row for row."""
    problems = {}
    for name, rows in datasets.items():
        try:
            recorded = client.get_dataset(name).row_count
            previewed = len(client.preview_response(name, rows=rows).rows)
        except NbmlError as error:
            problems[name] = f"{error.code}: {error.message}"
            continue
        if (recorded, previewed) != (rows, rows):
            problems[name] = f"{rows} rows uploaded, {recorded} recorded, {previewed} previewed"
    return problems


def missing_best_models(client: Client, jobs: list) -> list[str]:
    """The succeeded jobs whose best model cannot be read (a second run of the job
    replaced the models of the first)."""
    missing = []
    for job in jobs:
        if job.state == SUCCEEDED:
            try:
                client.get_model(job.best_model)
            except NbmlError as error:
                missing.append(f"{job.name}: {job.best_model} {error.code}")
    return missing


def test_kills_under_load_lose_nothing_the_client_was_told(chaotic, deployed):
    client, training_dataset, endpoint, rows = deployed
    started = time.monotonic()

    def predict() -> None:
        if len(client.predict(endpoint, rows)) != len(rows):
            raise AssertionError("wrong number of predictions")
        time.sleep(PREDICTION_PAUSE_SECONDS)

    with (CallsInBackground(predict, callers=PREDICTION_CALLERS) as predictions,
          Uploads(client) as uploads, TrainingJobs(client, training_dataset, JOB_CALLERS) as jobs,
          ThreadPoolExecutor(len(KINDS)) as monkeys):
        # One schedule per kind, side by side: kills of different kinds overlap.
        kills = [kill for schedule in [monkeys.submit(kill_and_restart, kind, chaotic,
                                                      predictions, jobs) for kind in KINDS]
                 for kill in schedule.result()]
    chaos_seconds = time.monotonic() - started

    unfinished = jobs_left_unfinished(client, jobs.accepted, JOBS_END_SECONDS)
    final = [client.get_job(name) for name in jobs.accepted]
    print(f"chaos: {chaos_seconds:.0f} s, killed (and back after) "
          f"{', '.join(f'{victim} ({seconds:.0f} s)' for victim, seconds in kills)}; "
          f"{predictions.calls} predictions ({len(predictions.failures)} failed), "
          f"{len(uploads.acknowledged)} uploads acknowledged ({len(uploads.failures)} "
          f"failed: {sorted({f.code for f in uploads.failures})}), {len(final)} jobs "
          f"({sum(j.state == SUCCEEDED for j in final)} succeeded, "
          f"{sum(j.state == FAILED for j in final)} failed: "
          f"{sorted({j.error for j in final if j.state == FAILED})})")

    # Predict never failed: one replica was up at all times.
    assert predictions.failures == [], predictions.failures[:3]
    assert uploads.acknowledged and jobs.accepted
    assert unreadable(client, uploads.acknowledged) == {}, "acknowledged uploads lost"
    # An upload cut off by a kill was refused as unavailable; stored or not, never half.
    assert {failure.code for failure in uploads.failures} <= {"UNAVAILABLE"}, uploads.failures
    assert unreadable(client, {d.name: d.row_count for d in client.datasets()}) == {}
    assert jobs.failures == [], jobs.failures[:3]  # the trainer was never killed
    assert unfinished == {}, f"jobs stuck {JOBS_END_SECONDS} s after the chaos: {unfinished}"
    assert [(j.name, STATE_NAMES(j.state), j.error) for j in final
            if not (j.state == SUCCEEDED or (j.state == FAILED and j.error))] == []
    assert missing_best_models(client, final) == []
    # A job starts again only when the worker running it died: never while it runs.
    reruns = {row["job_id"]: row["attempt"] - 1 for row in job_records(chaotic, jobs.accepted)
              if row["attempt"] > 1}
    worker_kills = sum(victim.startswith("worker") for victim, _ in kills)
    assert sum(reruns.values()) <= worker_kills, (
        f"{worker_kills} workers killed, yet jobs started again {reruns}")

    assert not chaotic.failed_children()
    assert chaotic.envoy.unhealthy_clusters() == []
    assert client.upload_dataset(training_frame(np.random.default_rng(0), 10)).row_count == 10
    predict()
