"""PredictorService: endpoints, unary / streaming / batch prediction."""

import numpy as np
from google.protobuf import empty_pb2, json_format

from nbml.v1 import predictor_service_pb2 as pb, predictor_service_pb2_grpc
from nbml_server.dataset.servicer import dataset_message
from nbml_server.domain.endpoints import Endpoints
from nbml_server.domain.model_registry import ModelRegistry
from nbml_server.domain.names import parse_name
from nbml_server.domain.serving import PredictionColumns, Predictor, check_row_count
from nbml_server.errors import InvalidArgument
from nbml_server.platform.convert import timestamp
from nbml_server.platform.interceptors import current_caller


# Fields UpdateEndpoint changes, by their update_mask paths.
UPDATABLE_ENDPOINT_FIELDS = ("model", "display_name")


def endpoint_message(record: dict) -> pb.Endpoint:
    return pb.Endpoint(name=f"endpoints/{record['endpoint_id']}",
                       model=f"models/{record['model_id']}", display_name=record["display_name"],
                       create_time=timestamp(record["create_time"]),
                       update_time=timestamp(record.get("update_time", record["create_time"])),
                       feature_columns=record["feature_columns"])


def _plain(value):
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind in (None, "null_value"):
        return None
    return json_format.MessageToDict(value)  # a list or an object, as it always was


def row_dict(row) -> dict:
    """A Struct row as a dict, as json_format.MessageToDict gives it but without its
    generic walk (a few microseconds a row instead of tens)."""
    return {name: _plain(value) for name, value in row.fields.items()}


def prediction_messages(predictions) -> list[pb.Prediction]:
    return [pb.Prediction(label=p.label, value=p.value, probabilities=p.probabilities)
            for p in predictions]


def longest_column(columns) -> int:
    """The most values any column of `PredictRequest.columns` has (its rows, if even)."""
    return max(len(column.numbers) or len(column.strings) for column in columns.values())


def column_arrays(columns) -> dict[str, np.ndarray]:
    """`PredictRequest.columns` as numpy arrays, without per-row Python work for numbers:
    float64 (NaN where missing) for `numbers`, object (None where missing) for
    `strings`."""
    arrays = {}
    for name, column in columns.items():
        if column.numbers and column.strings:
            raise InvalidArgument.of(f"columns.{name}", "numbers or strings, not both",
                                     reason="COLUMN_NUMBERS_AND_STRINGS")
        if column.strings:
            values = np.empty(len(column.strings), dtype=object)
            values[:] = column.strings
        else:
            values = np.array(column.numbers, dtype=np.float64)
        missing = np.array(column.missing_indices, dtype=np.int64)
        if missing.size and not (0 <= missing.min() and missing.max() < len(values)):
            raise InvalidArgument.of(f"columns.{name}.missing_indices",
                                     f"row indices must be in [0, {len(values)})",
                                     reason="MISSING_INDEX_OUT_OF_RANGE")
        values[missing] = None if column.strings else np.nan
        arrays[name] = values
    return arrays


def prediction_columns_message(predictions: PredictionColumns) -> pb.PredictionColumns:
    message = pb.PredictionColumns(labels=predictions.labels, classes=predictions.classes)
    # extend with lists: upb reads a numpy array one numpy scalar at a time (twice as slow).
    message.values.extend(predictions.values.tolist())
    message.probabilities.extend(predictions.probabilities.ravel().tolist())
    return message


