"""Trials in a child process (issue 4): a trial over its memory or time share, or one
that crashes, fails on its own and the next trial runs; cancellation kills a running
trial at once. One evaluator (one child, replaced when a trial kills it) serves the
whole module: a fresh child is a fork of the preloaded forkserver."""

import functools
import time

import numpy as np
import pytest
from pydantic import ValidationError

from nbml_server.domain.automl import prepare_trials, run_search
from nbml_server.domain.automl.learners import N_JOBS
from nbml_server.domain.automl.trials import TrialSpec
from nbml_server.settings import Settings
from nbml_server.worker import trial_child
from nbml_server.worker.isolation import (CANCELLED, IsolatedEvaluator, ProcessExecutor,
                                          death_message)
from tests.unit import trial_isolation_helpers as helpers

MEMORY = 1024 * 2**20
GRACE = 0.5
LOGISTIC = {"C": 1.0, "class_weight": None}


@pytest.fixture(scope="module")
def evaluator():
    evaluator = IsolatedEvaluator(MEMORY, grace_seconds=GRACE)
    yield evaluator
    evaluator.close()


@pytest.fixture(scope="module")
def source():
    return functools.partial(helpers.breast_cancer)


def spec(family, params=None, *, key=0, max_seconds=60.0, **kwargs):
    return TrialSpec(key=key, family=family, params=params or {}, rung=0,
                     max_seconds=max_seconds, **kwargs)


def test_a_trial_scores_as_it_does_in_process(evaluator, source):
    data = helpers.breast_cancer()
    for family, params in [("logistic_regression", LOGISTIC),
                           ("knn", {"n_neighbors": 5, "weights": "uniform"})]:
        trial = spec(family, params, keep_oof=True)
        outcome = evaluator.evaluate("bc", source, trial)
        expected = data.evaluate(trial)
        assert outcome.error is None
        assert outcome.scores == expected.scores and len(outcome.scores) == data.k
        assert np.array_equal(outcome.oof, expected.oof)


def test_a_trial_over_its_memory_share_fails_and_the_next_one_runs(evaluator, source):
    outcome = evaluator.evaluate("bc", source, spec("hog"))
    assert outcome.error == "exceeded its memory share (1024 MiB)"
    assert outcome.scores == []
    assert evaluator.evaluate("bc", source, spec("logistic_regression", LOGISTIC)).error is None


def test_a_trial_over_its_time_share_is_killed(evaluator, source):
    evaluator.evaluate("bc", source, spec("logistic_regression", LOGISTIC))  # data ready
    started = time.monotonic()
    outcome = evaluator.evaluate("bc", source, spec("sleep", max_seconds=0.5))
    assert outcome.error == "exceeded its time share (0.5 s)"
    assert 0.5 + GRACE <= time.monotonic() - started < 0.5 + GRACE + 2
    assert evaluator.evaluate("bc", source, spec("logistic_regression", LOGISTIC)).error is None


def test_cancellation_kills_a_trial_even_one_that_must_finish(evaluator, source):
    evaluator.evaluate("bc", source, spec("logistic_regression", LOGISTIC))
    # Well past max_seconds + GRACE: a trial that must finish is not killed for time.
    stop_at = time.monotonic() + 1.5

    def should_stop():
        return time.monotonic() >= stop_at

    outcome = evaluator.evaluate("bc", source, spec("sleep", max_seconds=0.1, must_finish=True),
                                 should_stop)
    assert outcome.error == CANCELLED
    assert time.monotonic() - stop_at < 2.0  # the product's promise; ~0.1 s in practice
    assert evaluator.evaluate("bc", source, spec("sleep"), lambda: True).error == CANCELLED


def test_a_crash_names_the_signal_and_the_next_trial_runs(evaluator, source):
    outcome = evaluator.evaluate("bc", source, spec("segfault"))
    assert outcome.error == "the trial's process was killed by SIGSEGV"
    assert evaluator.evaluate("bc", source, spec("logistic_regression", LOGISTIC)).error is None


