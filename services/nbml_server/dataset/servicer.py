"""DatasetService: protobuf in, DatasetCatalog calls, protobuf out."""

import itertools
import math
from collections.abc import Iterator

import pandas as pd
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

from nbml.v1 import common_pb2, dataset_service_pb2 as pb, dataset_service_pb2_grpc
from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.datasets import ColumnRule, ValidationRules, to_csv_bytes
from nbml_server.domain.names import parse_name
from nbml_server.errors import FieldViolation, InvalidArgument
from nbml_server.platform.convert import timestamp
from nbml_server.platform.interceptors import current_caller

COLUMN_TYPES = {"numeric": common_pb2.COLUMN_TYPE_NUMERIC,
                "categorical": common_pb2.COLUMN_TYPE_CATEGORICAL,
                "boolean": common_pb2.COLUMN_TYPE_BOOLEAN,
                "datetime": common_pb2.COLUMN_TYPE_DATETIME,
                "text": common_pb2.COLUMN_TYPE_TEXT}
COLUMN_TYPE_NAMES = {v: k for k, v in COLUMN_TYPES.items()}
TASKS = {"classification": common_pb2.TASK_CLASSIFICATION,
         "regression": common_pb2.TASK_REGRESSION}
FORMATS = {pb.DATASET_FORMAT_UNSPECIFIED: None, pb.DATASET_FORMAT_CSV: "csv",
           pb.DATASET_FORMAT_PARQUET: "parquet"}
FORMAT_ENUMS = {"csv": pb.DATASET_FORMAT_CSV, "parquet": pb.DATASET_FORMAT_PARQUET}
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
MAX_PREVIEW_ROWS = 1000


def _finite(value) -> float:
    return float(value) if value is not None and math.isfinite(value) else 0.0


def profile_message(profile: dict) -> pb.DatasetProfile:
    columns = []
    for column in profile["columns"]:
        stats = column.get("numeric_stats")
        columns.append(pb.ColumnProfile(
            name=column["name"], type=COLUMN_TYPES[column["type"]],
            missing_rate=column["missing_rate"], distinct_count=column["distinct_count"],
            numeric_stats=pb.NumericStats(**{k: _finite(stats[k]) for k in
                                             ("min", "max", "mean", "std", "median")})
            if stats else None,
            top_values=[pb.ValueCount(value=str(v["value"]), count=v["count"])
                        for v in column.get("top_values") or ()]))
    return pb.DatasetProfile(
        row_count=profile["row_count"], columns=columns,
        target_suggestions=[pb.TargetSuggestion(column=s["column"], task=TASKS[s["task"]],
                                                reason=s["reason"])
                            for s in profile["target_suggestions"]])


def dataset_message(record: dict) -> pb.Dataset:
    return pb.Dataset(
        name=f"datasets/{record['dataset_id']}", display_name=record["display_name"],
        format=FORMAT_ENUMS.get(record["format"], pb.DATASET_FORMAT_UNSPECIFIED),
        size_bytes=record["size_bytes"], row_count=record["row_count"],
        column_count=record["column_count"], profile=profile_message(record["profile"]),
        create_time=timestamp(record["create_time"]),
        source_endpoint=record.get("source_endpoint", ""))


def rules_from_message(rules: pb.ValidationRules) -> ValidationRules | None:
    if not (rules.required_columns or rules.column_types or rules.column_rules):
        return None
    column_types = {}
    for column, kind in rules.column_types.items():
        if kind not in COLUMN_TYPE_NAMES:
            raise InvalidArgument.of(f"metadata.rules.column_types[{column}]",
                                     "must name a column type", reason="INVALID_RULE")
        column_types[column] = COLUMN_TYPE_NAMES[kind]
    return ValidationRules(
        required_columns=tuple(rules.required_columns), column_types=column_types,
        column_rules=tuple(
            ColumnRule(column=r.column, min=r.min if r.HasField("min") else None,
                       max=r.max if r.HasField("max") else None,
                       allowed_values=tuple(r.allowed_values), not_null=r.not_null)
            for r in rules.column_rules))


