"""Trials fanned out over the bus: the coordinator's executor and the workers' trial
runner, on the real embedded adapters (SQLite bus and tables, a blob folder)."""

import dataclasses
import threading
import time

import numpy as np
import pandas as pd
import pytest

from nbml.v1 import events_pb2 as pb
from nbml_server.adapters.local_blob_store import LocalBlobStore
from nbml_server.adapters.sqlite_event_bus import SqliteEventBus
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.domain.automl import prepare_trials, run_search
from nbml_server.domain.automl.trials import TrialSpec
from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.jobs import RUNNING, SUCCEEDED, Jobs
from nbml_server.platform.convert import timestamp
from nbml_server.ports.event_bus import TRIAL_OUTCOMES_TOPIC, TRIALS_TOPIC
from nbml_server.worker import trial_fanout
from nbml_server.worker.runner import search_request
from nbml_server.worker.trial_fanout import (TRIAL_RUNNERS_GROUP, BusTrialExecutor,
                                             TrialDataCache, encode_request, fanout_executor,
                                             oof_folder)
from nbml_server.worker.isolation import SHUTTING_DOWN, IsolatedEvaluator
from nbml_server.worker.trial_runner import DataSource, TrialRunner, skip_reason

LOGISTIC = {"C": 1.0, "class_weight": None}
FOREST = {"n_estimators": 30, "max_features": "sqrt", "min_samples_leaf": 1}


def frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    data = pd.DataFrame(X, columns=["a", "b", "c"])
    data["label"] = np.where(X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=n) > 0,
                             "yes", "no")
    return data


class LaneBus:
    """The SQLite bus, recording the lanes it is given and claiming `members` trial
    runners (the SQLite bus never has more than one)."""

    def __init__(self, bus, members=None):
        self.bus, self.members, self.lanes = bus, members, []

    def publish(self, topic, key, value, *, lane=None):
        if topic == TRIALS_TOPIC:
            self.lanes.append(lane)
        self.bus.publish(topic, key, value, lane=lane)

    def subscribe(self, topic, group):
        return self.bus.subscribe(topic, group)

    def group_members(self, group, topic):
        if self.members is not None:
            return self.members
        return self.bus.group_members(group, topic)


@pytest.fixture
def world(tmp_path):
    store, blobs = SqliteTableStore(tmp_path / "db.sqlite"), LocalBlobStore(tmp_path / "blobs")
    bus = SqliteEventBus(tmp_path / "bus.db")
    datasets, jobs = DatasetCatalog(store, blobs), Jobs(store)
    dataset = datasets.add("usr_1", frame(), display_name="d", format="csv", size_bytes=1)
    job = jobs.create(user_id="usr_1", dataset_id=dataset["dataset_id"], target_column="label",
                      task="auto", metric="", budget_seconds=30)
    job = jobs.update(job["job_id"], lambda j: j.update(
        state=RUNNING, attempt=1, progress={**j["progress"], "stage": "searching"}))
    stopping = threading.Event()
    threads = []

    def start_runner(name="runner-1", bus_=bus, **kwargs):
        runner = TrialRunner(bus_, blobs, jobs, datasets, worker_name=name, **kwargs)
        threads.append(runner.start(stopping))
        # Ready once it is in the group (so trials do not fall back to inline).
        deadline = time.monotonic() + 10
        while bus.group_members(TRIAL_RUNNERS_GROUP, TRIALS_TOPIC) < 1:
            assert time.monotonic() < deadline, "the trial runner did not subscribe"
            time.sleep(0.01)
        return runner

    store_uris = (f"sqlite:///{tmp_path / 'db.sqlite'}", f"file://{tmp_path / 'blobs'}")
    world = dataclasses.make_dataclass("World", ["store", "blobs", "bus", "datasets", "jobs",
                                                 "job", "start_runner", "store_uris"])(
        store, blobs, bus, datasets, jobs, job, start_runner, store_uris)
    yield world
    stopping.set()
    for thread in threads:
        thread.join(10)
    bus.close()


def request_of(world, **overrides):
    return dataclasses.replace(search_request(world.job, world.datasets), **overrides)


