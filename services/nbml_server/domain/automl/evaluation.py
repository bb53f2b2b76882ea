"""Holdout evaluation of a fitted pipeline: metrics, confusion matrix and
permutation importance of the original input columns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from .columns import coerce_numeric, labels_of
from .deadline import Deadline
from .tasks import (CLASSIFICATION, CLASSIFICATION_METRICS, REGRESSION_METRICS,
                    classification_score, greater_is_better, regression_score)

DEFAULT_IMPORTANCE_SECONDS = 60.0
MAX_IMPORTANCE_ROWS = 5_000
# Cells in one batched prediction frame of the permutation importance.
MAX_BATCH_CELLS = 2_000_000


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


def _signed_score(metric: str, task: str, classes, y, predictions) -> float:
    """The metric on `predictions` (probabilities or values), larger = better."""
    if task == CLASSIFICATION:
        value = classification_score(metric, y, predictions, classes)
    else:
        value = regression_score(metric, y, predictions)
    if not math.isfinite(value):
        return 0.0
    return value if greater_is_better(metric) else -value


def _predict(pipeline, X, task):
    if task == CLASSIFICATION:
        return np.asarray(pipeline.predict_proba(X), dtype=np.float64)
    return np.asarray(pipeline.predict(X), dtype=np.float64)


def permutation_importances(pipeline, X: pd.DataFrame, y, task: str, metric: str, *,
                            repeats: int, seed: int) -> list[tuple[str, float, float]]:
    """Mean and std drop of the metric when each input column is shuffled.

    Same estimate as sklearn's permutation_importance, but each repeat predicts all
    shuffled copies in one call: a pipeline call costs milliseconds of fixed overhead,
    which dominates on holdouts of a few hundred rows.
    """
    classes = [str(c) for c in pipeline.classes_] if task == CLASSIFICATION else None
    baseline = _signed_score(metric, task, classes, y, _predict(pipeline, X, task))
    rng = np.random.default_rng(seed)
    n_rows, columns = len(X), list(X.columns)
    # Bound the size of one batched frame; wide data is predicted in column groups.
    group = max(1, MAX_BATCH_CELLS // max(1, n_rows * len(columns)))
    drops = np.zeros((len(columns), repeats))
    for repeat in range(repeats):
        for first in range(0, len(columns), group):
            chosen = columns[first:first + group]
            copies = []
            for column in chosen:
                shuffled = X.copy()
                shuffled[column] = X[column].to_numpy()[rng.permutation(n_rows)]
                copies.append(shuffled)
            predictions = _predict(pipeline, pd.concat(copies, ignore_index=True), task)
            for offset, column in enumerate(chosen):
                block = predictions[offset * n_rows:(offset + 1) * n_rows]
                drops[first + offset, repeat] = baseline - _signed_score(
                    metric, task, classes, y, block)
    means, stds = drops.mean(axis=1), drops.std(axis=1)
    order = np.argsort(-means, kind="stable")
    return [(str(columns[i]), float(means[i]), float(stds[i])) for i in order]


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
    if rows < len(y):
        picked = np.random.default_rng(seed).choice(len(y), size=rows, replace=False)
        X, y = X.iloc[picked], y[picked]
    result.feature_importances = permutation_importances(
        pipeline, X, y, task, metric, repeats=repeats, seed=seed)
    return result
