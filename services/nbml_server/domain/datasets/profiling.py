"""Profiling a canonical frame: column types, statistics and target suggestions.

Column types are the strings in `COLUMN_TYPES`; tasks are the strings in `TASKS`
(they mirror the ColumnType and Task enums of nbml.v1). All floats in a profile
are finite (JSON-safe): statistics are computed over finite values only.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NUMERIC = "numeric"
CATEGORICAL = "categorical"
BOOLEAN = "boolean"
DATETIME = "datetime"
TEXT = "text"
COLUMN_TYPES = (NUMERIC, CATEGORICAL, BOOLEAN, DATETIME, TEXT)

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)

TOP_VALUES = 10
# A top value is shown cut to this many characters: one long cell must not make every
# message that carries the profile (upload, get, list) megabytes long.
MAX_SHOWN_CHARS = 200
MAX_TARGET_SUGGESTIONS = 5
MAX_CLASSES = 50          # a classification target has 2..MAX_CLASSES classes
MIN_CLASS_ROWS = 2        # ... and every class has at least this many rows
MAX_INTEGER_CLASSES = 10  # integer columns with at most this many values are classes
MAX_TARGET_MISSING = 0.5
DATETIME_SHARE = 0.95     # share of values that must parse as dates of one format
ID_MIN_ROWS = 20          # all-distinct columns shorter than this are not called ids

# Two-valued spellings of true/false (compared case-insensitively).
BOOLEAN_PAIRS = (
    frozenset({"true", "false"}), frozenset({"yes", "no"}), frozenset({"0", "1"}),
    frozenset({"t", "f"}), frozenset({"y", "n"}),
)
BOOLEAN_TOKENS = frozenset().union(*BOOLEAN_PAIRS)

# Formats tried, in order, for text dates; "ISO8601" covers 2024-01-31, with or
# without a time, `T`, fractions of seconds and an offset.
DATE_FORMATS = (
    "ISO8601",
    "%m/%d/%Y", "%d/%m/%Y", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S", "%d/%m/%Y %H:%M:%S",
    "%d.%m.%Y", "%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S",
    "%Y/%m/%d", "%Y/%m/%d %H:%M", "%Y/%m/%d %H:%M:%S",
    "%d-%m-%Y", "%m-%d-%Y",
    "%d %b %Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y", "%b %d %Y", "%B %d %Y",
    "%d-%b-%Y", "%d-%b-%y",
)
# A value must look like this before any date format is tried, so that numbers,
# codes and version strings are never taken for dates.
_DATE_SHAPE = re.compile(
    r"\s*(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}"          # 2024-01-31, 2024/1/31
    r"|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}"              # 31/01/2024, 1-31-2024
    r"|\d{1,2}[ -][A-Za-z]{3,9}\.?[ -],?\s*\d{2,4}"  # 31 Jan 2024, 31-Jan-24
    r"|[A-Za-z]{3,9}\.? \d{1,2},? \d{4})"          # Jan 31, 2024
)
_DATE_SAMPLE = 200     # distinct values a date format is chosen on
_DATE_CONFIRM = 2000   # distinct values it is then checked on

_TARGET_WORDS = frozenset({
    "target", "label", "labels", "class", "y", "outcome", "churn", "churned", "survived",
    "diagnosis", "fraud", "response", "default", "result", "tag",
})
_ID_NAME = re.compile(
    r"(?i:(^|[_\s.-])(id|uuid|guid|key|idx|index)$)"   # id, customer_id, Order ID
    r"|(?i:^(id|uuid|guid)[_\s.-])"                     # id_customer
    r"|[a-z](Id|ID)$"                                    # customerId, userID
    r"|(?i:^(row|record)[_\s-]?(num|number|no|nr)?$)"   # row, row_number
)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class NumericStats:
    min: float
    max: float
    mean: float
    std: float
    median: float


@dataclass(frozen=True)
class ValueCount:
    value: str
    count: int


@dataclass(frozen=True)
class ColumnProfile:
    name: str
    type: str                                   # one of COLUMN_TYPES
    missing_rate: float                         # 0..1
    distinct_count: int                         # distinct non-missing values
    numeric_stats: NumericStats | None = None   # numeric columns only
    top_values: tuple[ValueCount, ...] = ()     # non-numeric columns, most frequent first
                                                # (long values cut to MAX_SHOWN_CHARS)
    # Every value differs (an identifier such as a customer id or row number): useless
    # as a feature or target. Not on the wire (the proto has no such field).
    id_like: bool = False


@dataclass(frozen=True)
class TargetSuggestion:
    column: str
    task: str    # one of TASKS
    reason: str  # for people


@dataclass(frozen=True)
class DatasetProfile:
    row_count: int
    columns: tuple[ColumnProfile, ...] = ()
    target_suggestions: tuple[TargetSuggestion, ...] = field(default=())

    @property
    def column_types(self) -> dict[str, str]:
        """Column name -> type, in column order."""
        return {c.name: c.type for c in self.columns}

    def column(self, name: str) -> ColumnProfile:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (only str, int, float, bool, None, lists, dicts)."""
        data = asdict(self)
        data["columns"] = list(data["columns"])
        for column in data["columns"]:
            column["top_values"] = list(column["top_values"])
        data["target_suggestions"] = list(data["target_suggestions"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetProfile:
        columns = []
        for c in data.get("columns", ()):
            stats = c.get("numeric_stats")
            columns.append(ColumnProfile(
                name=c["name"], type=c["type"], missing_rate=float(c["missing_rate"]),
                distinct_count=int(c["distinct_count"]),
                numeric_stats=NumericStats(**{k: float(v) for k, v in stats.items()})
                if stats else None,
                top_values=tuple(ValueCount(str(v["value"]), int(v["count"]))
                                 for v in c.get("top_values", ())),
                id_like=bool(c.get("id_like", False)),
            ))
        return cls(
            row_count=int(data["row_count"]),
            columns=tuple(columns),
            target_suggestions=tuple(TargetSuggestion(t["column"], t["task"], t["reason"])
                                     for t in data.get("target_suggestions", ())),
        )


# --------------------------------------------------------------------------- helpers


def format_value(value: Any) -> str:
    """A value as text, the way profiles and rule messages show it: integral floats
    without `.0`, booleans as true/false, timestamps in ISO 8601."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v.is_integer() and abs(v) < 1e16:
            return str(int(v))
        return repr(v)
    if isinstance(value, pd.Timestamp):
        if value.tz is None and value == value.normalize():
            return value.strftime("%Y-%m-%d")
        return value.isoformat()
    return str(value)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(
        series.dtype)


def _is_datetime(series: pd.Series) -> bool:
    return pd.api.types.is_datetime64_any_dtype(series.dtype)


def _is_boolean_pair(values) -> bool:
    lowered = {str(v).strip().lower() for v in values}
    return len(lowered) == 2 and lowered in BOOLEAN_PAIRS


def _numeric_boolean(distinct: np.ndarray) -> bool:
    return len(distinct) == 2 and set(distinct.tolist()) == {0.0, 1.0}


def _date_format_for(distinct: pd.Series,
                     min_share: float = DATETIME_SHARE) -> tuple[str | None, float]:
    """Choose a date format on the first distinct values (text, no missing), then
    measure it on up to _DATE_CONFIRM of them; (None, 0.0) when fewer than
    `min_share` of them are dates of one format."""
    if distinct.empty:
        return None, 0.0
    sample = distinct.iloc[:_DATE_SAMPLE].astype("str")
    shaped = float(sample.str.match(_DATE_SHAPE.pattern).mean())
    if shaped == 0.0 or shaped < min_share:
        return None, 0.0
    best, best_share = None, 0.0
    for fmt in DATE_FORMATS:
        share = float(parse_dates(sample, fmt).notna().mean())
        if share > best_share:
            best, best_share = fmt, share
            if share == 1.0:
                break
    if best is None or best_share < min_share:
        return None, 0.0
    if len(distinct) > len(sample):
        best_share = float(parse_dates(distinct.iloc[:_DATE_CONFIRM], best).notna().mean())
    return (best, best_share) if best_share >= min_share else (None, 0.0)


def best_date_format(values: pd.Series, min_share: float = 0.0) -> tuple[str | None, float]:
    """The date format (of DATE_FORMATS) that parses most of `values` (text, no missing
    values), and the share of `values` it parses; (None, 0.0) when no format parses
    at least `min_share` of them (or none parses any)."""
    if values.empty:
        return None, 0.0
    fmt, _share = _date_format_for(pd.Series(values.unique()), min_share)
    if fmt is None:
        return None, 0.0
    share = float(parse_dates(values, fmt).notna().mean())
    return (fmt, share) if share >= min_share else (None, 0.0)


def parse_dates(values: pd.Series, fmt: str) -> pd.Series:
    """`values` (text) parsed with `fmt`; NaT where a value does not parse."""
    return pd.to_datetime(values.astype("str"), format=fmt, errors="coerce")


# --------------------------------------------------------------------------- inference


def infer_column_type(series: pd.Series) -> str:
    """The type of a column's values, one of COLUMN_TYPES:

    - boolean: a bool column, numbers that are exactly 0 and 1, or text that is
      exactly the two spellings of one of true/false, yes/no, 0/1, t/f, y/n
      (any case);
    - numeric: any other numeric column (numbers stay numeric, even codes);
    - datetime: a datetime column, or text where at least 95% of the values are
      dates of one format (only values shaped like dates count, never bare numbers);
    - text: free text: mostly values with spaces, not few distinct values, and long
      (mean length over 30) or mostly distinct;
    - categorical: other text (few distinct values, codes, identifiers). A column
      with no values at all is categorical (numeric if its dtype is numeric).
    """
    return _facts(series).type


@dataclass
class _Facts:
    type: str
    missing: int
    distinct: int
    top: tuple[ValueCount, ...] = ()     # most frequent values (not for many numbers)
    min_count: int = 0                   # rows of the rarest value (0: not counted)
    integral: bool = False               # numeric and every value is an integer
    id_like: bool = False
    finite: np.ndarray | None = None     # numeric: the finite values


def _shown(text: str) -> str:
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 1] + "…"


def _counted(counts: pd.Series) -> tuple[tuple[ValueCount, ...], int]:
    """(top values, rarest count) from a pandas value_counts()."""
    if counts.empty:
        return (), 0
    top = tuple(ValueCount(_shown(format_value(v)), int(c))
                for v, c in counts.iloc[:TOP_VALUES].items())
    return top, int(counts.min())


def _facts(series: pd.Series, name: str | None = None) -> _Facts:
    n = len(series)
    if pd.api.types.is_bool_dtype(series.dtype) and series.dtype != object:
        present = series.dropna()
        top, smallest = _counted(present.value_counts())
        return _Facts(BOOLEAN, n - len(present), present.nunique(), top, smallest)
    if _is_numeric(series):
        return _numeric_facts(series, name)
    if _is_datetime(series):
        present = series.dropna()
        top, smallest = _counted(present.value_counts())
        return _Facts(DATETIME, n - len(present), present.nunique(), top, smallest)
    return _text_facts(series, name)


def _numeric_facts(series: pd.Series, name: str | None) -> _Facts:
    n = len(series)
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    present = values[~np.isnan(values)]
    distinct = pd.unique(present)
    finite = present[np.isfinite(present)]
    integral = bool(len(finite)) and bool(np.all(finite == np.round(finite)))
    facts = _Facts(NUMERIC, n - len(present), len(distinct), integral=integral, finite=finite)
    if _numeric_boolean(distinct):
        facts.type = BOOLEAN
    if len(distinct) <= MAX_CLASSES:
        facts.top, facts.min_count = _counted(pd.Series(present).value_counts())
    if integral and len(distinct) == n and n >= ID_MIN_ROWS:
        # All distinct whole numbers: an id when named like one or when it counts rows
        # (sorted); an all-distinct amount such as an income is not an id.
        steps = np.diff(values)
        facts.id_like = bool(name and _ID_NAME.search(name)) or bool(
            np.all(steps > 0) or np.all(steps < 0))
    return facts


def _text_facts(series: pd.Series, name: str | None) -> _Facts:
    n = len(series)
    if series.dtype != "str":
        series = series.astype("str")
    values = pc.drop_null(pa.array(series, from_pandas=True))
    empty = pc.equal(values, "")
    if pc.any(empty).as_py():
        values = values.filter(pc.invert(empty))
    m = len(values)
    facts = _Facts(CATEGORICAL, n - m, 0)
    if m == 0:
        return facts
    counted = pc.value_counts(values)
    distinct, counts = counted.field("values"), counted.field("counts").to_numpy()
    d = len(counts)
    facts.distinct = d
    order = np.argsort(-counts, kind="stable")[:TOP_VALUES]
    facts.top = tuple(ValueCount(_shown(str(v)), int(c)) for v, c in
                      zip(distinct.take(pa.array(order)).to_pylist(), counts[order], strict=False))
    facts.min_count = int(counts.min())

    if d <= 2 * len(BOOLEAN_TOKENS) and _is_boolean_pair(distinct.to_pylist()):
        facts.type = BOOLEAN
        return facts
    # Distinct values come in order of first appearance.
    firsts = pd.Series(distinct.slice(0, _DATE_CONFIRM).to_pylist(), dtype="str")
    if _date_format_for(firsts)[0] is not None:
        facts.type = DATETIME
        return facts
    weights = counts.astype("float64")
    mean_len = float(np.dot(pc.utf8_length(distinct).to_numpy().astype("float64"),
                            weights) / m)
    space_share = float(np.dot(
        pc.match_substring(distinct, " ").to_numpy(zero_copy_only=False).astype("float64"),
        weights) / m)
    low_cardinality = d <= max(20, 0.05 * m) and d <= 0.5 * m
    if not low_cardinality and space_share >= 0.5 and (mean_len > 30 or d / m > 0.5):
        facts.type = TEXT
    elif d == m and m > 1 and facts.missing == 0 and (
            m >= ID_MIN_ROWS or bool(name and _ID_NAME.search(name))):
        facts.id_like = True
    return facts


# --------------------------------------------------------------------------- profile


def _numeric_stats(finite: np.ndarray | None) -> NumericStats | None:
    if finite is None or len(finite) == 0:
        return None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    stats = (float(finite.min()), float(finite.max()), float(finite.mean()), std,
             float(np.median(finite)))
    if not all(math.isfinite(v) for v in stats):  # overflow in mean/std of huge values
        stats = tuple(v if math.isfinite(v) else 0.0 for v in stats)
    return NumericStats(*stats)


def profile(frame: pd.DataFrame) -> DatasetProfile:
    """Profile every column of `frame` and suggest training targets (best first)."""
    n = len(frame)
    columns: list[ColumnProfile] = []
    facts: list[_Facts] = []
    for position in range(frame.shape[1]):
        name = str(frame.columns[position])
        f = _facts(frame.iloc[:, position], name)
        facts.append(f)
        columns.append(ColumnProfile(
            name=name,
            type=f.type,
            missing_rate=(f.missing / n) if n else 0.0,
            distinct_count=f.distinct,
            numeric_stats=_numeric_stats(f.finite) if f.type == NUMERIC else None,
            top_values=() if f.type == NUMERIC else f.top,
            id_like=f.id_like,
        ))
    suggestions = _suggest_targets(columns, facts)
    return DatasetProfile(row_count=n, columns=tuple(columns),
                          target_suggestions=tuple(suggestions))


# --------------------------------------------------------------------------- targets


def _name_words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return {w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w}


def _suggest_targets(columns: list[ColumnProfile],
                     facts: list[_Facts]) -> list[TargetSuggestion]:
    """Best first: columns named like a target, then the last column, then
    classification candidates, then later columns before earlier ones."""
    ranked: list[tuple[tuple[int, int, int, int], TargetSuggestion]] = []
    last = len(columns) - 1
    for position, (column, f) in enumerate(zip(columns, facts, strict=False)):
        if column.id_like or column.distinct_count < 2:
            continue
        if column.missing_rate > MAX_TARGET_MISSING:
            continue
        task, why = _target_task(column, f)
        if task is None:
            continue
        hinted = bool(_name_words(column.name) & _TARGET_WORDS)
        reasons = []
        if hinted:
            reasons.append("named like a target")
        if position == last:
            reasons.append("last column, where the target usually is")
        reasons.append(why)
        rank = (int(hinted), int(position == last), int(task == CLASSIFICATION), position)
        ranked.append((rank, TargetSuggestion(column.name, task, "; ".join(reasons))))
    ranked.sort(key=lambda item: item[0], reverse=True)
    return [suggestion for _rank, suggestion in ranked[:MAX_TARGET_SUGGESTIONS]]


def _target_task(column: ColumnProfile, f: _Facts) -> tuple[str | None, str]:
    d = column.distinct_count
    smallest = f.min_count
    if column.type == BOOLEAN:
        if smallest >= MIN_CLASS_ROWS:
            return CLASSIFICATION, "two classes (true/false)"
        return None, ""
    if column.type == CATEGORICAL:
        if 2 <= d <= MAX_CLASSES and smallest >= MIN_CLASS_ROWS:
            return CLASSIFICATION, (f"categorical with {d} classes, each with at least "
                                    f"{MIN_CLASS_ROWS} rows")
        return None, ""
    if column.type == NUMERIC:
        if f.integral and d <= MAX_INTEGER_CLASSES:
            if d >= 2 and smallest >= MIN_CLASS_ROWS:
                return CLASSIFICATION, f"whole numbers with {d} distinct values, as classes"
            return None, ""
        if d >= 3:
            return REGRESSION, f"numeric with {d} distinct values"
    return None, ""
