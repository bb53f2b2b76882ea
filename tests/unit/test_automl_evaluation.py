"""AutoML: holdout evaluation, prediction helpers and prediction column checks."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.pipeline import Pipeline

from nbml_server.domain.automl import (evaluate, predict_frame,
                                       rows_to_frame)


class ScoreColumnClassifier(ClassifierMixin, BaseEstimator):
    """P(pos) is the value of column "score"."""

    def fit(self, X, y):
        self.classes_ = np.array(["neg", "pos"], dtype=object)
        return self

    def predict_proba(self, X):
        p = np.asarray(X["score"], dtype=float)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] > 0.5).astype(int)]


class PredColumnRegressor(RegressorMixin, BaseEstimator):
    def fit(self, X, y):
        self.fitted_ = True
        return self

    def predict(self, X):
        return np.asarray(X["pred"], dtype=float)


def classification_holdout():
    return pd.DataFrame({
        "score": [0.9, 0.8, 0.3, 0.6, 0.2, 0.1],
        "noise": [1, 2, 3, 4, 5, 6],
        "y": ["pos", "pos", "pos", "neg", "neg", "neg"],
    })


def test_evaluate_binary_classification():
    holdout = classification_holdout()
    pipe = Pipeline([("model", ScoreColumnClassifier())]).fit(holdout, holdout["y"])
    ev = evaluate(pipe, holdout, "y", "classification", "roc_auc", importance_repeats=3)
    assert ev.holdout_rows == 6
    assert ev.metrics["accuracy"] == pytest.approx(4 / 6)
    assert ev.metrics["roc_auc"] == pytest.approx(8 / 9)
    assert ev.metrics["f1"] == pytest.approx(2 / 3)
    assert ev.metrics["log_loss"] == pytest.approx(-np.mean(np.log([.9, .8, .3, .4, .8, .9])))
    assert ev.confusion_labels == ["neg", "pos"]
    assert ev.confusion_counts == [2, 1, 1, 2]  # rows: actual neg, actual pos
    # Importance over the input columns: the target is not one; noise is unused.
    assert [c for c, _, _ in ev.feature_importances] == ["score", "noise"]
    assert ev.feature_importances[0][1] > 0
    assert ev.feature_importances[1][1:] == (0.0, 0.0)


def test_evaluate_regression_and_rows_without_target():
    holdout = pd.DataFrame({"pred": [1.0, 2.0, 5.0, 9.0], "y": [1.0, 2.0, 3.0, None]})
    pipe = Pipeline([("model", PredColumnRegressor())]).fit(holdout, holdout["y"])
    ev = evaluate(pipe, holdout, "y", "regression", "rmse", importance_repeats=2)
    assert ev.holdout_rows == 3
    assert ev.metrics["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert ev.metrics["mae"] == pytest.approx(2 / 3)
    assert ev.metrics["r2"] == pytest.approx(-1.0)
    assert ev.confusion_labels == [] and ev.confusion_counts == []
    # rmse is a loss: shuffling "pred" increases it, which is a positive importance.
    assert ev.feature_importances[0][0] == "pred" and ev.feature_importances[0][1] > 0


def test_evaluate_without_time_skips_importance():
    from nbml_server.domain.automl import Deadline

    holdout = classification_holdout()
    pipe = Pipeline([("model", ScoreColumnClassifier())]).fit(holdout, holdout["y"])
    ev = evaluate(pipe, holdout, "y", "classification", "accuracy", deadline=Deadline(0))
    assert ev.metrics["accuracy"] == pytest.approx(4 / 6) and ev.feature_importances == []


@pytest.mark.parametrize("task, metric", [("classification", "roc_auc"), ("regression", "rmse")])
def test_evaluate_an_empty_holdout(task, metric):
    # A job with holdout_fraction 0 stores a holdout frame without rows.
    if task == "classification":
        train = classification_holdout()
        pipe = Pipeline([("model", ScoreColumnClassifier())]).fit(train, train["y"])
    else:
        train = pd.DataFrame({"pred": [1.0, 2.0], "y": [1.0, 2.0]})
        pipe = Pipeline([("model", PredColumnRegressor())]).fit(train, train["y"])
    ev = evaluate(pipe, train.iloc[:0], "y", task, metric)
    assert ev.holdout_rows == 0 and ev.metrics == {}
    assert ev.confusion_labels == [] and ev.confusion_counts == []
    assert ev.feature_importances == []


def test_predict_frame_classification_labels_follow_probabilities():
    holdout = classification_holdout()
    pipe = Pipeline([("model", ScoreColumnClassifier())]).fit(holdout, holdout["y"])
    out = predict_frame(pipe, holdout.drop(columns=["y"]), "classification")
    assert out["classes"] == ["neg", "pos"]
    assert out["labels"] == ["pos", "pos", "neg", "pos", "neg", "neg"]
    np.testing.assert_allclose(out["probabilities"][:, 1], holdout["score"])


def test_rows_to_frame_fills_missing_keys():
    frame = rows_to_frame([{"a": "1", "b": True}, {"a": 2.5}], ["a", "b", "c"])
    assert list(frame.columns) == ["a", "b", "c"]
    assert frame.to_dict("records") == [{"a": "1", "b": True, "c": None},
                                        {"a": 2.5, "b": None, "c": None}]


