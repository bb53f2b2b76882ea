"""Predicting with a fitted pipeline, and checking prediction input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


from .tasks import CLASSIFICATION



def rows_to_columns(rows: Sequence[Mapping[str, Any]],
                    feature_columns: Sequence[str]) -> dict[str, list]:
    """JSON-like rows as column -> values, one column per feature in training order;
    missing keys become None (what a compiled model takes, `compiled.takes_columns`)."""
    return {c: [row.get(c) for row in rows] for c in feature_columns}


def rows_to_frame(rows: Sequence[Mapping[str, Any]], feature_columns: Sequence[str]) -> pd.DataFrame:
    """A frame of JSON-like rows (values as sent: numbers, strings, booleans, None),
    one column per feature in training order; missing keys become None."""
    return columns_to_frame(rows_to_columns(rows, feature_columns), feature_columns,
                            len(rows))


def columns_to_frame(columns: Mapping[str, Sequence], feature_columns: Sequence[str],
                     n_rows: int) -> pd.DataFrame:
    """A frame of columns as sent (lists, or arrays as a columnar request gives them),
    one per feature in training order. Float arrays stay float64, other columns are
    object dtype so that nothing is converted before the pipeline's own schema
    coercion."""
    def series(values) -> pd.Series:
        numbers = isinstance(values, np.ndarray) and values.dtype.kind == "f"
        return pd.Series(values, dtype=values.dtype if numbers else object)
    return pd.DataFrame({c: series(columns[c]) for c in feature_columns}, index=range(n_rows))


def predict_frame(pipeline, frame: pd.DataFrame, task: str) -> dict[str, Any]:
    """Predictions of a pipeline on a frame (or of a compiled model on a mapping of
    column -> values, `compiled.takes_columns`). Classification: {"labels": list[str],
    "probabilities": ndarray (rows x classes), "classes": list[str]}; the label is the
    most probable class.
    Regression: {"values": ndarray of floats}."""
    if task == CLASSIFICATION:
        proba = np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
        classes = [str(c) for c in pipeline.classes_]
        labels = [classes[i] for i in np.argmax(proba, axis=1)] if len(proba) else []
        return {"labels": labels, "probabilities": proba, "classes": classes}
    return {"values": np.asarray(pipeline.predict(frame), dtype=np.float64).reshape(-1)}
