"""A user's validation rules for a data set (nbml.v1.ValidationRules), and checking them.

Row numbers in messages: "row N" is the data row at position N - 2 of the frame,
i.e. the header counts as row 1 and the first data row is row 2. For a CSV file
without blank lines or line breaks inside quoted cells, that is the line number a
text editor shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...errors import FieldViolation, InvalidArgument
from .profiling import (
    BOOLEAN,
    BOOLEAN_PAIRS,
    BOOLEAN_TOKENS,
    CATEGORICAL,
    COLUMN_TYPES,
    DATETIME,
    NUMERIC,
    TEXT,
    best_date_format,
    format_value,
    parse_dates,
)

REASON = "RULES_VIOLATED"
# Values listed in one description at most.
_SHOWN_VALUES = 5


@dataclass(frozen=True)
class ColumnRule:
    """Constraints on one column's values. `min`/`max` are inclusive bounds for
    numbers; `allowed_values` (when not empty) are the only values allowed, compared
    as text (numbers numerically when both sides are numbers); `not_null` forbids
    missing values. Missing values are only checked by `not_null`."""

    column: str
    min: float | None = None
    max: float | None = None
    allowed_values: tuple[str, ...] = ()
    not_null: bool = False

    def __post_init__(self):
        object.__setattr__(self, "allowed_values", tuple(self.allowed_values))

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "min": self.min, "max": self.max,
                "allowed_values": list(self.allowed_values), "not_null": self.not_null}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnRule:
        return cls(column=data["column"], min=data.get("min"), max=data.get("max"),
                   allowed_values=tuple(data.get("allowed_values", ())),
                   not_null=bool(data.get("not_null", False)))


@dataclass(frozen=True)
class ValidationRules:
    """`required_columns` must be present; `column_types` maps a column to the type
    (one of COLUMN_TYPES) its values must have; `column_rules` constrain values."""

    required_columns: tuple[str, ...] = ()
    column_types: Mapping[str, str] = field(default_factory=dict)
    column_rules: tuple[ColumnRule, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "required_columns", tuple(self.required_columns))
        object.__setattr__(self, "column_types", dict(self.column_types))
        object.__setattr__(self, "column_rules", tuple(self.column_rules))

    def __hash__(self) -> int:
        return hash((self.required_columns, tuple(sorted(self.column_types.items())),
                     self.column_rules))

    @property
    def empty(self) -> bool:
        return not (self.required_columns or self.column_types or self.column_rules)

    def to_dict(self) -> dict[str, Any]:
        return {"required_columns": list(self.required_columns),
                "column_types": dict(self.column_types),
                "column_rules": [r.to_dict() for r in self.column_rules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationRules:
        return cls(required_columns=tuple(data.get("required_columns", ())),
                   column_types=dict(data.get("column_types", {})),
                   column_rules=tuple(ColumnRule.from_dict(r)
                                      for r in data.get("column_rules", ())))


# --------------------------------------------------------------------------- checking


def check_rules(frame: pd.DataFrame, rules: ValidationRules,
                inferred_types: Mapping[str, str]) -> None:
    """Check `frame` against `rules`; raise one InvalidArgument (reason RULES_VIOLATED)
    listing every violation, or return None when all rules hold.

    `inferred_types` is column -> type as profiling inferred it (for
    `DatasetProfile.column_types`); it decides the fast path and the wording. A rule
    that names a column the frame does not have is itself a violation. Declared
    types "categorical" and "text" accept any column (any values can be treated
    as categories or text); "numeric", "boolean" and "datetime" are checked value by
    value.
    """
    if rules.empty:
        return
    violations: list[FieldViolation] = []
    columns = {str(c): i for i, c in enumerate(frame.columns)}

    for i, name in enumerate(rules.required_columns):
        where = f"rules.required_columns[{i}]"
        if not name or not name.strip():
            violations.append(FieldViolation(where, "the column name is empty"))
        elif name not in columns:
            violations.append(FieldViolation(where, f"column {name!r} is missing"
                                             + _did_you_mean(name, columns)))

    for name, wanted in rules.column_types.items():
        where = f"rules.column_types[{name}]"
        if wanted not in COLUMN_TYPES:
            violations.append(FieldViolation(
                where, f"{wanted!r} is not a column type; use one of "
                + ", ".join(COLUMN_TYPES)))
            continue
        if name not in columns:
            violations.append(FieldViolation(
                where, f"column {name!r} is not in the data set" + _did_you_mean(name, columns)))
            continue
        problem = _type_problem(frame.iloc[:, columns[name]], name, wanted,
                                inferred_types.get(name))
        if problem:
            violations.append(FieldViolation(where, problem))

    for i, rule in enumerate(rules.column_rules):
        violations.extend(_rule_problems(frame, columns, i, rule))

    if violations:
        count = len(violations)
        head = violations[0]
        message = (f"the data set breaks {count} validation rule"
                   f"{'s' if count != 1 else ''}: {head.field}: {head.description}"
                   + (f" (and {count - 1} more)" if count > 1 else ""))
        raise InvalidArgument(message, violations, reason=REASON)


def _row(position: int) -> int:
    return position + 2


def _show(value: Any) -> str:
    text = format_value(value)
    if isinstance(value, str):
        return repr(text)
    return text


def _did_you_mean(name: str, columns: Iterable[str]) -> str:
    folded = name.strip().casefold()
    for column in columns:
        if column.casefold() == folded:
            return f" (there is a column {column!r})"
    return ""


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _type_problem(series: pd.Series, name: str, wanted: str, inferred: str | None) -> str:
    if wanted in (CATEGORICAL, TEXT) or inferred == wanted:
        return ""
    looks = f"; it looks {inferred}" if inferred else ""
    present = series.notna().to_numpy()
    if wanted == NUMERIC:
        if pd.api.types.is_numeric_dtype(series.dtype):
            return ""
        numbers = pd.to_numeric(series.astype("str"), errors="coerce").notna().to_numpy()
        bad = present & ~numbers
        if not bad.any():
            return ""
        first = _first(bad)
        return (f"column {name!r} must be numeric, but {_count(bad.sum(), 'value')} "
                f"{'is' if bad.sum() == 1 else 'are'} not a number (first at row "
                f"{_row(first)}: {_show(series.iloc[first])}){looks}")
    if wanted == BOOLEAN:
        if pd.api.types.is_bool_dtype(series.dtype):
            return ""
        if pd.api.types.is_numeric_dtype(series.dtype):
            bad = present & ~series.isin([0, 1]).to_numpy()
        else:
            lowered = series.astype("str").str.strip().str.lower()
            bad = present & ~lowered.isin(BOOLEAN_TOKENS).to_numpy()
            if not bad.any():
                spelled = set(lowered[present].unique())
                if not any(spelled <= pair for pair in BOOLEAN_PAIRS):
                    shown = ", ".join(repr(v) for v in sorted(spelled)[:_SHOWN_VALUES])
                    return (f"column {name!r} must be boolean, but it mixes spellings of "
                            f"true/false ({shown}); use one pair such as yes/no")
        if not bad.any():
            return ""
        first = _first(bad)
        return (f"column {name!r} must be boolean, but {_count(bad.sum(), 'value')} "
                f"{'is' if bad.sum() == 1 else 'are'} not true/false, yes/no, 0/1 "
                f"(first at row {_row(first)}: {_show(series.iloc[first])}){looks}")
    if wanted == DATETIME:
        if pd.api.types.is_datetime64_any_dtype(series.dtype):
            return ""
        if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(
                series.dtype):
            return f"column {name!r} must be datetime, but it holds numbers{looks}"
        text = series.astype("str")
        fmt, _share = best_date_format(text[present])
        parsed = (parse_dates(text, fmt).notna().to_numpy() if fmt
                  else np.zeros(len(series), dtype=bool))
        bad = present & ~parsed
        if not bad.any():
            return ""
        first = _first(bad)
        return (f"column {name!r} must be datetime, but {_count(bad.sum(), 'value')} "
                f"{'is' if bad.sum() == 1 else 'are'} not a date"
                + (f" in the format {fmt}" if fmt else "")
                + f" (first at row {_row(first)}: {_show(series.iloc[first])}){looks}")
    return ""  # pragma: no cover


def _count(n: int, noun: str) -> str:
    return f"{int(n)} {noun}{'s' if n != 1 else ''}"


def _rule_problems(frame: pd.DataFrame, columns: Mapping[str, int], i: int,
                   rule: ColumnRule) -> list[FieldViolation]:
    where = f"rules.column_rules[{i}]"
    name = rule.column
    problems: list[FieldViolation] = []
    if not name or not name.strip():
        return [FieldViolation(f"{where}.column", "the column name is empty")]
    for bound in ("min", "max"):
        value = getattr(rule, bound)
        if value is not None and (not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            problems.append(FieldViolation(f"{where}.{bound}",
                                           f"{bound} must be a finite number, not {value!r}"))
    if problems:
        return problems
    if rule.min is not None and rule.max is not None and rule.min > rule.max:
        return [FieldViolation(where, f"min {format_value(rule.min)} is greater than max "
                                      f"{format_value(rule.max)}")]
    if name not in columns:
        return [FieldViolation(f"{where}.column", f"column {name!r} is not in the data set"
                               + _did_you_mean(name, columns))]

    series = frame.iloc[:, columns[name]]
    missing = series.isna().to_numpy()
    if rule.not_null and missing.any():
        problems.append(FieldViolation(
            f"{where}.not_null",
            f"column {name!r} has {_count(missing.sum(), 'missing value')} "
            f"(first at row {_row(_first(missing))})"))

    if rule.min is not None or rule.max is not None:
        problems.extend(_bound_problems(series, missing, name, rule, where))

    if rule.allowed_values:
        problem = _allowed_problem(series, missing, name, rule.allowed_values)
        if problem:
            problems.append(FieldViolation(f"{where}.allowed_values", problem))
    return problems


def _bound_problems(series: pd.Series, missing: np.ndarray, name: str, rule: ColumnRule,
                    where: str) -> list[FieldViolation]:
    field_name = f"{where}.min" if rule.min is not None else f"{where}.max"
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return [FieldViolation(field_name, f"column {name!r} holds dates; min and max "
                                           "apply to numeric columns")]
    if pd.api.types.is_numeric_dtype(series.dtype):
        numbers = series.to_numpy(dtype="float64", na_value=np.nan)
    else:
        numbers = pd.to_numeric(series.astype("str"), errors="coerce").to_numpy(
            dtype="float64", na_value=np.nan)
        not_numbers = ~missing & np.isnan(numbers)
        if not_numbers.any():
            first = _first(not_numbers)
            return [FieldViolation(field_name, (
                f"column {name!r} is not numeric, so min/max cannot be checked: "
                f"{_count(not_numbers.sum(), 'value')} {'is' if not_numbers.sum() == 1 else 'are'}"
                f" not a number (first at row {_row(first)}: {_show(series.iloc[first])})"))]
    problems = []
    with np.errstate(invalid="ignore"):
        for bound, value, mask, side in (
                ("min", rule.min, numbers < (rule.min if rule.min is not None else 0),
                 "below the minimum"),
                ("max", rule.max, numbers > (rule.max if rule.max is not None else 0),
                 "above the maximum")):
            if value is None or not mask.any():
                continue
            first = _first(mask)
            problems.append(FieldViolation(f"{where}.{bound}", (
                f"column {name!r} has {_count(mask.sum(), 'value')} {side} "
                f"{format_value(value)} (first at row {_row(first)}: "
                f"{format_value(series.iloc[first])})")))
    return problems


def _allowed_problem(series: pd.Series, missing: np.ndarray, name: str,
                     allowed: tuple[str, ...]) -> str:
    allowed_text = [a.strip() for a in allowed]
    if pd.api.types.is_bool_dtype(series.dtype):
        folded = {a.lower() for a in allowed_text}
        ok = series.map(lambda v: format_value(v) in folded).to_numpy(dtype=bool)
    elif pd.api.types.is_numeric_dtype(series.dtype):
        numbers = pd.to_numeric(pd.Series(allowed_text, dtype="str"), errors="coerce")
        ok = series.isin(numbers.dropna().to_numpy(dtype="float64")).to_numpy()
    elif pd.api.types.is_datetime64_any_dtype(series.dtype):
        ok = series.map(format_value).isin(allowed_text).to_numpy()
    else:
        ok = series.astype("str").isin(allowed_text).to_numpy()
    bad = ~missing & ~ok
    if not bad.any():
        return ""
    first = _first(bad)
    shown_allowed = ", ".join(repr(a) for a in allowed_text[:10]) + (
        ", ..." if len(allowed_text) > 10 else "")
    text = (f"value {format_value(series.iloc[first])!r} at row {_row(first)} is not "
            f"allowed in column {name!r} (allowed: {shown_allowed})")
    if bad.sum() > 1:
        distinct = pd.unique(series[bad].map(format_value))
        shown_bad = ", ".join(repr(v) for v in distinct[:_SHOWN_VALUES]) + (
            ", ..." if len(distinct) > _SHOWN_VALUES else "")
        text += f"; {int(bad.sum())} values in all are not allowed: {shown_bad}"
    return text
