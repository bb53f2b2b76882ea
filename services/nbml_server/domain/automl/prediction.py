"""Predicting with a fitted pipeline, and checking prediction input."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nbml_server.errors import FieldViolation, InvalidArgument

from .tasks import CLASSIFICATION

PREDICTION_FIELD = "rows"


def check_prediction_columns(frame_columns: Iterable[str], feature_columns: Sequence[str],
                             *, field: str = PREDICTION_FIELD) -> None:
    """Raises InvalidArgument (PREDICTION_COLUMNS_MISMATCH) with one violation per
    missing and per unknown column, unless the columns are exactly the features."""
    given = [str(c) for c in frame_columns]
    expected = [str(c) for c in feature_columns]
    given_set, expected_set = set(given), set(expected)
    violations = [FieldViolation(field, f"missing column '{c}'")
                  for c in expected if c not in given_set]
    listing = ", ".join(expected)
    violations += [FieldViolation(field, f"unknown column '{c}'; expected: {listing}")
                   for c in dict.fromkeys(given) if c not in expected_set]
    if violations:
        raise InvalidArgument("rows do not match the model's columns: "
                              + "; ".join(v.description for v in violations),
                              violations, reason="PREDICTION_COLUMNS_MISMATCH")


def rows_to_frame(rows: Sequence[Mapping[str, Any]], feature_columns: Sequence[str]) -> pd.DataFrame:
    """A frame of JSON-like rows (values as sent: numbers, strings, booleans, None),
    one column per feature in training order; missing keys become None. Columns
    are object dtype so that nothing is converted before the pipeline's own
    schema coercion."""
    return pd.DataFrame({c: pd.Series([row.get(c) for row in rows], dtype=object)
                         for c in feature_columns}, index=range(len(rows)))


def predict_frame(pipeline, frame: pd.DataFrame, task: str) -> dict[str, Any]:
    """Classification: {"labels": list[str], "probabilities": ndarray (rows x
    classes), "classes": list[str]}; the label is the most probable class.
    Regression: {"values": ndarray of floats}."""
    if task == CLASSIFICATION:
        proba = np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
        classes = [str(c) for c in pipeline.classes_]
        labels = [classes[i] for i in np.argmax(proba, axis=1)] if len(proba) else []
        return {"labels": labels, "probabilities": proba, "classes": classes}
    return {"values": np.asarray(pipeline.predict(frame), dtype=np.float64).reshape(-1)}
