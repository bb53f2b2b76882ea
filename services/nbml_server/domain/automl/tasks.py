"""Tasks and metrics: resolving what the user asked for, and computing scores.

Scores are always in the metric's natural units (rmse is positive, lower is better);
`greater_is_better` says which way is up."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (accuracy_score, f1_score, log_loss, mean_absolute_error,
                             mean_squared_error, r2_score, roc_auc_score)

from nbml_server.errors import InvalidArgument

from .columns import coerce_numeric, labels_of

AUTO = "auto"
CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (AUTO, CLASSIFICATION, REGRESSION)

CLASSIFICATION_METRICS = ("roc_auc", "log_loss", "accuracy", "f1")
REGRESSION_METRICS = ("rmse", "mae", "r2")
_GREATER_IS_BETTER = {"roc_auc": True, "log_loss": False, "accuracy": True, "f1": True,
                      "rmse": False, "mae": False, "r2": True}

# auto: an integer-valued numeric target is a class label when it has at most this
# many distinct values (and at least 5 rows per distinct value on average).
AUTO_MAX_INTEGER_CLASSES = 20
MAX_CLASSES = 200
MIN_ROWS_PER_CLASS = 2

TARGET_FIELD = "training_job.target_column"
TASK_FIELD = "training_job.task"
METRIC_FIELD = "training_job.metric"


def _is_integer_valued(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values)) and np.all(np.equal(np.mod(values, 1), 0)))


def _numeric_target(y: pd.Series) -> np.ndarray | None:
    """The target as floats, or None when some present value is not a number."""
    if pd.api.types.is_bool_dtype(y.dtype):
        return None
    if pd.api.types.is_numeric_dtype(y.dtype):
        return y.to_numpy(dtype=np.float64, na_value=np.nan)
    values = coerce_numeric(y).to_numpy()
    if np.isnan(values).sum() > y.isna().sum():
        return None
    return values


def resolve_task(y: pd.Series, requested: str) -> str:
    """"classification" or "regression" for target `y` (missing values are ignored).

    auto: classification for non-numeric or boolean targets and for integer-valued
    numeric targets with few distinct values (<= 20, and <= 1 per 5 rows, or just 2);
    regression otherwise. Raises InvalidArgument for an unusable target."""
    requested = (requested or AUTO).lower()
    if requested not in TASKS:
        raise InvalidArgument.of(TASK_FIELD, f"unknown task '{requested}'; expected one of: "
                                 + ", ".join(TASKS), reason="UNKNOWN_TASK")
    present = y[y.notna()]
    if present.empty:
        raise InvalidArgument.of(TARGET_FIELD, f"target column '{y.name}' has no values",
                                 reason="TARGET_ALL_MISSING")
    numeric = _numeric_target(present)
    labels = labels_of(present)
    distinct = pd.unique(labels)
    if len(distinct) < 2:
        raise InvalidArgument.of(
            TARGET_FIELD, f"target column '{y.name}' has a single value ('{distinct[0]}'); "
            "there is nothing to learn", reason="TARGET_SINGLE_CLASS")

    task = requested
    if task == AUTO:
        if numeric is None:
            task = CLASSIFICATION
        elif _is_integer_valued(numeric) and (
                len(distinct) == 2
                or (len(distinct) <= AUTO_MAX_INTEGER_CLASSES and len(distinct) * 5 <= len(numeric))):
            task = CLASSIFICATION
        else:
            task = REGRESSION

    if task == REGRESSION:
        if numeric is None:
            bad = next((v for v, n in zip(present, coerce_numeric(present)) if pd.isna(n)),
                       present.iloc[0])
            raise InvalidArgument.of(
                TARGET_FIELD, f"regression needs a numeric target; column '{y.name}' has "
                f"values such as '{bad}'", reason="TARGET_NOT_NUMERIC")
        return REGRESSION

    counts = pd.Series(labels).value_counts()
    if len(counts) > MAX_CLASSES:
        raise InvalidArgument.of(
            TARGET_FIELD, f"target column '{y.name}' has {len(counts)} classes; classification "
            f"supports at most {MAX_CLASSES}", reason="TARGET_TOO_MANY_CLASSES")
    small = counts[counts < MIN_ROWS_PER_CLASS]
    if len(small):
        shown = ", ".join(f"'{c}'" for c in list(small.index)[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        raise InvalidArgument.of(
            TARGET_FIELD, f"classes need at least {MIN_ROWS_PER_CLASS} rows each; class {shown}"
            f"{more} of target column '{y.name}' has fewer", reason="TARGET_CLASS_TOO_SMALL")
    return CLASSIFICATION


def metrics_for(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == CLASSIFICATION else REGRESSION_METRICS


def resolve_metric(task: str, n_classes: int, requested: str | None) -> str:
    """The metric to optimise: `requested` if valid for `task`, else its default
    (roc_auc for two classes, log_loss for more, rmse for regression)."""
    valid = metrics_for(task)
    if not requested:
        if task == REGRESSION:
            return "rmse"
        return "roc_auc" if n_classes <= 2 else "log_loss"
    metric = requested.strip().lower()
    if metric not in valid:
        raise InvalidArgument.of(
            METRIC_FIELD, f"unknown metric '{requested}' for {task}; expected one of: "
            + ", ".join(valid), reason="UNKNOWN_METRIC")
    return metric


def greater_is_better(metric: str) -> bool:
    try:
        return _GREATER_IS_BETTER[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}") from None


def better(a: float, b: float, metric: str) -> bool:
    """Whether score `a` beats score `b` under `metric`."""
    return a > b if greater_is_better(metric) else a < b


def sort_key(score: float, metric: str) -> float:
    """Ascending sort key: best score first."""
    return -score if greater_is_better(metric) else score


# ---------------------------------------------------------------------- computation

def align_proba(proba: np.ndarray, model_classes: Sequence, classes: Sequence[str]) -> np.ndarray:
    """Columns of `proba` (in `model_classes` order) rearranged to `classes` order;
    classes the model never saw get probability 0."""
    model_classes = [str(c) for c in model_classes]
    if model_classes == list(classes):
        return proba
    out = np.zeros((proba.shape[0], len(classes)), dtype=np.float64)
    where = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(model_classes):
        if c in where:
            out[:, where[c]] = proba[:, j]
    return out


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> float:
    if len(classes) == 2:
        positive = y_true == classes[1]
        if positive.all() or not positive.any():
            return math.nan
        return float(roc_auc_score(positive, proba[:, 1]))
    # One-vs-rest macro average over the classes present (the same as sklearn's
    # multi_class="ovr", average="macro" when every class is present).
    aucs = []
    for j, c in enumerate(classes):
        positive = y_true == c
        if positive.any() and not positive.all():
            aucs.append(roc_auc_score(positive, proba[:, j]))
    return float(np.mean(aucs)) if aucs else math.nan


def classification_score(metric: str, y_true: np.ndarray, proba: np.ndarray,
                         classes: Sequence[str]) -> float:
    """`metric` for string labels `y_true` and probabilities `proba` whose columns
    follow `classes`. Binary roc_auc/f1 treat classes[1] as the positive class;
    multiclass f1 is macro-averaged and roc_auc one-vs-rest macro."""
    classes = list(classes)
    y_true = np.asarray(y_true, dtype=object)
    if metric == "roc_auc":
        return _roc_auc(y_true, proba, classes)
    if metric == "log_loss":
        p = np.clip(proba, 1e-15, 1.0)
        p = p / p.sum(axis=1, keepdims=True)
        return float(log_loss(y_true, p, labels=classes))
    pred = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)]
    if metric == "accuracy":
        return float(accuracy_score(y_true, pred))
    if metric == "f1":
        if len(classes) == 2:
            return float(f1_score(y_true, pred, pos_label=classes[1], average="binary",
                                  labels=classes, zero_division=0))
        return float(f1_score(y_true, pred, average="macro", zero_division=0))
    raise ValueError(f"not a classification metric: {metric!r}")


def regression_score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if metric == "rmse":
        return float(math.sqrt(mean_squared_error(y_true, y_pred)))
    if metric == "mae":
        return float(mean_absolute_error(y_true, y_pred))
    if metric == "r2":
        if len(y_true) < 2:
            return math.nan
        return float(r2_score(y_true, y_pred))
    raise ValueError(f"not a regression metric: {metric!r}")


def _rank_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC from ranks (ties share their average rank): the same value as
    roc_auc_score, an order of magnitude faster."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fixed_target_scorer(metric: str, y_true: np.ndarray,
                        classes: Sequence[str] = ()) -> Callable[[np.ndarray], float]:
    """`metric` of many predictions against one `y_true` (the ensemble selection
    scores hundreds of blends): the labels are encoded once. The same values as
    `classification_score` (when `classes`) or `regression_score`, which take
    milliseconds a call in sklearn's input checks."""
    classes = list(classes)
    if not classes:
        y = np.asarray(y_true, dtype=np.float64)
        if metric == "rmse":
            return lambda pred: float(math.sqrt(np.mean((y - pred) ** 2)))
        if metric == "mae":
            return lambda pred: float(np.mean(np.abs(y - pred)))
        return lambda pred: regression_score(metric, y, pred)
    labels = np.asarray(y_true, dtype=object)
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([index.get(v, -1) for v in labels])
    if metric == "log_loss" and (codes >= 0).all():
        rows = np.arange(len(codes))
        eps = np.finfo(np.float64).eps

        def log_loss_of(proba: np.ndarray) -> float:
            p = np.clip(proba, 1e-15, 1.0)
            p = p / p.sum(axis=1, keepdims=True)
            return float(-np.mean(np.log(np.clip(p[rows, codes], eps, 1 - eps))))
        return log_loss_of
    if metric == "roc_auc":
        present = [j for j in range(len(classes)) if 0 < (codes == j).sum() < len(codes)]
        if len(classes) == 2:
            present = [1] if present else []
        if not present:
            return lambda proba: math.nan
        positives = {j: codes == j for j in present}
        return lambda proba: float(np.mean([_rank_auc(positives[j], proba[:, j])
                                            for j in present]))
    return lambda proba: classification_score(metric, labels, proba, classes)