def test_a_search_runs_its_trials_on_the_runner_and_gets_their_oof(world):
    world.start_runner("runner-1")
    request = request_of(world, max_trials=6)
    result = run_search(request, executor=fanout_executor(world.bus, world.blobs, world.job))
    assert len(result.trials) == 6 and result.models
    assert {t.worker for t in result.trials} == {"runner-1"}
    assert all(t.error is None for t in result.trials)
    assert world.blobs.list(f"users/usr_1/jobs/{world.job['job_id']}/") == []


def test_oof_predictions_travel_through_the_blob_store(world):
    world.start_runner()
    data = prepare_trials(request_of(world))
    executor = BusTrialExecutor(world.bus, world.blobs, world.job, data)
    spec = TrialSpec(key=3, family="logistic_regression", params=LOGISTIC, rung=0,
                     max_seconds=60, keep_oof=True)
    executor.submit(spec)
    [outcome] = collect_until(executor, 1)
    expected = data.evaluate(spec)
    assert outcome.worker == "runner-1" and outcome.error is None
    np.testing.assert_allclose(outcome.oof, expected.oof)
    np.testing.assert_allclose(outcome.scores, expected.scores)
    assert world.blobs.list(oof_folder("usr_1", world.job["job_id"], 1)) == []
    executor.close()


def test_a_log_loss_trial_s_temperature_travels_with_its_outcome(world):
    job = world.jobs.update(world.job["job_id"], lambda j: j.update(metric="log_loss"))
    world.start_runner()
    data = prepare_trials(dataclasses.replace(search_request(job, world.datasets)))
    executor = BusTrialExecutor(world.bus, world.blobs, job, data)
    # Big leaves make the forest's probabilities timid: scaling clearly pays (calibration).
    spec = TrialSpec(key=4, family="random_forest", params={**FOREST, "min_samples_leaf": 40},
                     rung=0, max_seconds=60, keep_oof=True)
    executor.submit(spec)
    [outcome] = collect_until(executor, 1)
    expected = data.evaluate(spec)
    assert outcome.error is None and expected.temperature != 1.0
    assert outcome.temperature == pytest.approx(expected.temperature)
    np.testing.assert_allclose(outcome.scores, expected.scores)
    executor.close()


