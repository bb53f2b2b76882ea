"""Predictions from deployed models, with the loaded models kept hot in an LRU cache
and concurrent requests for one model predicted together (`batching`)."""

import itertools
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nbml_server.domain import automl
from nbml_server.domain.batching import MicroBatcher
from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.endpoints import Endpoints
from nbml_server.domain.model_registry import ModelRegistry
from nbml_server.domain.recent import RecentReads
from nbml_server.errors import FieldViolation, InvalidArgument

log = logging.getLogger(__name__)

MAX_REPORTED_VIOLATIONS = 20


@dataclass(frozen=True)
class Prediction:
    label: str
    value: float
    probabilities: dict[str, float]


@dataclass(frozen=True)
class PredictionColumns:
    """The predictions of many rows, column by column (no object per row)."""

    labels: list[str]  # classification: the predicted class of each row; regression: empty
    values: np.ndarray  # regression: the value; classification: the label's probability
    classes: list[str]  # classification: the columns of `probabilities`; regression: empty
    probabilities: np.ndarray  # rows x classes (no columns for regression)


def _in_background(work: Callable[[], None]) -> None:
    threading.Thread(target=work, daemon=True, name="compile-model").start()


class ModelCache:
    """Loaded models by model id; the least recently used is dropped past `capacity`.

    A model serves as its pipeline as soon as it is loaded, and is then compiled
    (`automl.compile_model`: the same predictions, a fraction of the time on few rows)
    by `run_later` (a background thread), which swaps the compiled model in: the first
    prediction after a deployment does not wait for the compilation (a second for a
    300-tree forest)."""

    def __init__(self, registry: ModelRegistry, capacity: int,
                 run_later: Callable[[Callable[[], None]], None] = _in_background):
        self.registry = registry
        self.capacity = capacity
        self.run_later = run_later
        self._loaded: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def pipeline(self, model: dict):
        model_id = model["model_id"]
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
        pipeline = automl.load_model(self.registry.artifact(model))
        with self._lock:
            self._loaded[model_id] = pipeline
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
        self.run_later(lambda: self._compile(model_id, model["task"], pipeline))
        return pipeline

    def _compile(self, model_id: str, task: str, pipeline) -> None:
        compiled = automl.compile_model(pipeline, task)
        log.info("model %s: %s", model_id, "compiled inference" if compiled is not None
                 else "served by its pipeline (it does not compile)")
        if compiled is None:
            return
        with self._lock:
            if self._loaded.get(model_id) is pipeline:  # not evicted meanwhile
                self._loaded[model_id] = compiled


def _refused(violations: list[FieldViolation], what: str, reason: str) -> InvalidArgument:
    shown = violations[:MAX_REPORTED_VIOLATIONS]
    return InvalidArgument(f"{len(shown)} problem(s) with the {what}, first: {shown[0].field}: "
                           f"{shown[0].description}", shown, reason=reason)


def check_row_count(n_rows: int, max_rows: int, field: str) -> None:
    """A request's rows (in `field`: rows or columns) must be at most `max_rows`."""
    if n_rows > max_rows:
        raise InvalidArgument.of(field, f"{n_rows} rows, at most {max_rows} per request",
                                 reason="TOO_MANY_ROWS")


def check_rows(rows: list[dict], feature_columns: list[str]) -> None:
    """Every row must have exactly the model's feature columns."""
    if not rows:
        raise InvalidArgument.of("rows", "at least one row is needed", reason="NO_ROWS")
    expected = set(feature_columns)
    violations = []
    for index, row in enumerate(rows):
        keys = set(row)
        for column in sorted(expected - keys):
            violations.append(FieldViolation(f"rows[{index}].{column}",
                                             f"missing column {column!r}"))
        for column in sorted(keys - expected):
            violations.append(FieldViolation(
                f"rows[{index}].{column}",
                f"unknown column {column!r}; expected: {', '.join(feature_columns)}"))
        if len(violations) >= MAX_REPORTED_VIOLATIONS:
            break
    if violations:
        raise _refused(violations, "rows", "PREDICTION_COLUMNS_MISMATCH")


