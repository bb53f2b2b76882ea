import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobEvent(_message.Message):
    __slots__ = ("training_job", "user_id", "attempt", "time", "requested", "cancelled", "progressed", "trial_completed", "completed", "failed")
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    PROGRESSED_FIELD_NUMBER: _ClassVar[int]
    TRIAL_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    training_job: str
    user_id: str
    attempt: int
    time: _timestamp_pb2.Timestamp
    requested: JobRequested
    cancelled: JobCancelled
    progressed: JobProgressed
    trial_completed: TrialCompleted
    completed: JobCompleted
    failed: JobFailed
    def __init__(self, training_job: _Optional[str] = ..., user_id: _Optional[str] = ..., attempt: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requested: _Optional[_Union[JobRequested, _Mapping]] = ..., cancelled: _Optional[_Union[JobCancelled, _Mapping]] = ..., progressed: _Optional[_Union[JobProgressed, _Mapping]] = ..., trial_completed: _Optional[_Union[TrialCompleted, _Mapping]] = ..., completed: _Optional[_Union[JobCompleted, _Mapping]] = ..., failed: _Optional[_Union[JobFailed, _Mapping]] = ...) -> None: ...

class JobRequested(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobCancelled(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobProgressed(_message.Message):
    __slots__ = ("trials_completed", "best_score", "stage")
    TRIALS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    trials_completed: int
    best_score: float
    stage: str
    def __init__(self, trials_completed: _Optional[int] = ..., best_score: _Optional[float] = ..., stage: _Optional[str] = ...) -> None: ...

class TrialCompleted(_message.Message):
    __slots__ = ("number", "family", "cv_score")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    CV_SCORE_FIELD_NUMBER: _ClassVar[int]
    number: int
    family: str
    cv_score: float
    def __init__(self, number: _Optional[int] = ..., family: _Optional[str] = ..., cv_score: _Optional[float] = ...) -> None: ...

class JobCompleted(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[str]] = ...) -> None: ...

class JobFailed(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: str
    def __init__(self, error: _Optional[str] = ...) -> None: ...

class TrialRequest(_message.Message):
    __slots__ = ("training_job", "user_id", "attempt", "key", "family", "params_json", "rung", "max_seconds", "must_finish", "keep_oof", "time", "cores")
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MUST_FINISH_FIELD_NUMBER: _ClassVar[int]
    KEEP_OOF_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    training_job: str
    user_id: str
    attempt: int
    key: int
    family: str
    params_json: str
    rung: int
    max_seconds: float
    must_finish: bool
    keep_oof: bool
    time: _timestamp_pb2.Timestamp
    cores: int
    def __init__(self, training_job: _Optional[str] = ..., user_id: _Optional[str] = ..., attempt: _Optional[int] = ..., key: _Optional[int] = ..., family: _Optional[str] = ..., params_json: _Optional[str] = ..., rung: _Optional[int] = ..., max_seconds: _Optional[float] = ..., must_finish: _Optional[bool] = ..., keep_oof: _Optional[bool] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cores: _Optional[int] = ...) -> None: ...

class TrialOutcome(_message.Message):
    __slots__ = ("training_job", "user_id", "attempt", "key", "rung", "scores", "fit_seconds", "error", "worker", "oof_blob", "queued_seconds", "temperature")
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    OOF_BLOB_FIELD_NUMBER: _ClassVar[int]
    QUEUED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    training_job: str
    user_id: str
    attempt: int
    key: int
    rung: int
    scores: _containers.RepeatedScalarFieldContainer[float]
    fit_seconds: float
    error: str
    worker: str
    oof_blob: str
    queued_seconds: float
    temperature: float
    def __init__(self, training_job: _Optional[str] = ..., user_id: _Optional[str] = ..., attempt: _Optional[int] = ..., key: _Optional[int] = ..., rung: _Optional[int] = ..., scores: _Optional[_Iterable[float]] = ..., fit_seconds: _Optional[float] = ..., error: _Optional[str] = ..., worker: _Optional[str] = ..., oof_blob: _Optional[str] = ..., queued_seconds: _Optional[float] = ..., temperature: _Optional[float] = ...) -> None: ...