class PredictorServicer(predictor_service_pb2_grpc.PredictorServiceServicer):
    def __init__(self, endpoints: Endpoints, models: ModelRegistry, predictor: Predictor):
        self.endpoints = endpoints
        self.models = models
        self.predictor = predictor

    def CreateEndpoint(self, request, context):
        caller = current_caller()
        model = self.models.get(caller.user_id,
                                parse_name(request.endpoint.model, "models", "endpoint.model"))
        return endpoint_message(self.predictor.deploy(caller.user_id, model,
                                                      request.endpoint.display_name))

    def GetEndpoint(self, request, context):
        return endpoint_message(self.endpoints.get(
            current_caller().user_id, parse_name(request.name, "endpoints", "name")))

    def ListEndpoints(self, request, context):
        page = self.endpoints.list(current_caller().user_id, request.page_size,
                                   request.page_token)
        return pb.ListEndpointsResponse(endpoints=[endpoint_message(e) for e in page.rows],
                                        next_page_token=page.next_page_token)

    def UpdateEndpoint(self, request, context):
        caller = current_caller()
        endpoint_id = parse_name(request.endpoint.name, "endpoints", "endpoint.name")
        paths = set(request.update_mask.paths) or {
            field for field in UPDATABLE_ENDPOINT_FIELDS if getattr(request.endpoint, field)}
        unknown = sorted(paths - set(UPDATABLE_ENDPOINT_FIELDS))
        if unknown:
            raise InvalidArgument.of(
                "update_mask", f"cannot update {', '.join(unknown)}; updatable: "
                f"{', '.join(UPDATABLE_ENDPOINT_FIELDS)}", reason="FIELD_NOT_UPDATABLE")
        if not paths:
            raise InvalidArgument.of("update_mask", "nothing to update: set endpoint.model "
                                     "or endpoint.display_name", reason="NOTHING_TO_UPDATE")
        model = None
        if "model" in paths:
            model = self.models.get(caller.user_id,
                                    parse_name(request.endpoint.model, "models", "endpoint.model"))
        display_name = request.endpoint.display_name if "display_name" in paths else None
        return endpoint_message(self.predictor.redeploy(caller.user_id, endpoint_id, model,
                                                        display_name))

    def DeleteEndpoint(self, request, context):
        self.endpoints.delete(current_caller().user_id,
                              parse_name(request.name, "endpoints", "name"))
        return empty_pb2.Empty()

    def Predict(self, request, context):
        return self._predict(request.endpoint, request, pb.PredictResponse)

    def StreamPredict(self, request_iterator, context):
        endpoint = ""
        for number, request in enumerate(request_iterator):
            if number == 0:
                if not request.endpoint:
                    raise InvalidArgument.of("endpoint", "required in the first message",
                                             reason="ENDPOINT_MISSING")
                endpoint = request.endpoint
            yield self._predict(endpoint, request, pb.StreamPredictResponse)

    def BatchPredict(self, request, context):
        caller = current_caller()
        output = self.predictor.batch_predict(
            caller.user_id, parse_name(request.endpoint, "endpoints", "endpoint"),
            parse_name(request.dataset, "datasets", "dataset"))
        return pb.BatchPredictResponse(output_dataset=dataset_message(output),
                                       row_count=output["row_count"])

    def _predict(self, endpoint: str, request, response_type):
        """A (Stream)PredictResponse to the rows or the columns of a (Stream)PredictRequest."""
        if request.rows and request.columns:
            raise InvalidArgument.of("columns", "send rows or columns, not both",
                                     reason="ROWS_AND_COLUMNS")
        user_id = current_caller().user_id
        endpoint_id = parse_name(endpoint, "endpoints", "endpoint")
        # The rows are counted before any of them becomes Python objects.
        if request.columns:
            check_row_count(longest_column(request.columns), self.predictor.max_rows, "columns")
            model_id, columns = self.predictor.predict_columns(
                user_id, endpoint_id, column_arrays(request.columns))
            return response_type(prediction_columns=prediction_columns_message(columns),
                                 model=f"models/{model_id}")
        check_row_count(len(request.rows), self.predictor.max_rows, "rows")
        model_id, predictions = self.predictor.predict(
            user_id, endpoint_id, [row_dict(row) for row in request.rows])
        return response_type(predictions=prediction_messages(predictions),
                             model=f"models/{model_id}")
