import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nbml.v1 import common_pb2 as _common_pb2
from nbml.v1 import trainer_service_pb2 as _trainer_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Model(_message.Message):
    __slots__ = ("name", "training_job", "family", "params", "task", "metric", "cv_score", "feature_columns", "target_column", "classes", "create_time", "best", "ranking_note")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    CV_SCORE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLUMN_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    RANKING_NOTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    training_job: str
    family: str
    params: _containers.ScalarMap[str, str]
    task: _common_pb2.Task
    metric: str
    cv_score: float
    feature_columns: _containers.RepeatedScalarFieldContainer[str]
    target_column: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    best: bool
    ranking_note: str
    def __init__(self, name: _Optional[str] = ..., training_job: _Optional[str] = ..., family: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., metric: _Optional[str] = ..., cv_score: _Optional[float] = ..., feature_columns: _Optional[_Iterable[str]] = ..., target_column: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., best: _Optional[bool] = ..., ranking_note: _Optional[str] = ...) -> None: ...

class ConfusionMatrix(_message.Message):
    __slots__ = ("labels", "counts")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class FeatureImportance(_message.Message):
    __slots__ = ("column", "importance", "importance_std")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_STD_FIELD_NUMBER: _ClassVar[int]
    column: str
    importance: float
    importance_std: float
    def __init__(self, column: _Optional[str] = ..., importance: _Optional[float] = ..., importance_std: _Optional[float] = ...) -> None: ...

class ModelEvaluation(_message.Message):
    __slots__ = ("name", "metrics", "confusion_matrix", "feature_importances", "holdout_rows")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_MATRIX_FIELD_NUMBER: _ClassVar[int]
    FEATURE_IMPORTANCES_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    metrics: _containers.ScalarMap[str, float]
    confusion_matrix: ConfusionMatrix
    feature_importances: _containers.RepeatedCompositeFieldContainer[FeatureImportance]
    holdout_rows: int
    def __init__(self, name: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., confusion_matrix: _Optional[_Union[ConfusionMatrix, _Mapping]] = ..., feature_importances: _Optional[_Iterable[_Union[FeatureImportance, _Mapping]]] = ..., holdout_rows: _Optional[int] = ...) -> None: ...

class LeaderboardEntry(_message.Message):
    __slots__ = ("rank", "model", "evaluation")
    RANK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    model: Model
    evaluation: ModelEvaluation
    def __init__(self, rank: _Optional[int] = ..., model: _Optional[_Union[Model, _Mapping]] = ..., evaluation: _Optional[_Union[ModelEvaluation, _Mapping]] = ...) -> None: ...

class Leaderboard(_message.Message):
    __slots__ = ("name", "metric", "entries", "best_model", "trials")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BEST_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    name: str
    metric: str
    entries: _containers.RepeatedCompositeFieldContainer[LeaderboardEntry]
    best_model: str
    trials: _containers.RepeatedCompositeFieldContainer[_trainer_service_pb2.Trial]
    def __init__(self, name: _Optional[str] = ..., metric: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[LeaderboardEntry, _Mapping]]] = ..., best_model: _Optional[str] = ..., trials: _Optional[_Iterable[_Union[_trainer_service_pb2.Trial, _Mapping]]] = ...) -> None: ...

class GetLeaderboardRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "training_job")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    training_job: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., training_job: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelEvaluationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