def check_columns(columns: Mapping[str, Sequence], feature_columns: list[str]) -> int:
    """A columnar request must have exactly the model's feature columns, all of one
    length: the number of rows, returned."""
    expected = set(feature_columns)
    violations = [FieldViolation(f"columns.{c}", f"missing column {c!r}")
                  for c in feature_columns if c not in columns]
    violations += [FieldViolation(f"columns.{c}", f"unknown column {c!r}; expected: "
                                  f"{', '.join(feature_columns)}")
                   for c in sorted(set(columns) - expected)]
    if violations:
        raise _refused(violations, "columns", "PREDICTION_COLUMNS_MISMATCH")
    lengths = {c: len(columns[c]) for c in feature_columns}
    # The odd ones out are the columns whose length most columns do not have.
    n_rows = Counter(lengths.values()).most_common(1)[0][0]
    reference = next(c for c, length in lengths.items() if length == n_rows)
    uneven = [FieldViolation(f"columns.{c}", f"{length} value(s), where columns.{reference} "
                             f"has {n_rows}")
              for c, length in lengths.items() if length != n_rows]
    if uneven:
        raise _refused(uneven, "columns", "COLUMN_LENGTHS_DIFFER")
    if not n_rows:
        raise InvalidArgument.of("columns", "at least one row is needed", reason="NO_ROWS")
    return n_rows


def check_values(columns: Mapping[str, Sequence], column_types: Mapping[str, str],
                 field: Callable[[str, int], str]) -> None:
    """Every value must fit its column's type (`automl.value_problems`);
    `field(column, row)` is where a value is in the request."""
    problems = ((column, row, problem) for column, kind in column_types.items()
                for row, problem in automl.value_problems(columns[column], kind))
    violations = [FieldViolation(field(column, row), problem) for column, row, problem
                  in itertools.islice(problems, MAX_REPORTED_VIOLATIONS)]
    if violations:
        raise _refused(violations, "values", "PREDICTION_VALUE_TYPE")


def prediction_columns(pipeline, model: dict, data) -> PredictionColumns:
    """`data`: a DataFrame, or a mapping of column -> values for a compiled model."""
    if isinstance(data, pd.DataFrame):
        data = data[model["feature_columns"]]
    result = automl.predict_frame(pipeline, data, model["task"])
    if "values" in result:
        values = result["values"]
        return PredictionColumns([], values, [], np.empty((len(values), 0)))
    probabilities = result["probabilities"]
    return PredictionColumns(result["labels"], probabilities.max(axis=1), result["classes"],
                             probabilities)


def predictions_of(pipeline, model: dict, data) -> list[Prediction]:
    """`prediction_columns` as one Prediction per row."""
    columns = prediction_columns(pipeline, model, data)
    if not columns.classes:
        return [Prediction("", value, {}) for value in columns.values.tolist()]
    return [Prediction(label, value, dict(zip(columns.classes, p))) for label, value, p
            in zip(columns.labels, columns.values.tolist(), columns.probabilities.tolist())]


