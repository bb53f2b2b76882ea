"""Column types: inference from a raw frame, and coercion of raw values to the
training schema (used both at training time and for prediction rows that arrive as
JSON, where numbers may come as strings and keys may be missing)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from nbml_server.errors import FieldViolation, InvalidArgument

# One inference for the profile users see and the pipelines the search builds (but
# see `model_column_type`).
from nbml_server.domain.datasets.profiling import (BOOLEAN, COLUMN_TYPES,  # noqa: E402
                                                   DATETIME, NUMERIC, infer_column_type)
from nbml_server.domain.datasets.reading import NA_TOKENS, numberish

BOOL_TRUE = frozenset({"true", "t", "yes", "y"})
BOOL_FALSE = frozenset({"false", "f", "no", "n"})
_BOOL_WORDS = {**{w: 1.0 for w in BOOL_TRUE | {"1", "1.0"}},
               **{w: 0.0 for w in BOOL_FALSE | {"0", "0.0"}}}

_DATE_LIKE = re.compile(
    r"^\s*(\d{4}-\d{1,2}-\d{1,2}|\d{4}/\d{1,2}/\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4})"
    r"([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2}|UTC)?\s*$")

# Inference thresholds.


# --------------------------------------------------------------------------- labels

def to_label(value) -> str | None:
    """The text form of one categorical value or class label; None when missing.

    Integral floats lose their ``.0`` (so a label read as 1.0 and one sent as 1 or
    "1" agree); booleans become "True"/"False" (as pandas writes them)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if math.isfinite(value) and float(value).is_integer():
            return str(int(value))
        return repr(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def labels_of(series: pd.Series) -> np.ndarray:
    """Object array of `to_label` of each value; np.nan where missing."""
    values = series.to_numpy(dtype=object, na_value=None)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        label = to_label(v)
        out[i] = np.nan if label is None else label
    return out


# ------------------------------------------------------------------------- coercion

def _is_stringish(series: pd.Series) -> bool:
    return (pd.api.types.is_object_dtype(series.dtype)
            or pd.api.types.is_string_dtype(series.dtype))


def number_or_nan(v) -> float:
    if v is None or v is pd.NA or v is pd.NaT:
        return np.nan
    if isinstance(v, (bool, np.bool_)):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, str):
        text = v.strip()
        if not text:
            return np.nan
        try:
            return float(text)
        except ValueError:
            return np.nan
    return np.nan


def coerce_numeric(series: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        raw = series.to_numpy(dtype=object, na_value=None)
        values = np.fromiter((number_or_nan(v) for v in raw), dtype=np.float64, count=len(raw))
    values = np.where(np.isfinite(values), values, np.nan)
    return pd.Series(values, index=series.index, dtype=np.float64, name=series.name)


def bool_or_nan(v) -> float:
    if v is None or v is pd.NA:
        return np.nan
    if isinstance(v, (bool, np.bool_)):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float, np.integer, np.floating)):
        return np.nan if math.isnan(float(v)) else (1.0 if float(v) != 0 else 0.0)
    if isinstance(v, str):
        return _BOOL_WORDS.get(v.strip().lower(), np.nan)
    return np.nan


def coerce_boolean(series: pd.Series) -> pd.Series:
    raw = series.to_numpy(dtype=object, na_value=None)
    values = np.fromiter((bool_or_nan(v) for v in raw), dtype=np.float64, count=len(raw))
    return pd.Series(values, index=series.index, dtype=np.float64, name=series.name)


def coerce_categorical(series: pd.Series) -> pd.Series:
    """Object Series of strings, np.nan where missing (what sklearn encoders expect)."""
    return pd.Series(labels_of(series), index=series.index, dtype=object, name=series.name)


