"""Data sets: reading uploaded files, user validation rules and profiling.

Plain Python (pandas, pyarrow, numpy); no transport or storage code. Bad input
raises `nbml_server.errors.InvalidArgument` with a stable reason.
"""

from .profiling import (
    BOOLEAN,
    CATEGORICAL,
    CLASSIFICATION,
    COLUMN_TYPES,
    DATETIME,
    NUMERIC,
    REGRESSION,
    TASKS,
    TEXT,
    ColumnProfile,
    DatasetProfile,
    NumericStats,
    TargetSuggestion,
    ValueCount,
    best_date_format,
    format_value,
    infer_column_type,
    parse_dates,
    profile,
)
from .reading import (
    FORMAT_CSV,
    FORMAT_PARQUET,
    MAX_COLUMNS,
    guess_format,
    read_canonical,
    read_table,
    to_csv_bytes,
    write_canonical,
)
from .rules import ColumnRule, ValidationRules, check_rules

__all__ = [
    "BOOLEAN", "CATEGORICAL", "CLASSIFICATION", "COLUMN_TYPES", "DATETIME", "NUMERIC",
    "REGRESSION", "TASKS", "TEXT",
    "ColumnProfile", "DatasetProfile", "NumericStats", "TargetSuggestion", "ValueCount",
    "best_date_format", "format_value", "infer_column_type", "parse_dates", "profile",
    "FORMAT_CSV", "FORMAT_PARQUET", "MAX_COLUMNS", "guess_format", "read_canonical",
    "read_table", "to_csv_bytes", "write_canonical",
    "ColumnRule", "ValidationRules", "check_rules",
]