class Predictor:
    def __init__(self, endpoints: Endpoints, models: ModelRegistry, datasets: DatasetCatalog,
                 cache: ModelCache, max_rows: int = 100_000):
        """`max_rows`: rows per request, and per slice of a batch prediction."""
        self.endpoints = endpoints
        self.models = models
        self.datasets = datasets
        self.cache = cache
        self.max_rows = max_rows
        self.batcher = MicroBatcher()
        # Model records never change; a deleted job's models are refused here within
        # `recent.RECENT_READ_SECONDS`.
        self._recent_models = RecentReads()

    def predict(self, user_id: str, endpoint_id: str, rows: list[dict]) -> tuple[str, list]:
        model = self._model(user_id, endpoint_id)
        columns = model["feature_columns"]
        check_rows(rows, columns)
        pipeline = self.cache.pipeline(model)
        check_values(automl.rows_to_columns(rows, columns), automl.column_types(pipeline),
                     lambda column, row: f"rows[{row}].{column}")

        def predict(all_rows: list[dict]) -> list[Prediction]:
            data = (automl.rows_to_columns(all_rows, columns) if automl.takes_columns(pipeline)
                    else automl.rows_to_frame(all_rows, columns))
            return predictions_of(pipeline, model, data)
        return model["model_id"], self.batcher.run(model["model_id"], rows, predict)

    def predict_columns(self, user_id: str, endpoint_id: str,
                        columns: Mapping[str, Sequence]) -> tuple[str, PredictionColumns]:
        """Predictions of a columnar request: column -> values in row order (lists, or
        arrays: float for numbers, NaN where missing; object for text, None where
        missing). Not micro-batched: batching pays on requests of a few rows, where a
        call's fixed cost dominates, and columnar requests are for many rows."""
        model = self._model(user_id, endpoint_id)
        features = model["feature_columns"]
        n_rows = check_columns(columns, features)
        pipeline = self.cache.pipeline(model)
        check_values(columns, automl.column_types(pipeline),
                     lambda column, row: f"columns.{column}[{row}]")
        data = (columns if automl.takes_columns(pipeline)
                else automl.columns_to_frame(columns, features, n_rows))
        return model["model_id"], prediction_columns(pipeline, model, data)

    def _model(self, user_id: str, endpoint_id: str) -> dict:
        model_id = self.endpoints.get(user_id, endpoint_id)["model_id"]
        return self._recent_models.get((user_id, model_id),
                                       lambda: self.models.get(user_id, model_id))

    def deploy(self, user_id: str, model: dict, display_name: str) -> dict:
        """Creates an endpoint for `model` once the model loads here: a model that cannot
        be served (an artifact outside the allowed types, say) gets no endpoint, and the
        first predictions do not wait for the load."""
        self.cache.pipeline(model)
        return self.endpoints.create(user_id, model, display_name)

    def redeploy(self, user_id: str, endpoint_id: str, model: dict | None,
                 display_name: str | None) -> dict:
        """Updates the endpoint; a new model is loaded first, so no request waits for it
        (or fails on it) after the switch."""
        self.endpoints.get(user_id, endpoint_id)  # not found: nothing to load
        if model is not None:
            self.cache.pipeline(model)
        return self.endpoints.update(user_id, endpoint_id, model=model,
                                     display_name=display_name)

    def batch_predict(self, user_id: str, endpoint_id: str, dataset_id: str) -> dict:
        model = self._model(user_id, endpoint_id)
        dataset = self.datasets.get(user_id, dataset_id)
        frame = self.datasets.load_frame(dataset)
        missing = [c for c in model["feature_columns"] if c not in frame.columns]
        if missing:
            raise InvalidArgument(
                f"datasets/{dataset_id} lacks the model's columns: {', '.join(missing)}",
                [FieldViolation("dataset", f"missing column {c!r}") for c in missing],
                reason="PREDICTION_COLUMNS_MISMATCH")
        predictions, probabilities = self._predict_in_slices(model, frame)
        output = frame.copy()
        output["prediction"] = predictions
        for label in model["classes"]:
            output[f"probability_{label}"] = probabilities.get(label, 0.0)
        name = f"{dataset['display_name'] or dataset_id} predictions"
        return self.datasets.add(user_id, output, display_name=name[:200], format="parquet",
                                 source_endpoint=f"endpoints/{endpoint_id}")

    def _predict_in_slices(self, model: dict, frame: pd.DataFrame
                           ) -> tuple[np.ndarray | list, dict[str, np.ndarray]]:
        """A data set's predictions (labels, or values for regression) and class
        probabilities (class -> column), `max_rows` rows at a time, as arrays: a
        Prediction object per row would take more memory than the data set itself."""
        pipeline = self.cache.pipeline(model)
        parts = [prediction_columns(pipeline, model, frame.iloc[start:start + self.max_rows])
                 for start in range(0, len(frame), self.max_rows)]
        if model["task"] == "regression":
            return np.concatenate([part.values for part in parts]), {}
        labels = [label for part in parts for label in part.labels]
        return labels, {label: np.concatenate([part.probabilities[:, part.classes.index(label)]
                                               for part in parts])
                        for label in parts[0].classes}