def coerce_datetime(series: pd.Series) -> pd.Series:
    """datetime64 (naive, UTC) Series; NaT where missing or unparseable."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        parsed = series
    else:
        raw = series.to_numpy(dtype=object, na_value=None)
        cleaned = pd.Series([v.strip() if isinstance(v, str) else v for v in raw],
                            index=series.index, dtype=object)
        parsed = pd.to_datetime(cleaned, errors="coerce", utc=True, format="mixed")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.Series(parsed.to_numpy(dtype="datetime64[ns]"), index=series.index, name=series.name)


def coerce_column(series: pd.Series, column_type: str) -> pd.Series:
    if column_type == NUMERIC:
        return coerce_numeric(series)
    if column_type == BOOLEAN:
        return coerce_boolean(series)
    if column_type == DATETIME:
        return coerce_datetime(series)
    return coerce_categorical(series)  # categorical and text


# ------------------------------------------------------------------ prediction input

def value_problem(value, column_type: str) -> str | None:
    """Why one prediction input value does not fit a column of `column_type`, or None
    when it does. What fits is what training data could hold (`datasets.reading`):
    numeric columns take numbers and text that reads as one, boolean columns booleans,
    0 and 1 and the words of `bool_or_nan`, every column takes missing values (None,
    NaN, blank text, NA markers in numeric columns); categorical, text and date-time
    columns take any number, text or boolean (as text; an unreadable date is missing,
    as in training)."""
    if isinstance(value, (list, dict)):
        return f"{'a list' if isinstance(value, list) else 'an object'} is not a column value"
    if column_type == NUMERIC:
        if isinstance(value, (bool, np.bool_)):
            return f"{value!r} is a boolean, not a number; the column is numeric"
        if isinstance(value, str) and value.strip() and not numberish(value.strip()):
            return f"{value!r} is not a number; the column is numeric"
    elif column_type == BOOLEAN:
        if isinstance(value, str) and value.strip() and value.strip().lower() not in (
                _BOOL_WORDS.keys() | NA_TOKENS):
            return f"{value!r} is not a boolean; the column is boolean"
        if (isinstance(value, (int, float, np.integer, np.floating))
                and not isinstance(value, (bool, np.bool_))
                and not (math.isnan(value) or value in (0, 1))):
            return f"{value!r} is not a boolean (0 or 1); the column is boolean"
    return None


# Python types of values that fit every column of a type, with no need to look at them.
_FITTING_TYPES = {NUMERIC: frozenset({float, int, type(None)}),
                  BOOLEAN: frozenset({bool, type(None)})}
_NEVER_FITTING_TYPES = frozenset({list, dict})


def value_problems(values: Sequence, column_type: str) -> Iterator[tuple[int, str]]:
    """(row, `value_problem`) of each value of one input column that does not fit
    `column_type`, in row order. `values`: a list, or an array (float arrays - numbers,
    NaN for missing - are checked without a Python loop)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        if column_type == BOOLEAN:
            for row in np.flatnonzero(~(np.isnan(values) | (values == 0) | (values == 1))):
                yield int(row), value_problem(float(values[row]), column_type)
        return
    types = set(map(type, values))
    fitting = _FITTING_TYPES.get(column_type)
    if (types <= fitting) if fitting is not None else types.isdisjoint(_NEVER_FITTING_TYPES):
        return
    for row, value in enumerate(values):
        problem = value_problem(value, column_type)
        if problem is not None:
            yield row, problem


# ------------------------------------------------------------------------ inference

def resolve_column_types(frame: pd.DataFrame, given: Mapping[str, str] | None,
                         columns: list[str]) -> dict[str, str]:
    """Type of each of `columns`, from `given` where it names one, else inferred."""
    given = dict(given or {})
    violations = [
        FieldViolation(f"column_types[{name}]",
                       f"unknown column type '{kind}'; expected one of: {', '.join(COLUMN_TYPES)}")
        for name, kind in given.items() if name in columns and kind not in COLUMN_TYPES
    ]
    if violations:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in violations),
                              violations, reason="UNKNOWN_COLUMN_TYPE")
    return {name: given.get(name) or model_column_type(frame[name]) for name in columns}


def model_column_type(series: pd.Series, profiled: str | None = None) -> str:
    """The type a model reads a column as when none is given: the profile's
    (`profiled`, else `infer_column_type`), except that numbers stay numeric. A
    column of numbers that are all 0 or 1 in the training rows is a boolean in the
    profile, but a model that takes it as one would refuse a 2 at prediction time (a
    digits pixel that was 0 or 1 in every training row), where it can take it as the
    number it is."""
    inferred = profiled or infer_column_type(series)
    if (inferred == BOOLEAN and pd.api.types.is_numeric_dtype(series.dtype)
            and not pd.api.types.is_bool_dtype(series.dtype)):
        return NUMERIC
    return inferred