def _as_request_fields(error: InvalidArgument) -> InvalidArgument:
    """Rule violations name `rules.…`; in this request the rules are `metadata.rules.…`."""
    violations = [FieldViolation(f"metadata.{v.field}", v.description)
                  if v.field.startswith("rules.") else v for v in error.violations]
    return InvalidArgument(error.message, violations, reason=error.reason)


def _later_chunks(messages) -> Iterator[bytes]:
    """The chunks of an upload's messages after the first (which alone has metadata)."""
    for number, message in enumerate(messages, start=2):
        if message.HasField("metadata"):
            raise InvalidArgument.of("metadata", f"only the first message may carry "
                                     f"metadata; message {number} does too",
                                     reason="UPLOAD_METADATA_REPEATED")
        yield message.chunk


class DatasetServicer(dataset_service_pb2_grpc.DatasetServiceServicer):
    def __init__(self, catalog: DatasetCatalog):
        self.catalog = catalog

    def UploadDataset(self, request_iterator, context):
        caller = current_caller()
        first = next(request_iterator, None)
        if first is None:
            raise InvalidArgument.of("metadata", "the upload carried no messages",
                                     reason="UPLOAD_METADATA_MISSING")
        if not first.HasField("metadata"):
            raise InvalidArgument.of("metadata", "the first message must carry metadata",
                                     reason="UPLOAD_METADATA_MISSING")
        metadata = first.metadata
        if metadata.format not in FORMATS:
            raise InvalidArgument.of("metadata.format", f"unknown format {metadata.format}; "
                                     "use DATASET_FORMAT_CSV or DATASET_FORMAT_PARQUET, or "
                                     "leave it unset to tell from the content",
                                     reason="UNSUPPORTED_FORMAT")
        if len(metadata.display_name) > 200:
            raise InvalidArgument.of("metadata.display_name", "at most 200 characters",
                                     reason="DISPLAY_NAME_TOO_LONG")
        # Checked against the limits as it streams in: a file over them is never held whole.
        data = self.catalog.receive(caller.user_id, itertools.chain(
            [first.chunk], _later_chunks(request_iterator)))
        try:
            record = self.catalog.upload(
                caller.user_id, data, display_name=metadata.display_name,
                format=FORMATS[metadata.format], rules=rules_from_message(metadata.rules))
        except InvalidArgument as error:
            raise _as_request_fields(error) from None
        return dataset_message(record)

    def GetDataset(self, request, context):
        return dataset_message(self._get(request.name))

    def ListDatasets(self, request, context):
        page = self.catalog.list(current_caller().user_id, request.page_size, request.page_token)
        return pb.ListDatasetsResponse(datasets=[dataset_message(r) for r in page.rows],
                                       next_page_token=page.next_page_token)

    def DeleteDataset(self, request, context):
        self.catalog.delete(current_caller().user_id,
                            parse_name(request.name, "datasets", "name"))
        return empty_pb2.Empty()

    def PreviewDataset(self, request, context):
        if not 0 <= request.row_count <= MAX_PREVIEW_ROWS:
            raise InvalidArgument.of("row_count", f"must be 0 to {MAX_PREVIEW_ROWS}",
                                     reason="INVALID_ROW_COUNT")
        frame = self.catalog.load_frame(self._get(request.name)).head(request.row_count or 20)
        cells = frame.astype(object).where(pd.notna(frame), "")
        return pb.PreviewDatasetResponse(
            columns=[str(c) for c in frame.columns],
            rows=[pb.PreviewRow(cells=[str(v) for v in row])
                  for row in cells.itertuples(index=False)])

    def DownloadDataset(self, request, context):
        data = to_csv_bytes(self.catalog.load_frame(self._get(request.name)))
        for start in range(0, max(len(data), 1), DOWNLOAD_CHUNK_BYTES):
            yield httpbody_pb2.HttpBody(content_type="text/csv",
                                        data=data[start:start + DOWNLOAD_CHUNK_BYTES])

    def _get(self, name: str) -> dict:
        return self.catalog.get(current_caller().user_id, parse_name(name, "datasets", "name"))