def collect_until(executor, n, timeout=30.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += executor.collect(0.2)
    return got


def test_trials_on_two_cores_go_out_one_per_two_runners(world):
    data = prepare_trials(request_of(world))
    data.ctx = dataclasses.replace(data.ctx, n_jobs=2)  # as on larger data
    assert BusTrialExecutor(LaneBus(world.bus, members=2), world.blobs, world.job,
                            data).capacity == 1
    assert BusTrialExecutor(LaneBus(world.bus, members=5), world.blobs, world.job,
                            data).capacity == 2


def test_trials_go_out_on_the_least_busy_lane(world):
    bus = LaneBus(world.bus, members=2)
    data = prepare_trials(request_of(world))
    executor = BusTrialExecutor(bus, world.blobs, world.job, data)
    assert executor.capacity == 2
    specs = [TrialSpec(key=k, family="logistic_regression", params=LOGISTIC, rung=0,
                       max_seconds=60) for k in range(4)]
    executor.submit(specs[0])
    executor.submit(specs[1])
    assert bus.lanes == [0, 1]
    answer(world, executor, specs[1])  # lane 1 is free again, lane 0 still busy
    assert [o.key for o in collect_until(executor, 1)] == [1]
    executor.submit(specs[2])
    assert bus.lanes == [0, 1, 1]
    executor.close()


def answer(world, executor, spec, *, attempt=1, oof_blob="", worker="elsewhere"):
    world.bus.publish(TRIAL_OUTCOMES_TOPIC, world.job["job_id"], pb.TrialOutcome(
        training_job=f"trainingJobs/{world.job['job_id']}", user_id="usr_1", attempt=attempt,
        key=spec.key, rung=spec.rung, scores=[0.5], fit_seconds=0.1, worker=worker,
        oof_blob=oof_blob).SerializeToString())


def test_duplicates_strays_and_other_attempts_are_dropped(world):
    data = prepare_trials(request_of(world))
    executor = BusTrialExecutor(LaneBus(world.bus, members=1), world.blobs, world.job, data)
    spec = TrialSpec(key=0, family="logistic_regression", params=LOGISTIC, rung=0,
                     max_seconds=60)
    executor.submit(spec)
    folder = oof_folder("usr_1", world.job["job_id"], 1)
    world.blobs.put(folder + "0-dup.npy", trial_fanout.encode_array(np.zeros(3)))
    answer(world, executor, spec, attempt=2)  # another attempt's
    answer(world, executor, dataclasses.replace(spec, key=9))  # never asked
    answer(world, executor, spec, worker="first")
    answer(world, executor, spec, worker="second", oof_blob=folder + "0-dup.npy")
    got = collect_until(executor, 1)
    got += executor.collect(0.3)
    assert [(o.key, o.worker) for o in got] == [(0, "first")]
    assert world.blobs.list(folder) == []  # the duplicate's blob went with it
    executor.close()


def test_without_any_runner_the_trials_run_in_the_coordinator(world):
    data = prepare_trials(request_of(world))
    bus = LaneBus(world.bus)  # the real count: nobody subscribed
    executor = BusTrialExecutor(bus, world.blobs, world.job, data, worker_name="me")
    assert executor.capacity == 1
    executor.submit(TrialSpec(key=0, family="logistic_regression", params=LOGISTIC, rung=0,
                              max_seconds=60))
    [outcome] = executor.collect(0.1)
    assert outcome.error is None and outcome.worker == "me" and bus.lanes == []
    executor.close()


# -- the runner


def publish_request(world, spec, *, attempt=1, sent=None):
    job = {**world.job, "attempt": attempt}
    value = encode_request(job, spec)
    if sent is not None:
        request = pb.TrialRequest.FromString(value)
        request.time.CopyFrom(timestamp(sent))
        value = request.SerializeToString()
    world.bus.publish(TRIALS_TOPIC, "k", value)


def outcomes(world, group="test-reader"):
    subscription = world.bus.subscribe(TRIAL_OUTCOMES_TOPIC, group)
    try:
        return [pb.TrialOutcome.FromString(m.value) for m in subscription.poll(0.2, 100)]
    finally:
        subscription.close()


def handle_next(world, runner, group="test-runner"):
    subscription = world.bus.subscribe(TRIALS_TOPIC, group)
    try:
        [message] = subscription.poll(1.0)
        handled = runner.handle(message)
        subscription.commit(message)
        return handled
    finally:
        subscription.close()


def test_the_runner_skips_requests_nobody_waits_for(world):
    runner = TrialRunner(world.bus, world.blobs, world.jobs, world.datasets, worker_name="r")
    spec = TrialSpec(key=0, family="logistic_regression", params=LOGISTIC, rung=0,
                     max_seconds=60)
    publish_request(world, spec, attempt=2)  # not the job's attempt
    assert handle_next(world, runner) is False
    publish_request(world, spec)
    world.jobs.update(world.job["job_id"], lambda j: j.update(state=SUCCEEDED))
    assert handle_next(world, runner) is False
    assert outcomes(world) == [] and runner.trials_run == 0


def test_skip_reasons():
    job = {"state": RUNNING, "attempt": 2, "cancel_requested": False,
           "progress": {"stage": "searching"}}
    assert skip_reason(job, 2) is None
    assert "attempt 1" in skip_reason(job, 1)
    assert "cancelled" in skip_reason({**job, "cancel_requested": True}, 2)
    assert "search has ended" in skip_reason({**job, "progress": {"stage": "refitting"}}, 2)
    assert "gone" in skip_reason(None, 2)


def test_a_request_that_waited_past_its_time_fails_at_once(world):
    runner = TrialRunner(world.bus, world.blobs, world.jobs, world.datasets, worker_name="r")
    spec = TrialSpec(key=4, family="logistic_regression", params=LOGISTIC, rung=0,
                     max_seconds=5)
    publish_request(world, spec, sent=time.time() - 8)
    assert handle_next(world, runner) is True
    [outcome] = outcomes(world)
    assert outcome.key == 4 and outcome.error.startswith("stopped: it waited 8.")
    assert outcome.queued_seconds >= 8 and runner.trials_run == 0
    # One that must finish runs anyway, and the wait is reported.
    publish_request(world, dataclasses.replace(spec, key=5, must_finish=True),
                    sent=time.time() - 8)
    assert handle_next(world, runner) is True
    [_, done] = outcomes(world, "test-reader-2")
    assert done.key == 5 and not done.error and len(done.scores) == 5


def test_the_runner_uses_the_coordinator_s_trial_data_and_stops_when_cancelled(world):
    cache = TrialDataCache()
    runner = TrialRunner(world.bus, world.blobs, world.jobs, world.datasets, worker_name="r",
                         cache=cache)
    data = prepare_trials(request_of(world))
    cache.put((world.job["job_id"], 1), data)
    seen = []
    original = data.evaluate

    def evaluate(spec, should_stop=None, **kwargs):
        seen.append(should_stop())
        world.jobs.update(world.job["job_id"], lambda j: j.update(cancel_requested=True))
        runner.records._seen.clear()  # the next check reads the record again
        return original(spec, should_stop, **kwargs)

    data.evaluate = evaluate
    publish_request(world, TrialSpec(key=0, family="logistic_regression", params=LOGISTIC,
                                     rung=0, max_seconds=60))
    assert handle_next(world, runner) is True
    [outcome] = outcomes(world)
    assert seen == [False]  # not cancelled when it started...
    assert outcome.error == "stopped: the search was cancelled"  # ...stopped after a fold
    assert len(outcome.scores) == 1


def test_a_runner_that_cannot_prepare_the_data_answers_with_an_error(world):
    runner = TrialRunner(world.bus, world.blobs, world.jobs, world.datasets, worker_name="r")
    world.datasets.delete("usr_1", world.job["dataset_id"])
    publish_request(world, TrialSpec(key=0, family="logistic_regression", params=LOGISTIC,
                                     rung=0, max_seconds=60))
    assert handle_next(world, runner) is True
    [outcome] = outcomes(world)
    assert outcome.error.startswith("the worker could not prepare the data: NotFound")


@pytest.fixture(scope="module")
def evaluator():
    evaluator = IsolatedEvaluator(1024 * 2**20)
    yield evaluator
    evaluator.close()


def test_an_isolated_trial_builds_its_data_in_the_child_and_answers_alike(world, evaluator):
    runner = TrialRunner(world.bus, world.blobs, world.jobs, world.datasets, worker_name="r",
                         isolated=evaluator, store_uris=world.store_uris)
    spec = TrialSpec(key=2, family="logistic_regression", params=LOGISTIC, rung=0,
                     max_seconds=60, keep_oof=True)
    publish_request(world, spec)
    assert handle_next(world, runner) is True
    [outcome] = outcomes(world)
    expected = prepare_trials(request_of(world)).evaluate(spec)
    assert not outcome.error and outcome.worker == "r"
    np.testing.assert_allclose(outcome.scores, expected.scores)
    oof = trial_fanout.decode_array(world.blobs.get(outcome.oof_blob))
    np.testing.assert_allclose(oof, expected.oof)
    # The child's source: the stores' URIs and the job attempt, nothing else.
    source = DataSource(*world.store_uris, world.job["job_id"], 1)
    assert len(source().y) == len(expected.oof)


class ClosingEvaluator:
    """Closed (the worker stops) while its trial runs."""

    def __init__(self, stopping):
        self.stopping = stopping

    def evaluate(self, source_key, source, spec, should_stop):
        self.stopping.set()
        return trial_fanout.TrialOutcome(spec.key, spec.rung, spec.family, spec.params, [],
                                         0.0, error=SHUTTING_DOWN)


def test_a_runner_stopped_mid_trial_leaves_it_to_another(world):
    stopping = threading.Event()
    runner = TrialRunner(world.bus, world.blobs, world.jobs, world.datasets, worker_name="r",
                         isolated=ClosingEvaluator(stopping), store_uris=world.store_uris)
    publish_request(world, TrialSpec(key=0, family="logistic_regression", params=LOGISTIC,
                                     rung=0, max_seconds=60))
    runner.run(stopping)  # returns once stopped
    assert outcomes(world) == []  # not answered...
    again = world.bus.subscribe(TRIALS_TOPIC, TRIAL_RUNNERS_GROUP)
    assert len(again.poll(1.0)) == 1  # ...nor committed: the next runner gets it
    again.close()
