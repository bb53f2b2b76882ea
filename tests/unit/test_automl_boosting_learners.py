"""AutoML: the LightGBM and XGBoost families (registered when their library imports)."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from threadpoolctl import threadpool_limits

from nbml_server.domain.automl import (LEARNERS, LearnerContext, SearchRequest, build_pipeline,
                                       load_model, predict_frame, save_model, run_search)
from nbml_server.domain.automl.estimators import LabelEncodedClassifier
from nbml_server.domain.automl.learners import SMALL_DATA_ROWS, _if_importable

pytest.importorskip("lightgbm")

TYPES = {"x1": "numeric", "x2": "numeric", "colour": "categorical", "flag": "boolean"}
CLASSES = ["apple", "banana", "cherry"]


def family(name):
    if name == "xgboost":
        pytest.importorskip("xgboost")
    return LEARNERS[name]


FAMILIES = ["lightgbm", "xgboost"]


def frame(n=150, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    colour[::7] = None
    X = pd.DataFrame({"x1": x1, "x2": x2, "colour": colour, "flag": rng.choice([True, False], n)})
    X.loc[::11, "x2"] = np.nan
    # Labels in an order unlike their sorted one, so a mix-up of columns would show.
    y = np.array(CLASSES, dtype=object)[np.where(x1 > 0.4, 2, np.where(x1 < -0.4, 0, 1))]
    target = 3 * x1 + (colour == "red") + rng.normal(scale=0.1, size=n)
    return X, y, target


def fitted(learner, task, X, y):
    ctx = LearnerContext(task=task, n_rows=len(X), n_classes=3, min_class_count=20, n_jobs=1)
    params = {**learner.defaults(ctx)[0], "n_estimators": 30}
    with threadpool_limits(1):
        return build_pipeline(learner, params, ctx, TYPES, TYPES).fit(X, y)


@pytest.mark.parametrize("name", FAMILIES)
def test_classification_with_string_labels(name):
    X, y, _ = frame()
    pipe = fitted(family(name), "classification", X, y)
    assert list(pipe.classes_) == CLASSES
    proba = pipe.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    # Columns follow classes_: the right class gets the most probability.
    assert (np.asarray(pipe.classes_)[proba.argmax(axis=1)] == y).mean() > 0.9
    labels = pipe.predict(X)
    assert set(labels) <= set(CLASSES) and (labels == y).mean() > 0.9
    out = predict_frame(pipe, X.iloc[:5], "classification")
    assert out["classes"] == CLASSES and out["probabilities"].shape == (5, 3)


@pytest.mark.parametrize("name", FAMILIES)
def test_regression(name):
    X, _, target = frame()
    pipe = fitted(family(name), "regression", X, target)
    predictions = pipe.predict(X)
    assert predictions.shape == (len(X),) and np.isfinite(predictions).all()
    assert np.corrcoef(predictions, target)[0, 1] > 0.9


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("name", FAMILIES)
def test_skops_round_trip(name, task):
    X, y, target = frame()
    pipe = fitted(family(name), task, X, y if task == "classification" else target)
    restored = load_model(save_model(pipe))  # every type it holds is allowed
    new = pd.DataFrame({"x1": [0.9, -2.0], "x2": [None, 0.1], "colour": ["purple", None],
                        "flag": [True, None]})  # unseen category, missing values
    if task == "classification":
        assert list(restored.classes_) == CLASSES
        np.testing.assert_array_equal(restored.predict_proba(new), pipe.predict_proba(new))
        np.testing.assert_array_equal(restored.predict(new), pipe.predict(new))
    else:
        np.testing.assert_array_equal(restored.predict(new), pipe.predict(new))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("rows", [100, SMALL_DATA_ROWS, 50_000])
def test_defaults_are_json_values_inside_the_space(name, task, rows):
    """The portfolio enqueues the defaults into the Optuna study: they must name the
    space's parameters, lie within its ranges and survive JSON."""
    learner = family(name)
    ctx = LearnerContext(task=task, n_rows=rows, n_classes=2)

    class Recorder:
        def __init__(self):
            self.ranges = {}

        def float(self, name, low, high, *, log=False):
            self.ranges[name] = (float, low, high)
            return low

        def int(self, name, low, high, *, log=False):
            self.ranges[name] = (int, low, high)
            return low

        def categorical(self, name, choices):
            self.ranges[name] = (list(choices),)
            return choices[0]

    recorder = Recorder()
    learner.space(recorder, ctx)
    defaults = learner.defaults(ctx)
    assert 2 <= len(defaults) <= 3
    assert json.loads(json.dumps(defaults)) == defaults
    for params in defaults:
        assert set(params) == set(recorder.ranges)
        for key, value in params.items():
            if len(recorder.ranges[key]) == 1:  # categorical
                assert value in recorder.ranges[key][0], (key, value)
                continue
            kind, low, high = recorder.ranges[key]
            assert type(value) is kind and low <= value <= high, (key, value)
        assert learner.cost_factor(params) > 0


