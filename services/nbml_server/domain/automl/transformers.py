"""Custom scikit-learn transformers used in the fitted pipelines.

Every class here is named in `artifacts.ALLOWED_TYPES`; keep that list in step when
adding one (the artifact tests check it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .columns import coerce_column, coerce_datetime

_EPOCH = np.datetime64("1970-01-01T00:00:00", "ns")
_NS_PER_DAY = 86_400 * 10**9


def _as_frame(X) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    if isinstance(X, pd.Series):  # one row, indexed by column
        return pd.DataFrame([X.to_dict()])
    if isinstance(X, dict):
        return pd.DataFrame([X])
    if isinstance(X, (list, tuple)) and (not X or isinstance(X[0], dict)):
        return pd.DataFrame.from_records(list(X))
    return pd.DataFrame(X)


class SchemaCoercer(TransformerMixin, BaseEstimator):
    """First step of every pipeline: brings raw input to the training schema.

    Selects the training columns in training order (a missing column becomes all
    missing, extra columns are ignored) and coerces each to its type: numeric ->
    float64 (``pd.to_numeric``-like, unparseable -> NaN), boolean -> 0.0/1.0/NaN,
    datetime -> datetime64, categorical and text -> object strings with NaN for
    missing. Accepts a DataFrame, a dict (one row) or a list of dicts.

    column_types: ordered mapping column name -> column type ("numeric", ...).
    """

    def __init__(self, column_types: dict | None = None):
        self.column_types = column_types

    def fit(self, X, y=None):
        frame = _as_frame(X)
        if self.column_types is None:
            from .columns import model_column_type
            types = {str(c): model_column_type(frame[c]) for c in frame.columns}
        else:
            types = {str(k): str(v) for k, v in self.column_types.items()}
        self.column_types_ = types
        self.feature_columns_ = list(types)
        self.n_features_in_ = len(types)
        return self

    def transform(self, X):
        check_is_fitted(self, "column_types_")
        frame = _as_frame(X)
        columns = {}
        for name, kind in self.column_types_.items():
            if name in frame.columns:
                series = frame[name]
            else:
                series = pd.Series([None] * len(frame), index=frame.index, dtype=object)
            columns[name] = coerce_column(series, kind)
        return pd.DataFrame(columns, index=frame.index)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "column_types_")
        return np.asarray(self.feature_columns_, dtype=object)


class DatePartsTransformer(TransformerMixin, BaseEstimator):
    """Date-time columns -> numeric parts: year, month, day, weekday (Monday=0),
    hour (only for columns whose training values carry a time of day) and days
    since 1970-01-01 (fractional). Missing or unparseable values give NaN."""

    def __init__(self):
        pass

    def fit(self, X, y=None):
        frame = _as_frame(X)
        self.feature_names_in_ = np.asarray([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = frame.shape[1]
        with_hour = []
        for col in frame.columns:
            values = coerce_datetime(frame[col]).dropna()
            with_hour.append(bool(len(values)) and bool(
                ((values.dt.hour != 0) | (values.dt.minute != 0) | (values.dt.second != 0)).any()))
        self.with_hour_ = with_hour
        return self

    def transform(self, X):
        check_is_fitted(self, "with_hour_")
        frame = _as_frame(X)
        if frame.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} date columns, got {frame.shape[1]}")
        parts = []
        for i, col in enumerate(frame.columns):
            values = coerce_datetime(frame[col])
            missing = values.isna().to_numpy()
            dt = values.dt
            cols = [dt.year, dt.month, dt.day, dt.day_of_week]
            if self.with_hour_[i]:
                cols.append(dt.hour)
            for c in cols:
                parts.append(np.where(missing, np.nan, c.to_numpy(dtype=np.float64, na_value=np.nan)))
            raw = values.to_numpy(dtype="datetime64[ns]")
            days = (raw - _EPOCH).astype("timedelta64[ns]").astype(np.int64) / _NS_PER_DAY
            parts.append(np.where(missing, np.nan, days))
        if not parts:
            return np.empty((len(frame), 0))
        return np.column_stack(parts).astype(np.float64)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "with_hour_")
        names = []
        for col, hour in zip(self.feature_names_in_, self.with_hour_):
            suffixes = ["year", "month", "day", "weekday"] + (["hour"] if hour else []) + ["days"]
            names += [f"{col}_{s}" for s in suffixes]
        return np.asarray(names, dtype=object)


class TextStatsTransformer(TransformerMixin, BaseEstimator):
    """Free-text columns -> two numbers each: length in characters and in words.

    AutoML v1 does not model the words themselves; this keeps a weak signal
    (e.g. long complaints) at no width cost. Missing text gives NaN."""

    def __init__(self):
        pass

    def fit(self, X, y=None):
        frame = _as_frame(X)
        self.feature_names_in_ = np.asarray([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = frame.shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self, "n_features_in_")
        frame = _as_frame(X)
        parts = []
        for col in frame.columns:
            raw = frame[col].to_numpy(dtype=object, na_value=None)
            chars = np.array([len(v) if isinstance(v, str) else np.nan for v in raw], dtype=np.float64)
            words = np.array([len(v.split()) if isinstance(v, str) else np.nan for v in raw],
                             dtype=np.float64)
            parts += [chars, words]
        if not parts:
            return np.empty((len(frame), 0))
        return np.column_stack(parts)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "n_features_in_")
        return np.asarray([f"{c}_{s}" for c in self.feature_names_in_ for s in ("chars", "words")],
                          dtype=object)
