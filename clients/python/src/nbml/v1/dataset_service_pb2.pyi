import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nbml.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_UNSPECIFIED: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CSV: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PARQUET: _ClassVar[DatasetFormat]
DATASET_FORMAT_UNSPECIFIED: DatasetFormat
DATASET_FORMAT_CSV: DatasetFormat
DATASET_FORMAT_PARQUET: DatasetFormat

class ValidationRules(_message.Message):
    __slots__ = ("required_columns", "column_types", "column_rules")
    class ColumnTypesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.ColumnType
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.ColumnType, str]] = ...) -> None: ...
    REQUIRED_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    COLUMN_TYPES_FIELD_NUMBER: _ClassVar[int]
    COLUMN_RULES_FIELD_NUMBER: _ClassVar[int]
    required_columns: _containers.RepeatedScalarFieldContainer[str]
    column_types: _containers.ScalarMap[str, _common_pb2.ColumnType]
    column_rules: _containers.RepeatedCompositeFieldContainer[ColumnRule]
    def __init__(self, required_columns: _Optional[_Iterable[str]] = ..., column_types: _Optional[_Mapping[str, _common_pb2.ColumnType]] = ..., column_rules: _Optional[_Iterable[_Union[ColumnRule, _Mapping]]] = ...) -> None: ...

class ColumnRule(_message.Message):
    __slots__ = ("column", "min", "max", "allowed_values", "not_null")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_VALUES_FIELD_NUMBER: _ClassVar[int]
    NOT_NULL_FIELD_NUMBER: _ClassVar[int]
    column: str
    min: float
    max: float
    allowed_values: _containers.RepeatedScalarFieldContainer[str]
    not_null: bool
    def __init__(self, column: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., allowed_values: _Optional[_Iterable[str]] = ..., not_null: _Optional[bool] = ...) -> None: ...

class DatasetUploadMetadata(_message.Message):
    __slots__ = ("display_name", "format", "rules")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    format: DatasetFormat
    rules: ValidationRules
    def __init__(self, display_name: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., rules: _Optional[_Union[ValidationRules, _Mapping]] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: DatasetUploadMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[DatasetUploadMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class NumericStats(_message.Message):
    __slots__ = ("min", "max", "mean", "std", "median")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    mean: float
    std: float
    median: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., median: _Optional[float] = ...) -> None: ...

class ValueCount(_message.Message):
    __slots__ = ("value", "count")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    value: str
    count: int
    def __init__(self, value: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ColumnProfile(_message.Message):
    __slots__ = ("name", "type", "missing_rate", "distinct_count", "numeric_stats", "top_values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MISSING_RATE_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_COUNT_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_STATS_FIELD_NUMBER: _ClassVar[int]
    TOP_VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: _common_pb2.ColumnType
    missing_rate: float
    distinct_count: int
    numeric_stats: NumericStats
    top_values: _containers.RepeatedCompositeFieldContainer[ValueCount]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.ColumnType, str]] = ..., missing_rate: _Optional[float] = ..., distinct_count: _Optional[int] = ..., numeric_stats: _Optional[_Union[NumericStats, _Mapping]] = ..., top_values: _Optional[_Iterable[_Union[ValueCount, _Mapping]]] = ...) -> None: ...

class TargetSuggestion(_message.Message):
    __slots__ = ("column", "task", "reason")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    column: str
    task: _common_pb2.Task
    reason: str
    def __init__(self, column: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class DatasetProfile(_message.Message):
    __slots__ = ("row_count", "columns", "target_suggestions")
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TARGET_SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    row_count: int
    columns: _containers.RepeatedCompositeFieldContainer[ColumnProfile]
    target_suggestions: _containers.RepeatedCompositeFieldContainer[TargetSuggestion]
    def __init__(self, row_count: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[ColumnProfile, _Mapping]]] = ..., target_suggestions: _Optional[_Iterable[_Union[TargetSuggestion, _Mapping]]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "display_name", "format", "size_bytes", "row_count", "column_count", "profile", "create_time", "source_endpoint")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    COLUMN_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    format: DatasetFormat
    size_bytes: int
    row_count: int
    column_count: int
    profile: DatasetProfile
    create_time: _timestamp_pb2.Timestamp
    source_endpoint: str
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., size_bytes: _Optional[int] = ..., row_count: _Optional[int] = ..., column_count: _Optional[int] = ..., profile: _Optional[_Union[DatasetProfile, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_endpoint: _Optional[str] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PreviewDatasetRequest(_message.Message):
    __slots__ = ("name", "row_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    row_count: int
    def __init__(self, name: _Optional[str] = ..., row_count: _Optional[int] = ...) -> None: ...

class PreviewRow(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cells: _Optional[_Iterable[str]] = ...) -> None: ...

class PreviewDatasetResponse(_message.Message):
    __slots__ = ("columns", "rows")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[PreviewRow]
    def __init__(self, columns: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[PreviewRow, _Mapping]]] = ...) -> None: ...

class DownloadDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