def test_cost_factor_grows_with_trees_and_size():
    lgb = LEARNERS["lightgbm"]
    base = {"n_estimators": 100, "num_leaves": 31, "colsample_bytree": 1.0}
    assert lgb.cost_factor(base) == pytest.approx(1.0)
    assert lgb.cost_factor({**base, "n_estimators": 300}) == pytest.approx(3.0)
    assert lgb.cost_factor({**base, "num_leaves": 127}) > 2 * lgb.cost_factor(base)
    assert lgb.cost_factor({**base, "colsample_bytree": 0.3}) < lgb.cost_factor(base)
    xgb = family("xgboost")
    base = {"n_estimators": 100, "max_depth": 6, "colsample_bytree": 1.0}
    assert xgb.cost_factor(base) == pytest.approx(1.0)
    assert xgb.cost_factor({**base, "max_depth": 8}) > 2 * xgb.cost_factor({**base, "max_depth": 6})


def test_missing_library_means_no_family():
    assert _if_importable("nbml_no_such_library", LEARNERS["ridge"]) == ()
    assert _if_importable("json", LEARNERS["ridge"]) == (LEARNERS["ridge"],)


def test_label_encoded_classifier_is_a_plain_estimator():
    xgboost = pytest.importorskip("xgboost")
    X, y, _ = frame()
    numbers = X[["x1", "x2"]].to_numpy()
    model = LabelEncodedClassifier(xgboost.XGBClassifier(n_estimators=10, n_jobs=1))
    copy = clone(model)
    assert copy.get_params()["estimator__n_estimators"] == 10
    with pytest.raises(NotFittedError):
        copy.predict(numbers)
    copy.fit(numbers, y)
    assert list(copy.classes_) == CLASSES and copy.n_features_in_ == 2
    assert not hasattr(model, "estimator_")  # clone fitted a copy of the estimator too
    assert (copy.predict(numbers) == y).mean() > 0.9
    # One class only: one column of ones (XGBoost alone would give two columns).
    single = LabelEncodedClassifier(xgboost.XGBClassifier(n_estimators=2)).fit(
        numbers[:20], ["only"] * 20)
    np.testing.assert_array_equal(single.predict_proba(numbers[:3]), np.ones((3, 1)))
    assert list(single.predict(numbers[:3])) == ["only"] * 3


def test_search_with_lightgbm_only():
    X, y, _ = frame(160, seed=1)
    data = X.assign(label=y)
    result = run_search(SearchRequest(data, "label", budget_seconds=60, seed=0, max_trials=2,
                                      families=["lightgbm"]))
    assert result.classes == CLASSES and result.stop_reason == "max_trials"
    assert result.metric == "log_loss"  # the default for more than two classes
    assert [t.family for t in result.trials] == ["lightgbm"] * 2
    assert all(t.error is None and 0 < t.cv_score < 0.3 for t in result.trials)
    singles = [m for m in result.models if m.family != "ensemble"]
    assert [m.family for m in singles] == ["lightgbm"]
    holdout = result.holdout_frame.drop(columns=["label"])
    out = predict_frame(result.best.pipeline, holdout, "classification")
    assert out["classes"] == CLASSES and out["probabilities"].shape == (len(holdout), 3)
    restored = load_model(save_model(result.best.pipeline))
    np.testing.assert_array_equal(restored.predict_proba(holdout),
                                  result.best.pipeline.predict_proba(holdout))
