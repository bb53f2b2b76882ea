"""AutoML: task and metric resolution, and metric computation."""

import math

import numpy as np
import pandas as pd
import pytest

from nbml_server.domain.automl import greater_is_better, resolve_metric, resolve_task
from nbml_server.domain.automl.tasks import (classification_score, fixed_target_scorer,
                                             regression_score)
from nbml_server.errors import InvalidArgument


def _reason(exc_info) -> str:
    return exc_info.value.reason


# ----------------------------------------------------------------------- resolve_task

@pytest.mark.parametrize("values, expected", [
    (["a", "b", "a", "b"], "classification"),
    ([True, False, True, False], "classification"),
    ([0, 1] * 10, "classification"),
    ([0.0, 1.0] * 10, "classification"),
    (list(range(5)) * 10, "classification"),  # integer-valued, few distinct
    (list(range(50)), "regression"),  # integer-valued but many distinct
    ([0.5, 1.25, 3.0, 4.75] * 5, "regression"),
])
def test_resolve_task_auto(values, expected):
    assert resolve_task(pd.Series(values, name="y"), "auto") == expected


def test_resolve_task_ignores_missing_and_respects_request():
    y = pd.Series([1.0, 2.0, None, 1.0, 2.0, np.nan], name="y")
    assert resolve_task(y, "classification") == "classification"
    assert resolve_task(y, "regression") == "regression"
    # Numbers written as strings are numbers for regression.
    assert resolve_task(pd.Series(["1.5", "2", "3.25"], name="y"), "regression") == "regression"


def test_resolve_task_single_class():
    with pytest.raises(InvalidArgument) as e:
        resolve_task(pd.Series(["a", "a", None, "a"], name="y"), "auto")
    assert _reason(e) == "TARGET_SINGLE_CLASS"
    assert e.value.violations[0].field == "training_job.target_column"


def test_resolve_task_all_missing():
    with pytest.raises(InvalidArgument) as e:
        resolve_task(pd.Series([None, np.nan], name="y", dtype=object), "auto")
    assert _reason(e) == "TARGET_ALL_MISSING"


def test_resolve_task_class_too_small_names_the_class():
    with pytest.raises(InvalidArgument) as e:
        resolve_task(pd.Series(["a", "a", "b", "b", "rare"], name="y"), "classification")
    assert _reason(e) == "TARGET_CLASS_TOO_SMALL"
    assert "'rare'" in e.value.message


def test_resolve_task_regression_needs_numbers():
    with pytest.raises(InvalidArgument) as e:
        resolve_task(pd.Series(["1", "2", "many"], name="y"), "regression")
    assert _reason(e) == "TARGET_NOT_NUMERIC"
    assert "many" in e.value.message


def test_resolve_task_unknown_task():
    with pytest.raises(InvalidArgument) as e:
        resolve_task(pd.Series([1, 2]), "clustering")
    assert _reason(e) == "UNKNOWN_TASK"
    assert e.value.violations[0].field == "training_job.task"


# --------------------------------------------------------------------- resolve_metric

def test_resolve_metric_defaults():
    assert resolve_metric("classification", 2, None) == "roc_auc"
    assert resolve_metric("classification", 3, "") == "log_loss"
    assert resolve_metric("regression", 0, None) == "rmse"
    assert resolve_metric("classification", 3, "F1") == "f1"
    assert resolve_metric("regression", 0, "mae") == "mae"


@pytest.mark.parametrize("task, metric", [("classification", "rmse"), ("regression", "accuracy"),
                                          ("regression", "mape")])
def test_resolve_metric_unknown(task, metric):
    with pytest.raises(InvalidArgument) as e:
        resolve_metric(task, 2, metric)
    assert _reason(e) == "UNKNOWN_METRIC"
    assert e.value.violations[0].field == "training_job.metric"
    valid = ["roc_auc", "log_loss", "accuracy", "f1"] if task == "classification" else ["rmse", "mae", "r2"]
    assert all(v in e.value.message for v in valid)


def test_greater_is_better():
    assert greater_is_better("roc_auc") and greater_is_better("accuracy")
    assert greater_is_better("f1") and greater_is_better("r2")
    assert not greater_is_better("log_loss")
    assert not greater_is_better("rmse") and not greater_is_better("mae")


# ------------------------------------------------------------------------ computation

def test_classification_scores_binary_positive_is_second_class():
    classes = ["neg", "pos"]
    y = np.array(["pos", "pos", "pos", "neg", "neg", "neg"], dtype=object)
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    proba = np.column_stack([1 - p, p])
    assert classification_score("roc_auc", y, proba, classes) == pytest.approx(8 / 9)
    assert classification_score("accuracy", y, proba, classes) == pytest.approx(4 / 6)
    assert classification_score("f1", y, proba, classes) == pytest.approx(2 / 3)
    expected = -np.mean(np.log([0.9, 0.8, 0.3, 0.4, 0.8, 0.9]))
    assert classification_score("log_loss", y, proba, classes) == pytest.approx(expected)


def test_multiclass_roc_auc_skips_absent_classes():
    classes = ["a", "b", "c"]
    y = np.array(["a", "b", "a", "b"], dtype=object)
    proba = np.array([[.8, .1, .1], [.1, .8, .1], [.6, .3, .1], [.3, .6, .1]])
    assert classification_score("roc_auc", y, proba, classes) == pytest.approx(1.0)
    assert math.isnan(classification_score("roc_auc", np.array(["a", "a"], dtype=object),
                                           proba[:2], classes))


def test_regression_scores():
    y, pred = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0])
    assert regression_score("rmse", y, pred) == pytest.approx(math.sqrt(4 / 3))
    assert regression_score("mae", y, pred) == pytest.approx(2 / 3)
    assert regression_score("r2", y, pred) == pytest.approx(1 - 4 / 2)


@pytest.mark.parametrize("metric,n_classes", [("log_loss", 3), ("log_loss", 2), ("roc_auc", 2),
                                              ("roc_auc", 4), ("accuracy", 3), ("f1", 2)])
def test_the_fixed_target_scorer_gives_the_metric_s_own_values(metric, n_classes):
    rng = np.random.default_rng(n_classes)
    classes = [f"c{i}" for i in range(n_classes)]
    y = np.array(rng.choice(classes, 300), dtype=object)
    score = fixed_target_scorer(metric, y, classes)
    for _ in range(5):
        proba = np.round(rng.random((300, n_classes)), 2)  # ties, for the AUC
        proba[:5] = 0.0  # rows of zeros, and certainties, for the log loss
        proba[5:10, 0] = 1.0
        proba /= np.maximum(proba.sum(axis=1, keepdims=True), 1e-9)
        assert score(proba) == pytest.approx(classification_score(metric, y, proba, classes),
                                             rel=1e-12, abs=1e-12)


def test_the_fixed_target_scorer_on_a_class_missing_from_the_rows():
    y = np.array(["a", "a", "b", "b"], dtype=object)
    proba = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4]])
    for metric in ("roc_auc", "log_loss"):
        assert fixed_target_scorer(metric, y, ["a", "b", "c"])(proba) == pytest.approx(
            classification_score(metric, y, proba, ["a", "b", "c"]))
    assert math.isnan(fixed_target_scorer("roc_auc", y[:2], ["a", "b"])(proba[:2, :2]))


@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_the_fixed_target_scorer_for_regression(metric):
    rng = np.random.default_rng(0)
    y, pred = rng.normal(size=200), rng.normal(size=200)
    assert fixed_target_scorer(metric, y)(pred) == pytest.approx(
        regression_score(metric, y, pred), rel=1e-12)
