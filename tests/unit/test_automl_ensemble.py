"""AutoML: greedy ensemble selection, the WeightedEnsemble estimator, its skops
round trip, and the ensemble in a short search (no timing asserts)."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from threadpoolctl import threadpool_limits

from nbml_server.domain.automl import (LEARNERS, LearnerContext, SearchRequest, WeightedEnsemble,
                                       build_pipeline, evaluate, greedy_selection, load_model,
                                       predict_frame, run_search, save_model)
from nbml_server.domain.automl import search as search_module
from nbml_server.domain.automl.tasks import classification_score, regression_score


# --------------------------------------------------------------------- greedy selection

def test_greedy_picks_complementary_members_and_beats_the_best_single():
    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    swing = np.where(rng.random(400) < 0.5, 1.0, -1.0)
    best_single = y + rng.normal(scale=0.5, size=400)  # rmse ~0.5
    over, under = y + swing, y - swing  # rmse 1 each, but their mean is exact
    noise = y + rng.normal(scale=2.0, size=400)
    predictions = [best_single, over, under, noise]
    rmse = [regression_score("rmse", y, p) for p in predictions]
    assert rmse[0] == min(rmse)

    counts, score = greedy_selection(predictions, lambda p: regression_score("rmse", y, p),
                                     greater_is_better=False)
    assert counts[1] > 0 and counts[2] > 0 and counts[1] == counts[2]
    assert counts[3] == 0
    blend = sum(c * p for c, p in zip(counts, predictions)) / counts.sum()
    assert score == pytest.approx(regression_score("rmse", y, blend))
    assert score < rmse[0] * 0.7


def test_greedy_on_probabilities():
    classes = ["a", "b"]
    y = np.array(["a", "b"] * 30, dtype=object)
    truth = (y == "b").astype(float)
    # Each member is confidently wrong on a different third of the rows.
    members = []
    for k in range(3):
        p_b = np.where(truth == 1, 0.8, 0.2)
        wrong = np.arange(60) % 3 == k
        p_b[wrong] = 1 - p_b[wrong]
        members.append(np.column_stack([1 - p_b, p_b]))
    single = classification_score("log_loss", y, members[0], classes)
    counts, score = greedy_selection(
        members, lambda p: classification_score("log_loss", y, p, classes), False)
    assert np.all(counts > 0)
    assert score < single
    blend = sum(c * p for c, p in zip(counts, members)) / counts.sum()
    assert classification_score("accuracy", y, blend, classes) == 1.0
    assert classification_score("accuracy", y, members[0], classes) < 0.7


def test_greedy_keeps_the_start_when_nothing_helps():
    y = np.linspace(0, 1, 50)
    counts, score = greedy_selection([y + 0.01, y + 1.0], lambda p: regression_score("mae", y, p),
                                     False)
    assert list(counts) == [1, 0] and score == pytest.approx(0.01)


# ------------------------------------------------------------------- WeightedEnsemble

class Constant:
    """A fitted stand-in that predicts the same thing for every row."""

    def __init__(self, classes=None, proba=None, value=None):
        self.classes_ = np.asarray(classes, dtype=object) if classes is not None else None
        self.proba, self.value = proba, value

    def predict_proba(self, X):
        return np.tile(np.asarray(self.proba, dtype=float), (len(X), 1))

    def predict(self, X):
        return np.full(len(X), self.value, dtype=float)


def test_weighted_ensemble_classification_math():
    X = pd.DataFrame({"x": [1, 2, 3]})
    ensemble = WeightedEnsemble([Constant(["n", "y"], [0.9, 0.1]), Constant(["n", "y"], [0.2, 0.8])],
                                [1, 3])
    np.testing.assert_allclose(ensemble.predict_proba(X), [[0.375, 0.625]] * 3)
    assert list(ensemble.classes_) == ["n", "y"]
    assert list(ensemble.predict(X)) == ["y", "y", "y"]
    out = predict_frame(ensemble, X, "classification")
    assert out["classes"] == ["n", "y"] and out["labels"] == ["y"] * 3


def test_weighted_ensemble_regression_math_and_checks():
    X = pd.DataFrame({"x": [1, 2]})
    ensemble = WeightedEnsemble([Constant(value=1.0), Constant(value=4.0)], [2, 1],
                                task="regression")
    np.testing.assert_allclose(ensemble.predict(X), [2.0, 2.0])
    with pytest.raises(AttributeError):
        ensemble.predict_proba(X)
    with pytest.raises(ValueError):
        WeightedEnsemble([Constant(value=1.0)], [1, 2], task="regression").predict(X)
    mixed = WeightedEnsemble([Constant(["a", "b"], [1, 0]), Constant(["a", "c"], [1, 0])], [1, 1])
    with pytest.raises(AssertionError):
        mixed.predict_proba(X)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_skops_round_trip_with_the_allowlist(task):
    rng = np.random.default_rng(2)
    X = pd.DataFrame({"n": rng.normal(size=80), "c": rng.choice(["u", "v", None], 80)})
    types = {"n": "numeric", "c": "categorical"}
    y = (np.where(X["n"] > 0, "p", "q").astype(object) if task == "classification"
         else X["n"].to_numpy() * 2 + rng.normal(size=80))
    ctx = LearnerContext(task=task, n_rows=80, n_classes=2, min_class_count=30, n_jobs=1)
    names = (["logistic_regression", "random_forest"] if task == "classification"
             else ["ridge", "random_forest"])
    members = []
    with threadpool_limits(1):
        for name in names:
            params = LEARNERS[name].defaults(ctx)[0]
            if "n_estimators" in params:
                params = {**params, "n_estimators": 5}
            members.append(build_pipeline(LEARNERS[name], params, ctx, types, types).fit(X, y))
    ensemble = WeightedEnsemble(members, [0.25, 0.75], task=task)
    restored = load_model(save_model(ensemble))
    assert isinstance(restored, WeightedEnsemble)
    method = "predict_proba" if task == "classification" else "predict"
    np.testing.assert_allclose(getattr(restored, method)(X), getattr(ensemble, method)(X))
    if task == "classification":
        assert list(restored.classes_) == ["p", "q"]


# --------------------------------------------------------------------------- search

def breast_cancer():
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.copy()
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    return frame


def test_short_search_returns_valid_models_with_or_without_ensemble():
    result = run_search(SearchRequest(breast_cancer(), "target", budget_seconds=8))
    assert result.models
    singles = [m for m in result.models if m.family != "ensemble"]
    ensembles = [m for m in result.models if m.family == "ensemble"]
    assert singles and len(ensembles) <= 1
    holdout_X = result.holdout_frame.drop(columns=["target"])
    for model in result.models:
        out = predict_frame(model.pipeline, holdout_X, result.task)
        assert out["classes"] == result.classes
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0)
    # Best cross-validated score first, unless a simple model was moved first (and
    # says why); the ensemble, when offered, is the best of the rest.
    rest = result.models[1:] if result.models[0].ranking_note else result.models
    assert [m.cv_score for m in rest] == sorted((m.cv_score for m in rest), reverse=True)
    assert all(not m.ranking_note for m in result.models[1:])
    if ensembles:
        ensemble = ensembles[0]
        assert ensemble is rest[0] and ensemble.trial_number == -1
        assert ensemble.cv_score > max(t.cv_score for t in result.trials
                                       if t.cv_score is not None)
        members = ensemble.params["members"]
        json.dumps(ensemble.params)  # stored as the model's params
        assert len(members) >= 2
        assert sum(m["weight"] for m in members) == pytest.approx(1.0, abs=1e-5)
        for member in members:
            assert result.trials[member["trial_number"]].family == member["family"]
        restored = load_model(save_model(ensemble.pipeline))
        evaluation = evaluate(restored, result.holdout_frame, "target", result.task,
                              result.metric, importance_repeats=1)
        assert evaluation.metrics["roc_auc"] > 0.9
        assert len(evaluation.feature_importances) == len(result.feature_columns)


def test_no_ensemble_when_disabled_or_out_of_memory(monkeypatch):
    frame = breast_cancer()
    request = dict(budget_seconds=5, max_trials=4, families=["logistic_regression", "knn"])
    result = run_search(SearchRequest(frame, "target", ensemble=False, **request))
    assert all(m.family != "ensemble" for m in result.models)
    monkeypatch.setattr(search_module, "OOF_MEMORY_BYTES", 1000)
    result = run_search(SearchRequest(frame, "target", **request))
    assert result.models and all(m.family != "ensemble" for m in result.models)
