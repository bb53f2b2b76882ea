"""The predictor's columnar messages: ColumnValues -> numpy arrays, PredictionColumns out."""

import math

import numpy as np
import pytest

from nbml.v1 import predictor_service_pb2 as pb
from nbml_server.domain.serving import PredictionColumns
from nbml_server.errors import InvalidArgument
from nbml_server.predictor.servicer import column_arrays, prediction_columns_message


def request(**columns) -> pb.PredictRequest:
    return pb.PredictRequest(endpoint="endpoints/ep_1", columns=columns)


def test_numbers_become_floats_and_strings_objects_with_their_missing_values():
    arrays = column_arrays(request(
        age=pb.ColumnValues(numbers=[30, math.nan, 41.5, 7], missing_indices=[3]),
        plan=pb.ColumnValues(strings=["pro", "", "free", "3"], missing_indices=[1])).columns)
    assert arrays["age"].dtype == np.float64
    np.testing.assert_array_equal(arrays["age"], [30.0, np.nan, 41.5, np.nan])
    assert arrays["plan"].dtype == object
    assert arrays["plan"].tolist() == ["pro", None, "free", "3"]


def test_an_empty_column_has_no_rows():
    assert len(column_arrays(request(age=pb.ColumnValues()).columns)["age"]) == 0


@pytest.mark.parametrize("column, field, reason", [
    (pb.ColumnValues(numbers=[1.0], strings=["a"]), "columns.age", "COLUMN_NUMBERS_AND_STRINGS"),
    (pb.ColumnValues(numbers=[1.0, 2.0], missing_indices=[2]), "columns.age.missing_indices",
     "MISSING_INDEX_OUT_OF_RANGE"),
    (pb.ColumnValues(strings=["a"], missing_indices=[-1]), "columns.age.missing_indices",
     "MISSING_INDEX_OUT_OF_RANGE"),
])
def test_malformed_columns_are_refused(column, field, reason):
    with pytest.raises(InvalidArgument) as e:
        column_arrays(request(age=column).columns)
    assert (e.value.reason, [v.field for v in e.value.violations]) == (reason, [field])


def test_classification_predictions_are_row_major():
    message = prediction_columns_message(PredictionColumns(
        labels=["b", "a"], values=np.array([0.75, 0.5]), classes=["a", "b", "c"],
        probabilities=np.array([[0.25, 0.75, 0.0], [0.5, 0.25, 0.25]])))
    assert list(message.labels) == ["b", "a"] and list(message.classes) == ["a", "b", "c"]
    assert list(message.values) == [0.75, 0.5]
    assert list(message.probabilities) == [0.25, 0.75, 0.0, 0.5, 0.25, 0.25]


def test_regression_predictions_are_values_only():
    message = prediction_columns_message(PredictionColumns(
        labels=[], values=np.array([1.5, -2.0]), classes=[], probabilities=np.empty((2, 0))))
    assert list(message.values) == [1.5, -2.0]
    assert not message.labels and not message.classes and not message.probabilities