def test_the_child_prepares_the_data_once_per_source_key(evaluator, tmp_path):
    def counting(name):
        path = tmp_path / name
        return str(path), functools.partial(helpers.breast_cancer, str(path))

    def calls(path):
        return open(path).read().count("called")

    a_file, a = counting("a")
    for key in range(2):
        assert evaluator.evaluate(a_file, a, spec("logistic_regression", LOGISTIC, key=key)
                                  ).error is None
    assert calls(a_file) == 1
    for name in ("b", "c"):  # the child keeps two: a is dropped
        path, source = counting(name)
        assert evaluator.evaluate(path, source, spec("logistic_regression", LOGISTIC)).error is None
    assert evaluator.evaluate(a_file, a, spec("logistic_regression", LOGISTIC)).error is None
    assert calls(a_file) == 2


def test_a_failing_source_is_a_failed_trial(evaluator):
    outcome = evaluator.evaluate("broken", helpers.failing_source, spec("logistic_regression"))
    assert outcome.error == "ValueError: no such data set"


def test_the_child_limits_its_thread_pools(evaluator, source):
    # Small data: one thread per trial (trials.cores), as run_search does in-process.
    error = evaluator.evaluate("bc", source, spec("probe")).error
    assert "pools=[1]" in error
    assert f"OMP_NUM_THREADS={N_JOBS}" in error and "ARROW_DEFAULT_MEMORY_POOL=system" in error
    assert trial_child.THREADS == N_JOBS


def test_a_death_under_a_memory_limit_is_told_as_memory():
    assert death_message(-9, MEMORY) == ("exceeded its memory share (1024 MiB): its process "
                                         "was killed by SIGKILL")
    assert death_message(1, MEMORY).endswith("its process exited with code 1")
    assert death_message(-9, None) == "the trial's process was killed by SIGKILL"
    assert death_message(-11, MEMORY) == "the trial's process was killed by SIGSEGV"


def test_a_search_runs_its_trials_through_the_process_executor(evaluator):
    request = helpers.request(families=["logistic_regression", "knn"], max_trials=4,
                              budget_seconds=60)
    result = run_search(request, executor=lambda data, should_stop: ProcessExecutor(
        evaluator, "search", functools.partial(prepare_trials, request)))
    assert len(result.trials) == 4
    assert all(t.error is None and t.folds == 5 for t in result.trials)
    assert result.best is not None


def test_closing_the_process_executor_kills_its_running_trial(evaluator, source):
    evaluator.evaluate("bc", source, spec("logistic_regression", LOGISTIC))
    executor = ProcessExecutor(evaluator, "bc", source)
    executor.submit(spec("sleep"))
    assert executor.collect(0.5) == []
    started = time.monotonic()
    executor.close()
    assert time.monotonic() - started < 2.0
    assert evaluator.evaluate("bc", source, spec("logistic_regression", LOGISTIC)).error is None


def test_the_trial_memory_and_runner_settings(monkeypatch):
    from nbml_server.settings import machine_cores, machine_memory_bytes

    assert Settings().trial_runner_count == machine_cores()  # one runner per core
    monkeypatch.setenv("NBML_TRIAL_RUNNERS", "1")
    assert Settings().trial_runner_count == 1
    # Half the machine, shared by the worker's trial processes.
    half = machine_memory_bytes() // 2 // 2**20
    assert Settings().trial_memory_mb == max(512, half)
    monkeypatch.setenv("NBML_TRIAL_RUNNERS", "4")
    assert Settings().trial_memory_mb == max(512, half // 4)
    monkeypatch.setenv("NBML_TRIAL_MEMORY_MB", "0")
    assert Settings().trial_memory_bytes is None
    monkeypatch.setenv("NBML_TRIAL_MEMORY_MB", "2048")
    assert Settings().trial_memory_bytes == 2048 * 2**20
    monkeypatch.setenv("NBML_TRIAL_MEMORY_MB", "100")
    with pytest.raises(ValidationError):
        Settings()
