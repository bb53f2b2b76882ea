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
    one column per feature in training order; missing keys become None. Columns
    are object dtype so that nothing is converted before the pipeline's own
    schema coercion."""
    return pd.DataFrame({c: pd.Series(values, dtype=object)
                         for c, values in rows_to_columns(rows, feature_columns).items()},
                        index=range(len(rows)))


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
