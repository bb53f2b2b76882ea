"""Holdout evaluation of a fitted pipeline: metrics, confusion matrix and
permutation importance of the original input columns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sklearn.metrics import confusion_matrix

from .columns import coerce_numeric, labels_of
from .deadline import Deadline
from .tasks import (CLASSIFICATION, CLASSIFICATION_METRICS, REGRESSION_METRICS,
                    classification_score, greater_is_better, regression_score)

DEFAULT_IMPORTANCE_SECONDS = 60.0
MAX_IMPORTANCE_ROWS = 5_000


@dataclass
class Evaluation:
    metrics: dict[str, float]
    confusion_labels: list[str] = field(default_factory=list)
    confusion_counts: list[int] = field(default_factory=list)  # row-major, rows = actual
    # (column, mean drop in the metric when shuffled, std); most important first.
    feature_importances: list[tuple[str, float, float]] = field(default_factory=list)
    holdout_rows: int = 0


def _split(holdout_frame: pd.DataFrame, target: str, task: str):
    data = holdout_frame[holdout_frame[target].notna()]
    X = data.drop(columns=[target])
    if task == CLASSIFICATION:
        y = labels_of(data[target])
    else:
        y = coerce_numeric(data[target]).to_numpy()
        keep = np.isfinite(y)
        X, y = X[keep], y[keep]
    return X, y


def _classification_metrics(y, proba, classes) -> dict[str, float]:
    known = np.isin(y, classes)
    y, proba = y[known], proba[known]
    if not len(y):
        return {}
    return {m: classification_score(m, y, proba, classes) for m in CLASSIFICATION_METRICS}


def _metric_scorer(metric: str, task: str):
    sign = 1.0 if greater_is_better(metric) else -1.0

    def score(estimator, X, y):
        if task == CLASSIFICATION:
            classes = [str(c) for c in estimator.classes_]
            value = classification_score(metric, y, estimator.predict_proba(X), classes)
        else:
            value = regression_score(metric, y, estimator.predict(X))
        return sign * value if math.isfinite(value) else 0.0

    return score


def evaluate(pipeline, holdout_frame: pd.DataFrame, target: str, task: str, metric: str, *,
             importance_repeats: int = 5, seed: int = 0,
             deadline: Deadline | None = None) -> Evaluation:
    """Scores `pipeline` on the holdout rows (target column included; rows without
    a target are skipped). Classification metrics: accuracy, roc_auc, log_loss, f1
    (binary: classes_[1] is positive; multiclass: one-vs-rest macro roc_auc, macro
    f1); regression: rmse, mae, r2. Permutation importance uses `metric` and is cut
    down (rows, repeats) to fit `deadline` (default 60 s), or skipped."""
    X, y = _split(holdout_frame, target, task)
    result = Evaluation(metrics={}, holdout_rows=len(y))
    if not len(y):
        return result
    deadline = deadline or Deadline(DEFAULT_IMPORTANCE_SECONDS)

    started = deadline.elapsed()
    if task == CLASSIFICATION:
        classes = [str(c) for c in pipeline.classes_]
        proba = np.asarray(pipeline.predict_proba(X), dtype=np.float64)
        result.metrics = _classification_metrics(y, proba, classes)
        predicted = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)]
        labels = classes + sorted(set(y) - set(classes))
        counts = confusion_matrix(y, predicted, labels=labels)
        result.confusion_labels = labels
        result.confusion_counts = [int(c) for c in counts.reshape(-1)]
    else:
        predicted = np.asarray(pipeline.predict(X), dtype=np.float64)
        result.metrics = {m: regression_score(m, y, predicted) for m in REGRESSION_METRICS}
    predict_seconds = max(1e-3, deadline.elapsed() - started)

    # Permutation importance: cost ~ columns x repeats x one prediction pass.
    n_columns = X.shape[1]
    if importance_repeats < 1 or n_columns == 0 or len(y) < 2:
        return result
    budget = deadline.remaining() * 0.9
    rows = min(len(y), MAX_IMPORTANCE_ROWS)
    per_pass = predict_seconds * rows / len(y)
    repeats = importance_repeats
    while repeats > 1 and per_pass * n_columns * repeats > budget:
        repeats -= 1
    while rows > 200 and per_pass * n_columns * repeats > budget:
        rows //= 2
        per_pass /= 2
    if per_pass * n_columns * repeats > budget:
        return result
    imp = permutation_importance(
        pipeline, X, y, scoring=_metric_scorer(metric, task), n_repeats=repeats,
        random_state=seed, n_jobs=1, max_samples=rows if rows < len(y) else 1.0)
    order = np.argsort(-imp.importances_mean, kind="stable")
    result.feature_importances = [(str(X.columns[i]), float(imp.importances_mean[i]),
                                   float(imp.importances_std[i])) for i in order]
    return result
