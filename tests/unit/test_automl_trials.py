"""AutoML trials: rungs of successive halving, executors that run several trials at
once, and trials whose outcome never comes back (a worker died under them)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from nbml_server.domain.automl import SearchRequest, prepare_trials, run_search, trials
from nbml_server.domain.automl.trials import Rung, TrialSpec, rungs_for
from tests.unit.instant_executor import InstantExecutor


def frame(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    data = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    data["label"] = y
    return data


class ThreadedExecutor:
    """Runs trials on a thread pool of `capacity` threads (like workers would),
    optionally never answering for some of them."""

    def __init__(self, data, should_stop, capacity=2, lose=()):
        self.data, self.should_stop, self.capacity = data, should_stop, capacity
        self.lose = set(lose)
        self.pool = ThreadPoolExecutor(capacity)
        self.done, self.lock = [], threading.Condition()
        self.running = self.max_running = 0
        self.submitted = []

    def submit(self, spec):
        self.submitted.append(spec)
        if spec.key in self.lose:
            return
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.pool.submit(self._run, spec)

    def _run(self, spec):
        outcome = self.data.evaluate(spec, self.should_stop)
        with self.lock:
            self.running -= 1
            self.done.append(outcome)
            self.lock.notify_all()

    def collect(self, timeout_seconds):
        with self.lock:
            if not self.done:
                self.lock.wait(timeout_seconds)
            done, self.done = self.done, []
        return done

    def close(self):
        self.pool.shutdown(wait=True)


def test_rungs_only_on_large_or_wide_data():
    assert rungs_for(1_000, 5) == [Rung(None, 5)]
    assert rungs_for(1_000, 5, columns=64) == [Rung(None, 5)]
    assert rungs_for(50_000, 3) == [Rung(5_555, 1), Rung(16_666, 1), Rung(None, 3)]
    assert rungs_for(20_000, 3) == [Rung(2_222, 1), Rung(6_666, 1), Rung(None, 3)]
    # Many cells per fold: one fold of all rows first.
    assert rungs_for(1_200, 5, columns=400) == [Rung(None, 1), Rung(None, 5)]
    assert rungs_for(60_000, 5, columns=20) == [Rung(6_666, 1), Rung(20_000, 1), Rung(None, 1),
                                                Rung(None, 5)]
    assert rungs_for(1_200, 1, columns=400) == [Rung(None, 1)]


def test_trial_on_a_subsample_rung_uses_one_fold_of_fewer_rows(monkeypatch):
    monkeypatch.setattr(trials, "HALVING_FROM_ROWS", 900)
    monkeypatch.setattr(trials, "HALVING_MIN_ROWS", 100)
    data = prepare_trials(SearchRequest(frame(2_000), "label", holdout_fraction=0.2))
    assert [r.rows for r in data.rungs] == [142, 426, None]
    spec = TrialSpec(key=0, family="logistic_regression", params={"C": 1.0, "class_weight": None},
                     rung=0, max_seconds=60, keep_oof=True)
    outcome = data.evaluate(spec)
    assert outcome.error is None and len(outcome.scores) == 1
    assert outcome.oof is None  # only the full rung yields out-of-fold predictions
    full = data.evaluate(TrialSpec(**{**spec.__dict__, "rung": 2}))
    assert len(full.scores) == 5 and full.oof.shape == (1_600, 2)


def test_successive_halving_prunes_and_complete_trials_use_every_fold(monkeypatch):
    monkeypatch.setattr(trials, "HALVING_FROM_ROWS", 900)
    monkeypatch.setattr(trials, "HALVING_MIN_ROWS", 100)
    result = run_search(SearchRequest(frame(2_000), "label", budget_seconds=60, max_trials=14,
                                      families=["logistic_regression", "knn",
                                                "hist_gradient_boosting"]))
    assert len(result.trials) == 14
    pruned = [t for t in result.trials if t.pruned]
    complete = [t for t in result.trials if t.cv_score is not None]
    assert pruned and complete
    assert all(t.folds == 5 for t in complete)
    assert all(t.error.startswith("pruned") and t.cv_score is None for t in pruned)
    assert (result.best.cv_score == max(t.cv_score for t in complete)
            or result.best.family == "ensemble" or result.best.ranking_note)


def test_trials_run_two_at_a_time_on_a_parallel_executor():
    made = []

    def executor(data, should_stop):
        made.append(ThreadedExecutor(data, should_stop, capacity=2))
        return made[0]

    result = run_search(SearchRequest(frame(400), "label", budget_seconds=60, max_trials=8,
                                      families=["logistic_regression", "knn"]),
                        executor=executor)
    assert len(result.trials) == 8 and [t.number for t in result.trials] == list(range(8))
    assert made[0].max_running == 2
    assert result.best is not None and result.best.cv_score > 0.7


def test_a_trial_whose_outcome_never_comes_is_recorded_as_failed(monkeypatch):
    from nbml_server.domain.automl import search
    monkeypatch.setattr(search, "LOST_TRIAL_GRACE_SECONDS", 0.5)

    made = []

    def executor(data, should_stop):
        made.append(ThreadedExecutor(data, should_stop, capacity=2, lose={1}))
        return made[0]

    result = run_search(SearchRequest(frame(400), "label", budget_seconds=4,
                                      families=["logistic_regression", "knn"]),
                        executor=executor)
    # Declared lost after its time share and the grace, or given up at the drain limit,
    # whichever comes first (on a busy machine the other trial out may be given up too).
    lost = next(spec for spec in made[0].submitted if spec.key == 1)
    failed = [t for t in result.trials if t.error and t.error.startswith(("lost", "stopped"))]
    assert any(t.family == lost.family and t.params == lost.params for t in failed)
    assert len(failed) <= 2 and all(t.cv_score is None for t in failed)
    assert result.best is not None
    assert result.search_seconds < 4 * 1.1 + 1


class ScriptedExecutor(InstantExecutor):
    """Answers every spec at once with a fixed score per family; `slow` families
    report a fit time that leaves no room for their next rung."""

    def __init__(self, data, scores, slow=()):
        super().__init__(data)
        self.scores, self.slow = scores, set(slow)

    def outcome(self, spec):
        return trials.TrialOutcome(
            spec.key, spec.rung, spec.family, dict(spec.params),
            [self.scores[spec.family]] * self.data.rungs[spec.rung].folds,
            1_000.0 if spec.family in self.slow else 0.01)


def test_a_family_that_never_reached_the_full_rung_stands_in_with_its_partial_score(monkeypatch):
    monkeypatch.setattr(trials, "FOLD_RUNG_FROM_CELLS", 1)
    request = SearchRequest(frame(400), "label", budget_seconds=60, max_trials=2,
                            families=["logistic_regression", "knn"])
    result = run_search(request, executor=lambda data, stop: ScriptedExecutor(
        data, {"logistic_regression": 0.6, "knn": 0.9}, slow={"knn"}))
    knn = next(t for t in result.trials if t.family == "knn")
    assert knn.pruned and "no time left" in knn.error and "one fold" in knn.error
    # A better score on one fold beats a worse one on five: knn is refit and chosen.
    assert result.best.family == "knn" and result.best.cv_score == 0.9


class ComplementaryExecutor(InstantExecutor):
    """Trial 0 is sure of the first half of the rows and unsure of the rest; every
    later trial the other way round (and scores a little lower): the best ensemble
    needs trial 0 and a trial that is not its family's best."""

    def outcome(self, spec):
        y, classes = self.data.y, list(self.data.classes)
        sure = np.arange(len(y)) < len(y) // 2
        if spec.key > 0:
            sure = ~sure
        oof = np.full((len(y), 2), 0.5)
        truth = np.array([classes.index(v) for v in y])
        oof[sure, truth[sure]], oof[sure, 1 - truth[sure]] = 0.9, 0.1
        score = 0.8 if spec.key == 0 else 0.79
        return trials.TrialOutcome(spec.key, spec.rung, spec.family, dict(spec.params),
                                   [score] * 5, 0.01, oof=oof if spec.keep_oof else None)


def test_an_ensemble_member_that_is_not_its_family_best_is_refit_but_not_listed():
    result = run_search(SearchRequest(frame(400), "label", budget_seconds=60, max_trials=3,
                                      families=["logistic_regression"]),
                        executor=lambda data, stop: ComplementaryExecutor(data))
    assert [m.family for m in result.models] == ["ensemble", "logistic_regression"]
    members = {m["trial_number"] for m in result.models[0].params["members"]}
    assert 0 in members and members - {0}  # the family's best and another trial
    assert result.models[1].trial_number == 0
    assert result.models[0].cv_score > 0.8
    predictions = result.models[0].pipeline.predict_proba(frame(50, seed=1).drop(columns="label"))
    assert predictions.shape == (50, 2)
