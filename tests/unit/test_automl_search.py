"""AutoML: run_search validation, results and trial bookkeeping (no timing asserts:
time is driven by a fake clock where it matters)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from nbml_server.domain.automl import (LEARNERS, Deadline, Learner, LearnerContext, SearchRequest,
                                       predict_frame, run_search)
from nbml_server.domain.automl.search import prepare_trials
from nbml_server.domain.automl.tasks import sort_key
from nbml_server.errors import InvalidArgument


def classification_frame(n=160, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    colour[::9] = None
    y = np.where(x1 + 0.5 * x2 + (colour == "red") + rng.normal(scale=0.3, size=n) > 0.3,
                 "good", "bad")
    return pd.DataFrame({"x1": x1, "x2": x2, "colour": pd.Series(colour, dtype="str"),
                         "flag": rng.choice([True, False], n),
                         "day": pd.date_range("2022-01-01", periods=n).strftime("%Y-%m-%d"),
                         "label": y})


class FakeClock:
    def __init__(self, step=0.0):
        self.now = 0.0
        self.step = step

    def __call__(self):
        self.now += self.step
        return self.now


class Exploding(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        raise RuntimeError("boom")


BROKEN = Learner("broken", frozenset({"classification"}), "scaled", 1.0,
                 defaults=lambda ctx: [{"x": 0.5}],
                 space=lambda s, ctx: {"x": s.float("x", 0.0, 1.0)},
                 build=lambda params, ctx: Exploding())


# ------------------------------------------------------------------------- validation

def test_unknown_target_column_lists_columns():
    with pytest.raises(InvalidArgument) as e:
        run_search(SearchRequest(classification_frame(), "nope", budget_seconds=5))
    assert e.value.reason == "UNKNOWN_TARGET_COLUMN"
    assert e.value.violations[0].field == "training_job.target_column"
    assert "x1" in e.value.message and "colour" in e.value.message


def test_no_feature_columns():
    frame = pd.DataFrame({"label": ["a", "b"] * 10})
    with pytest.raises(InvalidArgument) as e:
        run_search(SearchRequest(frame, "label", budget_seconds=5))
    assert e.value.reason == "NO_FEATURE_COLUMNS"


@pytest.mark.parametrize("budget", [0, -1, float("nan"), 10**6])
def test_bad_budget(budget):
    with pytest.raises(InvalidArgument) as e:
        run_search(SearchRequest(classification_frame(), "label", budget_seconds=budget))
    assert e.value.reason == "INVALID_BUDGET"
    assert e.value.violations[0].field == "training_job.budget_seconds"


def test_bad_metric_and_task_are_request_errors():
    with pytest.raises(InvalidArgument) as e:
        run_search(SearchRequest(classification_frame(), "label", metric="rmse", budget_seconds=5))
    assert e.value.reason == "UNKNOWN_METRIC"
    with pytest.raises(InvalidArgument) as e:
        run_search(SearchRequest(classification_frame(), "label", task="regression",
                                 budget_seconds=5))
    assert e.value.reason == "TARGET_NOT_NUMERIC"


# ---------------------------------------------------------------------- short searches

def test_short_search_on_mixed_data():
    frame = classification_frame()
    frame.loc[::10, "label"] = None  # rows without a target are dropped
    seen, progress = [], []
    result = run_search(
        # A trial cap, not the clock, ends it: every family gets its turn however
        # loaded the machine is.
        SearchRequest(frame, "label", budget_seconds=120, seed=1, max_trials=5,
                      families=["logistic_regression", "knn", "hist_gradient_boosting"]),
        on_trial=seen.append, on_progress=lambda n, best, stage: progress.append((n, best, stage)))

    assert result.task == "classification" and result.metric == "roc_auc"
    assert result.greater_is_better is True
    assert result.classes == ["bad", "good"]
    assert result.feature_columns == ["x1", "x2", "colour", "flag", "day"]
    assert result.column_types == {"x1": "numeric", "x2": "numeric", "colour": "categorical",
                                   "flag": "boolean", "day": "datetime"}
    assert result.trials == seen and len(seen) >= 3
    assert [t.number for t in result.trials] == list(range(len(result.trials)))
    scored = [t for t in result.trials if t.cv_score is not None]
    assert {t.family for t in scored} == {"logistic_regression", "knn", "hist_gradient_boosting"}
    assert all(0.5 < t.cv_score <= 1 and t.cv_score_std >= 0 and t.fit_seconds >= 0
               for t in scored)
    assert not result.stopped_early and result.stop_reason == "max_trials"

    # Holdout: 20% of the 144 labelled rows, target column kept; the rest trained on.
    assert len(result.holdout_frame) == 29 and "label" in result.holdout_frame
    assert result.holdout_frame["label"].notna().all()
    assert result.train_rows == 144 - 29

    # Models: best trial of each family, best first, refit and usable (an ensemble
    # of trials, when offered, beats them), unless a simple model within the noise of
    # the winner was moved first (and says why).
    singles = [m for m in result.models if m.family != "ensemble"]
    assert 1 <= len(singles) <= 3 and len(result.models) - len(singles) <= 1
    moved = result.models[0].ranking_note != ""
    assert not moved or result.models[0].family == "logistic_regression"
    scores = [m.cv_score for m in (result.models[1:] if moved else result.models)]
    assert scores == sorted(scores, reverse=True)
    assert len({m.family for m in singles}) == len(singles)
    best = max(singles, key=lambda m: m.cv_score)
    assert best.cv_score == max(t.cv_score for t in scored)
    assert result.trials[best.trial_number].params == best.params
    out = predict_frame(best.pipeline, result.holdout_frame.drop(columns=["label"]),
                        result.task)
    assert out["classes"] == result.classes and out["probabilities"].shape == (29, 2)

    stages = [s for _, _, s in progress]
    assert stages[0] == "searching" and stages[-2:] == ["refitting", "done"]
    assert progress[-1][0] == len(result.trials) and progress[-1][1] == best.cv_score
    if result.best.family == "ensemble":
        assert result.best.trial_number == -1 and result.best.cv_score > best.cv_score


def test_short_regression_search():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=120), "b": rng.choice(["x", "y"], 120)})
    frame["target"] = 3 * frame["a"] + (frame["b"] == "x") + rng.normal(scale=0.1, size=120)
    result = run_search(SearchRequest(frame, "target", budget_seconds=5, max_trials=4,
                                      families=["ridge", "hist_gradient_boosting"]))
    assert result.task == "regression" and result.metric == "rmse"
    assert result.greater_is_better is False and result.classes == []
    assert len(result.trials) == 4 and result.stop_reason == "max_trials"
    singles = [m for m in result.models if m.family != "ensemble"]
    assert singles[0].family == "ridge"  # the data is linear
    assert [m.cv_score for m in result.models] == sorted(m.cv_score for m in result.models)
    assert result.best.cv_score < 0.5
    values = predict_frame(result.best.pipeline, result.holdout_frame, "regression")["values"]
    assert values.shape == (len(result.holdout_frame),)


def test_failed_trial_is_recorded_and_search_goes_on():
    learners = {"broken": BROKEN, "logistic_regression": LEARNERS["logistic_regression"]}
    result = run_search(SearchRequest(classification_frame(), "label", budget_seconds=5,
                                      max_trials=4), learners=learners)
    assert [t.number for t in result.trials] == [0, 1, 2, 3]
    broken = [t for t in result.trials if t.family == "broken"]
    assert broken and all(t.cv_score is None and "boom" in t.error for t in broken)
    assert any(t.cv_score is not None for t in result.trials)
    assert [m.family for m in result.models if m.family != "ensemble"] == ["logistic_regression"]


def test_should_stop_between_trials():
    calls = []

    def on_trial(trial):
        calls.append(trial)

    result = run_search(
        SearchRequest(classification_frame(), "label", budget_seconds=30,
                      families=["logistic_regression", "knn"]),
        on_trial=on_trial, should_stop=lambda: len(calls) >= 2)
    assert len(result.trials) == 2
    assert result.stopped_early and result.stop_reason == "cancelled"
    # The best finished trial becomes the job's one model; no time goes to the others.
    best = min((t for t in result.trials if t.cv_score is not None),
               key=lambda t: sort_key(t.cv_score, result.metric))
    assert [(m.family, m.trial_number) for m in result.models] == [(best.family, best.number)]


def test_should_stop_between_folds_abandons_the_trial():
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) >= 3  # loop check, fold 1, then stop before fold 2

    result = run_search(SearchRequest(classification_frame(), "label", budget_seconds=30,
                                      families=["logistic_regression"]),
                        should_stop=should_stop)
    assert len(result.trials) == 1
    assert result.trials[0].cv_score is None and "cancelled" in result.trials[0].error
    assert result.stopped_early and result.models == []


def test_no_trial_starts_after_the_deadline():
    clock = FakeClock()

    def on_trial(trial):
        if trial.number == 2:
            clock.now += 1000  # the budget is long gone

    result = run_search(SearchRequest(classification_frame(), "label", budget_seconds=10,
                                      families=["logistic_regression", "knn"]),
                        on_trial=on_trial, clock=clock)
    assert len(result.trials) == 3
    assert result.stop_reason == "deadline" and not result.stopped_early
    # The refits come after the search, timed on their own.
    assert result.search_seconds >= 1000 and result.refit_seconds < 10
    assert {m.family for m in result.models} == {"logistic_regression", "knn"}
    assert result.best.cv_score == max(t.cv_score for t in result.trials)


def test_past_the_refit_allowance_only_the_best_model_is_refit():
    clock = FakeClock()

    def on_progress(trials_completed, best_score, stage):
        if stage == "refitting":
            clock.now += 1000  # the refit allowance (a quarter of the budget) is gone

    result = run_search(SearchRequest(classification_frame(), "label", budget_seconds=10,
                                      families=["logistic_regression", "knn"], max_trials=3),
                        on_progress=on_progress, clock=clock)
    assert len(result.models) == 1
    assert result.best.cv_score == max(t.cv_score for t in result.trials)
    assert result.refit_seconds >= 1000


def test_first_trial_runs_even_when_time_is_short():
    # Every clock reading is 5 s later: the budget runs out during the first trial,
    # which keeps the folds it finished so that there is a model.
    result = run_search(SearchRequest(classification_frame(), "label", budget_seconds=1,
                                      families=["logistic_regression", "knn"]),
                        clock=FakeClock(step=5.0))
    assert len(result.trials) == 1
    trial = result.trials[0]
    assert trial.error is None and 1 <= trial.folds < 5 and trial.cv_score is not None
    assert len(result.models) == 1


def test_deadline_with_fake_clock():
    clock = FakeClock()
    deadline = Deadline(10, clock=clock)
    assert deadline.remaining() == 10 and not deadline.expired()
    clock.now = 4
    assert deadline.elapsed() == 4 and deadline.remaining() == 6
    clock.now = 12
    assert deadline.expired() and deadline.remaining() == 0


def test_too_few_rows_and_duplicate_columns():
    frame = classification_frame(9)
    frame.loc[0, "label"], frame.loc[1, "label"] = "good", "bad"
    with pytest.raises(InvalidArgument) as e:
        run_search(SearchRequest(frame, "label", budget_seconds=5))
    assert e.value.reason == "TOO_FEW_ROWS"
    frame = pd.DataFrame([[1, 2, "a"], [3, 4, "b"]], columns=["x", "x", "label"])
    with pytest.raises(InvalidArgument) as e:
        run_search(SearchRequest(frame, "label", budget_seconds=5))
    assert e.value.reason == "DUPLICATE_COLUMNS"


# -- initial parameters -----------------------------------------------------------------

def test_initial_params_set_the_family_s_first_configuration_in_its_types():
    from nbml_server.domain.automl.search import initial_configurations

    ctx = LearnerContext(task="classification", n_rows=500, n_classes=2, min_class_count=100)
    learners = {name: LEARNERS[name] for name in ("random_forest", "logistic_regression")}
    configs = initial_configurations({"random_forest.n_estimators": "300",
                                      "random_forest.max_features": "0.5",
                                      "logistic_regression.C": "10"}, learners, ctx)
    assert configs["random_forest"] == {**LEARNERS["random_forest"].defaults(ctx)[0],
                                        "n_estimators": 300, "max_features": 0.5}
    assert configs["logistic_regression"]["C"] == 10.0
    assert isinstance(configs["logistic_regression"]["C"], float)

    for params, field, text in [
            ({"random_forest.n_estimators": "3.5"}, "random_forest.n_estimators", "whole number"),
            ({"random_forest.trees": "3"}, "random_forest.trees", "no parameter 'trees'"),
            ({"knn.n_neighbors": "3"}, "knn.n_neighbors", "not in this search"),
            ({"logistic_regression.C": "big"}, "logistic_regression.C", "expected a number")]:
        with pytest.raises(InvalidArgument) as caught:
            initial_configurations(params, learners, ctx)
        assert caught.value.violations[0].field == f"training_job.initial_params[{field}]"
        assert text in caught.value.violations[0].description


def test_a_search_starts_from_the_initial_params():
    result = run_search(SearchRequest(classification_frame(200), "label", families=["random_forest"],
                                      max_trials=1, initial_params={"random_forest.n_estimators": "7"}))
    [trial] = result.trials
    assert trial.params["n_estimators"] == 7
    assert len(result.best.pipeline.named_steps["model"].estimators_) == 7


def three_class_frame(n=150, seed=0):
    frame = classification_frame(n, seed)
    frame["label"] = np.where(frame["x1"] > 0.8, "high", frame["label"])
    return frame


def test_discriminant_analysis_is_searched_on_two_classes_only_when_named():
    def searched(frame, families=None):
        return set(prepare_trials(SearchRequest(frame, "label", families=families)).learners)

    assert {"lda", "qda"} <= searched(three_class_frame())
    assert not {"lda", "qda"} & searched(classification_frame())
    assert searched(classification_frame(), ["qda", "logistic_regression"]) == {
        "qda", "logistic_regression"}


def test_discriminant_analysis_fits_classes_with_fewer_rows_than_columns():
    frame = three_class_frame(60)  # ~20 rows a class; one-hot day columns: ~50 columns
    result = run_search(SearchRequest(frame, "label", families=["lda", "qda"], max_trials=4,
                                      ensemble=False))
    assert [t.error for t in result.trials] == [None] * 4
    proba = result.best.pipeline.predict_proba(frame.drop(columns=["label"]))
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1)
