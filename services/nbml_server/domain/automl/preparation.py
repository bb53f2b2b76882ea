"""What every trial of one search shares: the request, validated, split into search
rows and holdout rows, coerced to the column schema, and cut into folds.

`prepare` is deterministic for a request (the seed fixes the holdout split and the
folds), so a worker that runs trials of another worker's job prepares the very same
rows and folds from the same data set and request.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from nbml_server.errors import InvalidArgument

from .columns import coerce_numeric, labels_of, resolve_column_types
from .tasks import CLASSIFICATION, TARGET_FIELD, resolve_metric, resolve_task
from .transformers import SchemaCoercer

DATASET_FIELD = "training_job.dataset"
MIN_ROWS = 10
LARGE_DATA_ROWS = 20_000  # above this, 3 folds


@dataclass
class SearchRequest:
    frame: pd.DataFrame
    target: str
    task: str = "auto"
    metric: str | None = None
    budget_seconds: float = 60.0
    column_types: dict[str, str] | None = None
    seed: int = 0
    cv_folds: int = 5
    holdout_fraction: float = 0.2
    # Restrict the search to these families (registry names); None: all that fit.
    families: Sequence[str] | None = None
    # Stop after this many trials (mostly for tests); None: until the budget is spent.
    max_trials: int | None = None
    # Offer a greedy ensemble of the best trials when it beats the best single one.
    ensemble: bool = True
    # "{family}.{parameter}" -> value as text (JSON, or a bare string): each named
    # family's first configuration is its default with these values.
    initial_params: Mapping[str, str] = field(default_factory=dict)



@dataclass
class Prepared:
    task: str
    metric: str
    classes: list[str]
    feature_types: dict[str, str]
    active_types: dict[str, str]
    raw_X: pd.DataFrame  # search rows, raw
    X: pd.DataFrame  # search rows, coerced to the schema
    y: np.ndarray  # strings (classification) or floats
    holdout: pd.DataFrame
    folds: list[tuple[np.ndarray, np.ndarray]]
    min_class_count: int


def _preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in list(names)[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def prepare(request: SearchRequest) -> Prepared:
    frame = request.frame
    if not all(isinstance(c, str) for c in frame.columns):
        frame = frame.rename(columns=str)
    duplicated = sorted(set(frame.columns[frame.columns.duplicated()]))
    if duplicated:
        raise InvalidArgument.of(DATASET_FIELD, f"column names must be unique; repeated: "
                                 f"{_preview(duplicated)}", reason="DUPLICATE_COLUMNS")
    if request.target not in frame.columns:
        raise InvalidArgument.of(
            TARGET_FIELD, f"column '{request.target}' is not in the data set; available: "
            f"{_preview(list(frame.columns))}", reason="UNKNOWN_TARGET_COLUMN")
    features = [c for c in frame.columns if c != request.target]
    if not features:
        raise InvalidArgument.of(TARGET_FIELD, "the data set has no column besides the target "
                                 "to learn from", reason="NO_FEATURE_COLUMNS")
    if not 0 <= request.holdout_fraction < 0.9:
        raise ValueError(f"holdout_fraction must be in [0, 0.9), got {request.holdout_fraction}")
    if request.cv_folds < 2:
        raise ValueError(f"cv_folds must be at least 2, got {request.cv_folds}")

    y_raw = frame[request.target]
    task = resolve_task(y_raw, request.task)
    data = frame[y_raw.notna()]
    if task == CLASSIFICATION:
        y_all = labels_of(data[request.target])
        classes = sorted(set(y_all))
    else:
        y_all = coerce_numeric(data[request.target]).to_numpy()  # inf becomes NaN
        finite = np.isfinite(y_all)
        data, y_all = data[finite], y_all[finite]
        classes = []
    metric = resolve_metric(task, len(classes), request.metric)
    n = len(data)
    if n < MIN_ROWS:
        raise InvalidArgument.of(DATASET_FIELD, f"only {n} rows have a value in target column "
                                 f"'{request.target}'; at least {MIN_ROWS} are needed",
                                 reason="TOO_FEW_ROWS")

    # Holdout split, stratified by class or by quantile bin of a regression target.
    positions = np.arange(n)
    n_hold = int(round(request.holdout_fraction * n))
    if request.holdout_fraction > 0:
        n_hold = min(max(1, n_hold), n - MIN_ROWS // 2)
    if n_hold > 0:
        stratify = None
        if task == CLASSIFICATION:
            if n_hold >= len(classes) and n - n_hold >= len(classes):
                stratify = y_all
        else:
            stratify = quantile_bins(y_all, min(10, n_hold, n - n_hold))
        search_pos, hold_pos = train_test_split(positions, test_size=n_hold, stratify=stratify,
                                                random_state=request.seed)
        search_pos, hold_pos = np.sort(search_pos), np.sort(hold_pos)
    else:
        search_pos, hold_pos = positions, positions[:0]
    holdout = data.iloc[hold_pos]
    raw_X = data.iloc[search_pos][features]
    y = y_all[search_pos]

    feature_types = resolve_column_types(raw_X, request.column_types, features)
    X = SchemaCoercer(feature_types).fit(raw_X).transform(raw_X)
    active_types = {c: t for c, t in feature_types.items() if X[c].notna().any()}
    if not active_types:
        raise InvalidArgument.of(DATASET_FIELD, "every feature column is empty in the training "
                                 "rows", reason="NO_USABLE_FEATURES")

    n_search = len(search_pos)
    k = min(request.cv_folds, 3) if n_search >= LARGE_DATA_ROWS else request.cv_folds
    k = min(k, n_search // 2)
    min_class_count = 0
    if task == CLASSIFICATION:
        counts = pd.Series(y).value_counts()
        min_class_count = int(counts.min())
        k = max(2, min(k, min_class_count))
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=request.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a class smaller than k
            folds = list(splitter.split(np.zeros(n_search), y))
    else:
        k = max(2, k)
        bins = quantile_bins(y, min(10, n_search // k))
        if bins is None:
            folds = list(KFold(n_splits=k, shuffle=True, random_state=request.seed)
                         .split(np.zeros(n_search)))
        else:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=request.seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                folds = list(splitter.split(np.zeros(n_search), bins))
    return Prepared(task, metric, classes, feature_types, active_types, raw_X, X, y, holdout,
                     folds, min_class_count)


def quantile_bins(y: np.ndarray, n_bins: int) -> np.ndarray | None:
    """Quantile bin of each regression target value, to stratify splits on (holdout
    and folds then each span the range of the target; on small data this makes the
    holdout score much less of a lottery). None when there is no room for it."""
    if n_bins < 2:
        return None
    bins = pd.qcut(pd.Series(y).rank(method="first"), n_bins, labels=False)
    bins = np.asarray(bins, dtype=np.int64)
    if np.bincount(bins).min() < 2:
        return None
    return bins
