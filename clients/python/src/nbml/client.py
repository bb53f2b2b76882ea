"""A pandas-friendly Python client for No Brains ML.

    from nbml.client import Client

    with Client("localhost:8080") as nb:
        nb.log_in("ada", "correct horse")
        ds = nb.upload_dataset("iris.csv")
        job = nb.wait_for_job(nb.train(ds.name, target="species").name)
        ep = nb.deploy(job.best_model)
        predictions = nb.predict(ep.name, frame)   # DataFrame in, DataFrame out
        columns = nb.predict_columns(ep.name, {"age": ages, "plan": plans})  # arrays

Ids may be given bare (``ds_...``) or as resource names (``datasets/ds_...``). Methods
return the protobuf messages of ``nbml.v1`` unless they say they return a DataFrame.
Every failed call raises :class:`nbml.errors.NbmlError`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import io
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
from google.protobuf import json_format, struct_pb2

from nbml.errors import NbmlError
from nbml.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    common_pb2,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    evaluator_service_pb2,
    evaluator_service_pb2_grpc,
    predictor_service_pb2,
    predictor_service_pb2_grpc,
    trainer_service_pb2,
    trainer_service_pb2_grpc,
)

__all__ = [
    "Client", "Session", "NbmlError",
    "resource_name", "resource_id", "frame_to_structs", "to_python_value",
    "column_values", "prediction_columns_to_dict", "predictions_to_frame", "task_from_str", "task_to_str", "job_state_to_str",
    "TERMINAL_JOB_STATES",
]

DEFAULT_SERVER = "localhost:8080"
CHUNK_SIZE = 1 << 20          # upload chunk: 1 MiB
PREDICT_BATCH_ROWS = 1000     # rows per Predict request
PAGE_SIZE = 1000              # list page size (the server maximum)
# The reason the predictor gives when a row's columns are not the model's.
COLUMNS_MISMATCH = "PREDICTION_COLUMNS_MISMATCH"
MAX_MESSAGE_BYTES = 64 << 20
_REFRESH_MARGIN_SECONDS = 30

_JobState = trainer_service_pb2.JobState
TERMINAL_JOB_STATES = frozenset({
    _JobState.JOB_STATE_SUCCEEDED, _JobState.JOB_STATE_FAILED, _JobState.JOB_STATE_CANCELLED,
})

# ------------------------------------------------------------------ resource names
_COLLECTIONS = {
    "datasets": ("ds", "data set"),
    "trainingJobs": ("job", "training job"),
    "models": ("mdl", "model"),
    "endpoints": ("ep", "endpoint"),
    "apiKeys": ("key", "API key"),
    "users": ("usr", "user"),
}


def resource_name(collection: str, id_or_name: str) -> str:
    """``resource_name("datasets", "ds_1") == resource_name("datasets", "datasets/ds_1")
    == "datasets/ds_1"``. Raises NbmlError(INVALID_ARGUMENT) for an empty value or a
    name of another collection."""
    _, noun = _COLLECTIONS.get(collection, ("", collection))
    value = (id_or_name or "").strip() if isinstance(id_or_name, str) else ""
    if not value:
        raise NbmlError("INVALID_ARGUMENT", f"a {noun} id is required", "INVALID_NAME")
    if value.startswith(collection + "/"):
        rest = value[len(collection) + 1:]
        if rest and "/" not in rest:
            return value
    elif "/" not in value:
        return f"{collection}/{value}"
    raise NbmlError("INVALID_ARGUMENT",
                    f"{value!r} is not a {noun} id (expected an id or {collection}/ID)",
                    "INVALID_NAME")


def resource_id(name: str | None) -> str:
    """The bare id of a resource name: ``"datasets/ds_1" -> "ds_1"``; ``""`` stays ``""``.
    For nested names (``trainingJobs/j/leaderboard``) the id of the top resource."""
    if not name:
        return ""
    parts = name.split("/")
    return parts[1] if len(parts) >= 2 else parts[0]


# ------------------------------------------------------------------ enums
_TASKS = {
    "auto": common_pb2.Task.TASK_AUTO,
    "classification": common_pb2.Task.TASK_CLASSIFICATION,
    "regression": common_pb2.Task.TASK_REGRESSION,
}


def task_from_str(task: str | int | None) -> int:
    if task is None or task == "":
        return common_pb2.Task.TASK_AUTO
    if isinstance(task, int):
        return task
    key = task.strip().lower()
    if key.startswith("task_"):
        key = key[5:]
    if key in _TASKS:
        return _TASKS[key]
    raise NbmlError("INVALID_ARGUMENT",
                    f"unknown task {task!r}: use auto, classification or regression",
                    "INVALID_TASK")


def _enum_suffix(enum_type: Any, value: int, prefix: str) -> str | None:
    try:
        label = enum_type.Name(value)
    except ValueError:
        return None
    label = label[len(prefix):] if label.startswith(prefix) else label
    return None if label == "UNSPECIFIED" else label.lower()


def task_to_str(task: int) -> str | None:
    return _enum_suffix(common_pb2.Task, task, "TASK_")


def job_state_to_str(state: int) -> str | None:
    return _enum_suffix(trainer_service_pb2.JobState, state, "JOB_STATE_")


def column_type_to_str(value: int) -> str | None:
    return _enum_suffix(common_pb2.ColumnType, value, "COLUMN_TYPE_")


def dataset_format_to_str(value: int) -> str | None:
    return _enum_suffix(dataset_service_pb2.DatasetFormat, value, "DATASET_FORMAT_")


# ------------------------------------------------------------------ row conversion
def to_python_value(value: Any) -> None | bool | int | float | str:
    """One cell as a JSON-friendly Python value: missing (None, NaN, NA, NaT) -> None,
    numpy scalars -> bool/int/float, timestamps -> ISO text, anything else -> str."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return None if math.isnan(f) else f
    if isinstance(value, str):
        return str(value)  # np.str_ and other subclasses -> plain str
    if isinstance(value, decimal.Decimal):
        return None if value.is_nan() else float(value)
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else pd.Timestamp(value).isoformat()
    if isinstance(value, np.timedelta64):
        return None if np.isnat(value) else str(pd.Timedelta(value))
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _set_value(target: struct_pb2.Value, value: Any) -> None:
    value = to_python_value(value)
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, (int, float)):
        target.number_value = value
    else:
        target.string_value = value


def frame_to_structs(frame: pd.DataFrame, columns: Iterable[str] | None = None
                     ) -> list[struct_pb2.Struct]:
    """Rows of ``frame`` (optionally only ``columns``) as ``google.protobuf.Struct``s,
    in row order. Column names become strings."""
    if columns is not None:
        frame = frame.loc[:, list(columns)]
    names = [str(c) for c in frame.columns]
    structs = []
    for row in frame.itertuples(index=False, name=None):
        s = struct_pb2.Struct()
        for name, cell in zip(names, row):
            _set_value(s.fields[name], cell)
        structs.append(s)
    return structs


def _as_text(value: bool | int | float | str) -> str:
    # As the server reads a number or a boolean in a categorical column (3.0 and 3 -> "3").
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def column_values(values: Any) -> predictor_service_pb2.ColumnValues:
    """One input column (a list, array or Series) as ``ColumnValues``: ``numbers`` when
    every value is a number or missing (NaN), else ``strings``, missing values listed
    in ``missing_indices`` and numbers and booleans as text (``"3"``, ``"True"``)."""
    array = values.to_numpy() if isinstance(values, (pd.Series, pd.Index)) else values
    if isinstance(array, np.ndarray) and array.dtype.kind in "iuf":
        return predictor_service_pb2.ColumnValues(numbers=array.astype(np.float64).tolist())
    cells = [to_python_value(v) for v in array]
    if all(c is None or (isinstance(c, (int, float)) and not isinstance(c, bool))
           for c in cells):
        return predictor_service_pb2.ColumnValues(
            numbers=[math.nan if c is None else float(c) for c in cells])
    return predictor_service_pb2.ColumnValues(
        strings=["" if c is None else _as_text(c) for c in cells],
        missing_indices=[i for i, c in enumerate(cells) if c is None])


def prediction_columns_to_dict(columns: predictor_service_pb2.PredictionColumns
                               ) -> dict[str, np.ndarray]:
    """``PredictionColumns`` as arrays in row order, named as ``predictions_to_frame``
    names its columns: ``prediction`` (class labels, or values for regression) and,
    for classification, ``probability_<class>`` per class."""
    if not columns.classes:
        return {"prediction": np.array(columns.values, dtype=np.float64)}
    probabilities = np.array(columns.probabilities, dtype=np.float64).reshape(
        -1, len(columns.classes))
    return {"prediction": np.array(columns.labels, dtype=object),
            **{f"probability_{c}": probabilities[:, j] for j, c in enumerate(columns.classes)}}


def predictions_to_frame(predictions: Iterable[Any], classes: Iterable[str] | None = None,
                         index: Any = None) -> pd.DataFrame:
    """``Prediction`` messages as a DataFrame: a ``prediction`` column (the class label
    for classification, the value for regression) and, for classification, one
    ``probability_<class>`` column per class (in ``classes`` order when given)."""
    preds = list(predictions)
    classification = any(p.label or len(p.probabilities) for p in preds)
    if not classification:
        return pd.DataFrame({"prediction": pd.Series([p.value for p in preds], dtype="float64")},
                            index=index)
    order = [str(c) for c in (classes or [])]
    seen = set(order)
    extra = sorted({k for p in preds for k in p.probabilities} - seen)
    order.extend(extra)
    data: dict[str, Any] = {"prediction": pd.Series([p.label for p in preds], dtype=object)}
    for cls in order:
        data[f"probability_{cls}"] = pd.Series(
            [p.probabilities[cls] if cls in p.probabilities else math.nan for p in preds],
            dtype="float64")
    frame = pd.DataFrame(data)
    if index is not None:
        frame.index = index
    return frame


# ------------------------------------------------------------------ helpers
@dataclass
class Session:
    """What SignUp and LogIn return."""

    user: auth_service_pb2.User
    access_token: str
    refresh_token: str
    expires_in_seconds: int = 0

    @property
    def username(self) -> str:
        return self.user.username

    @property
    def user_id(self) -> str:
        return resource_id(self.user.name)


def _jwt_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of a JWT (read without verification), or None."""
    if not token or token.count(".") != 2:
        return None
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        exp = json.loads(base64.urlsafe_b64decode(payload)).get("exp")
        return float(exp) if exp is not None else None
    except Exception:  # noqa: BLE001 - not a JWT we can read: no early refresh
        return None


def _channel_target(server: str) -> tuple[str, bool]:
    target = server.strip()
    secure = False
    if target.startswith("https://"):
        target, secure = target[len("https://"):], True
    elif target.startswith("http://"):
        target = target[len("http://"):]
    return target.rstrip("/"), secure


_RULE_TYPE_PREFIX = "COLUMN_TYPE_"


def _column_type_name(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip().upper()
        return value if value.startswith(_RULE_TYPE_PREFIX) else _RULE_TYPE_PREFIX + value
    return value


def _rules_message(rules: Any) -> dataset_service_pb2.ValidationRules | None:
    """ValidationRules from a message, a dict (proto JSON form; column types may be
    short, e.g. ``"numeric"``), a JSON string or a path to a JSON file."""
    if rules is None:
        return None
    if isinstance(rules, dataset_service_pb2.ValidationRules):
        return rules
    if isinstance(rules, (str, os.PathLike)):
        text = str(rules)
        if isinstance(rules, os.PathLike) or not text.lstrip().startswith("{"):
            text = Path(rules).read_text(encoding="utf-8")
        try:
            rules = json.loads(text)
        except ValueError as e:
            raise NbmlError("INVALID_ARGUMENT", f"validation rules are not valid JSON: {e}",
                            "INVALID_RULES") from None
    if not isinstance(rules, Mapping):
        raise NbmlError("INVALID_ARGUMENT", "validation rules must be a JSON object",
                        "INVALID_RULES")
    rules = dict(rules)
    for key in ("column_types", "columnTypes"):
        types = rules.get(key)
        if isinstance(types, Mapping):
            rules[key] = {col: _column_type_name(t) for col, t in types.items()}
    try:
        return json_format.ParseDict(rules, dataset_service_pb2.ValidationRules())
    except json_format.ParseError as e:
        raise NbmlError("INVALID_ARGUMENT", f"invalid validation rules: {e}",
                        "INVALID_RULES") from None


def _format_for(path: Path) -> int:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return dataset_service_pb2.DatasetFormat.DATASET_FORMAT_CSV
    if suffix in (".parquet", ".pq"):
        return dataset_service_pb2.DatasetFormat.DATASET_FORMAT_PARQUET
    return dataset_service_pb2.DatasetFormat.DATASET_FORMAT_UNSPECIFIED


def _frame_bytes(frame: pd.DataFrame) -> tuple[bytes, int]:
    """A DataFrame as Parquet bytes (CSV when no Parquet engine is installed)."""
    buf = io.BytesIO()
    try:
        frame.to_parquet(buf, index=False)
        return buf.getvalue(), dataset_service_pb2.DatasetFormat.DATASET_FORMAT_PARQUET
    except ImportError:
        text = frame.to_csv(index=False)
        return text.encode("utf-8"), dataset_service_pb2.DatasetFormat.DATASET_FORMAT_CSV


_NOT_SET = object()


class Client:
    """A connection to an nbml server (Envoy's gRPC port).

    Args:
        server: ``host:port`` (``http://`` is stripped; ``https://`` uses TLS).
        token: an access token or API key secret, sent as ``authorization: Bearer``.
        timeout: deadline in seconds for unary calls (streams have none).
        refresh_token: lets the client refresh an expired access token by itself.
        on_tokens: called as ``on_tokens(access_token, refresh_token)`` whenever the
            client obtains new tokens (sign up, log in, refresh) - e.g. to persist them.
    """

    def __init__(self, server: str = DEFAULT_SERVER, token: str | None = None, *,
                 timeout: float | None = 60, refresh_token: str | None = None,
                 on_tokens: Callable[[str, str], None] | None = None,
                 channel: grpc.Channel | None = None):
        self.server = server
        self.timeout = timeout
        self.on_tokens = on_tokens
        self._token = token or None
        self._refresh_token = refresh_token or None
        self._token_expires_at: float | None = None
        self._lock = threading.RLock()
        self.username: str | None = None
        self.last_model: str = ""  # `models/{id}` that made the last predict() result
        if channel is None:
            target, secure = _channel_target(server)
            options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
            if secure:
                channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options)
            else:
                channel = grpc.insecure_channel(target, options)
        self._channel = channel
        self._auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        self._datasets = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        self._trainer = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        self._evaluator = evaluator_service_pb2_grpc.EvaluatorServiceStub(channel)
        self._predictor = predictor_service_pb2_grpc.PredictorServiceStub(channel)
        self._endpoint_cache: dict[str, predictor_service_pb2.Endpoint] = {}
        self._classes_cache: dict[str, list[str] | None] = {}

    @classmethod
    def from_env(cls, server: str | None = None, **kwargs: Any) -> "Client":
        """A client for ``server`` (default: ``NBML_SERVER`` or localhost:8080) using
        ``NBML_TOKEN`` or the session ``nbml login`` stored; refreshed tokens are saved."""
        from nbml import credentials

        server = server or os.environ.get("NBML_SERVER") or DEFAULT_SERVER
        resolved = credentials.resolve(server)
        on_tokens = None
        if resolved.source == "file":
            def on_tokens(access: str, refresh: str) -> None:
                credentials.update_tokens(server, access, refresh)
        client = cls(server, resolved.token, refresh_token=resolved.refresh_token,
                     on_tokens=on_tokens, **kwargs)
        client.username = resolved.username
        return client

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(server={self.server!r}, authenticated={self._token is not None})"

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def refresh_token(self) -> str | None:
        return self._refresh_token

    def set_token(self, token: str | None, refresh_token: str | None = None) -> None:
        with self._lock:
            self._token = token or None
            self._refresh_token = refresh_token or None
            self._token_expires_at = None

    # -------------------------------------------------------------- call plumbing
    def _metadata(self, auth: bool) -> list[tuple[str, str]]:
        if auth and self._token:
            return [("authorization", f"Bearer {self._token}")]
        return []

    def _store_tokens(self, tokens: auth_service_pb2.Tokens) -> None:
        with self._lock:
            self._token = tokens.access_token or None
            self._refresh_token = tokens.refresh_token or None
            self._token_expires_at = (time.time() + tokens.expires_in_seconds
                                      if tokens.expires_in_seconds > 0 else None)
        if self.on_tokens and tokens.access_token:
            self.on_tokens(tokens.access_token, tokens.refresh_token)

    def _expires_at(self) -> float | None:
        return self._token_expires_at or _jwt_expiry(self._token)

    def _refresh_if_expiring(self) -> None:
        """Refreshes ahead of time when the access token is about to expire (needed for
        streams, whose requests cannot be replayed)."""
        if not self._refresh_token:
            return
        expires = self._expires_at()
        if expires is not None and expires - time.time() < _REFRESH_MARGIN_SECONDS:
            try:
                self._refresh_after_failure(self._token)
            except NbmlError:
                pass  # the call itself will report UNAUTHENTICATED

    def _refresh_after_failure(self, used_token: str | None) -> None:
        with self._lock:
            if self._token != used_token:
                return  # someone else refreshed in the meantime
            self.refresh()

    def _with_refresh(self, attempt: Callable[[], Any], auth: bool) -> Any:
        if auth:
            self._refresh_if_expiring()
        used = self._token
        try:
            return attempt()
        except grpc.RpcError as e:
            if (auth and self._refresh_token
                    and e.code() == grpc.StatusCode.UNAUTHENTICATED):
                try:
                    self._refresh_after_failure(used)
                except NbmlError:
                    raise NbmlError.from_rpc_error(e) from None
                try:
                    return attempt()
                except grpc.RpcError as e2:
                    raise NbmlError.from_rpc_error(e2) from None
            raise NbmlError.from_rpc_error(e) from None

    def _unary(self, method: Any, request: Any, *, auth: bool = True,
               timeout: Any = _NOT_SET) -> Any:
        deadline = self.timeout if timeout is _NOT_SET else timeout
        return self._with_refresh(
            lambda: method(request, metadata=self._metadata(auth), timeout=deadline), auth)

    def _server_stream(self, method: Any, request: Any, *, auth: bool = True,
                       timeout: float | None = None) -> Iterator[Any]:
        if auth:
            self._refresh_if_expiring()
        retried = False
        while True:
            used = self._token
            call = method(request, metadata=self._metadata(auth), timeout=timeout)
            received = False
            try:
                for item in call:
                    received = True
                    yield item
                return
            except grpc.RpcError as e:
                if (auth and not received and not retried and self._refresh_token
                        and e.code() == grpc.StatusCode.UNAUTHENTICATED):
                    retried = True
                    try:
                        self._refresh_after_failure(used)
                    except NbmlError:
                        raise NbmlError.from_rpc_error(e) from None
                    continue
                raise NbmlError.from_rpc_error(e) from None
            finally:
                call.cancel()

    def _pages(self, method: Any, request: Any, field: str,
               limit: int | None = None) -> list[Any]:
        items: list[Any] = []
        request.page_size = min(PAGE_SIZE, limit) if limit else PAGE_SIZE
        seen_tokens = set()
        while True:
            response = self._unary(method, request)
            items.extend(getattr(response, field))
            if limit is not None and len(items) >= limit:
                return items[:limit]
            token = response.next_page_token
            if not token or token in seen_tokens:
                return items
            seen_tokens.add(token)
            request.page_token = token

    # -------------------------------------------------------------- auth
    def sign_up(self, username: str, password: str) -> Session:
        """Creates an account and uses its tokens from now on."""
        resp = self._unary(self._auth.SignUp,
                           auth_service_pb2.SignUpRequest(username=username, password=password),
                           auth=False)
        return self._session(resp)

    def log_in(self, username: str, password: str) -> Session:
        resp = self._unary(self._auth.LogIn,
                           auth_service_pb2.LogInRequest(username=username, password=password),
                           auth=False)
        return self._session(resp)

    login = log_in
    signup = sign_up

    def _session(self, resp: Any) -> Session:
        self._store_tokens(resp.tokens)
        self.username = resp.user.username or self.username
        return Session(resp.user, resp.tokens.access_token, resp.tokens.refresh_token,
                       resp.tokens.expires_in_seconds)

    def refresh(self) -> auth_service_pb2.Tokens:
        """Exchanges the refresh token for new tokens (and uses them)."""
        if not self._refresh_token:
            raise NbmlError("UNAUTHENTICATED", "no refresh token: log in again",
                            "NO_REFRESH_TOKEN")
        resp = self._unary(self._auth.RefreshToken,
                           auth_service_pb2.RefreshTokenRequest(
                               refresh_token=self._refresh_token), auth=False)
        self._store_tokens(resp.tokens)
        return resp.tokens

    def whoami(self) -> auth_service_pb2.User:
        return self._unary(self._auth.GetCurrentUser, auth_service_pb2.GetCurrentUserRequest())

    def create_api_key(self, display_name: str = "") -> str:
        """Creates an API key and returns its secret (shown only once)."""
        return self.create_api_key_full(display_name).secret

    def create_api_key_full(self, display_name: str = "") -> auth_service_pb2.CreateApiKeyResponse:
        return self._unary(self._auth.CreateApiKey, auth_service_pb2.CreateApiKeyRequest(
            api_key=auth_service_pb2.ApiKey(display_name=display_name or "")))

    def api_keys(self) -> list[auth_service_pb2.ApiKey]:
        return self._pages(self._auth.ListApiKeys, auth_service_pb2.ListApiKeysRequest(),
                           "api_keys")

    def delete_api_key(self, key_id: str) -> None:
        self._unary(self._auth.DeleteApiKey, auth_service_pb2.DeleteApiKeyRequest(
            name=resource_name("apiKeys", key_id)))

    def activities(self, limit: int | None = 50) -> list[auth_service_pb2.Activity]:
        """The caller's requests, newest first (all of them when ``limit`` is None)."""
        return self._pages(self._auth.ListActivities,
                           auth_service_pb2.ListActivitiesRequest(), "activities", limit)

    # -------------------------------------------------------------- data sets
    def upload_dataset(self, data: str | os.PathLike | pd.DataFrame, name: str | None = None,
                       rules: Any = None) -> dataset_service_pb2.Dataset:
        """Uploads a CSV/Parquet file (format from the suffix) or a DataFrame (sent as
        Parquet). ``rules``: ValidationRules, dict, JSON text or JSON file path."""
        rules_msg = _rules_message(rules)
        if isinstance(data, pd.DataFrame):
            payload, fmt = _frame_bytes(data)
            display_name = name or "dataframe"

            def chunks() -> Iterator[bytes]:
                for start in range(0, len(payload), CHUNK_SIZE):
                    yield payload[start:start + CHUNK_SIZE]
        else:
            path = Path(data)
            if not path.is_file():
                raise NbmlError("INVALID_ARGUMENT", f"no such file: {path}", "FILE_NOT_FOUND")
            fmt = _format_for(path)
            display_name = name or path.name

            def chunks() -> Iterator[bytes]:
                with open(path, "rb") as f:
                    while block := f.read(CHUNK_SIZE):
                        yield block

        metadata = dataset_service_pb2.DatasetUploadMetadata(display_name=display_name,
                                                              format=fmt)
        if rules_msg is not None:
            metadata.rules.CopyFrom(rules_msg)

        def requests() -> Iterator[dataset_service_pb2.UploadDatasetRequest]:
            yield dataset_service_pb2.UploadDatasetRequest(metadata=metadata)
            for block in chunks():
                yield dataset_service_pb2.UploadDatasetRequest(chunk=block)

        return self._with_refresh(
            lambda: self._datasets.UploadDataset(requests(), metadata=self._metadata(True)),
            True)

    def datasets(self) -> list[dataset_service_pb2.Dataset]:
        return self._pages(self._datasets.ListDatasets,
                           dataset_service_pb2.ListDatasetsRequest(), "datasets")

    def get_dataset(self, dataset_id: str) -> dataset_service_pb2.Dataset:
        return self._unary(self._datasets.GetDataset, dataset_service_pb2.GetDatasetRequest(
            name=resource_name("datasets", dataset_id)))

    def preview_response(self, dataset_id: str, rows: int = 20
                         ) -> dataset_service_pb2.PreviewDatasetResponse:
        return self._unary(self._datasets.PreviewDataset,
                           dataset_service_pb2.PreviewDatasetRequest(
                               name=resource_name("datasets", dataset_id), row_count=rows))

    def preview(self, dataset_id: str, rows: int = 20) -> pd.DataFrame:
        """The first rows, as text cells (missing values are empty strings)."""
        resp = self.preview_response(dataset_id, rows)
        return pd.DataFrame([list(r.cells) for r in resp.rows], columns=list(resp.columns),
                            dtype=object)

    def delete_dataset(self, dataset_id: str) -> None:
        self._unary(self._datasets.DeleteDataset, dataset_service_pb2.DeleteDatasetRequest(
            name=resource_name("datasets", dataset_id)))

    def download_dataset_bytes(self, dataset_id: str) -> bytes:
        """The stored data as CSV bytes."""
        request = dataset_service_pb2.DownloadDatasetRequest(
            name=resource_name("datasets", dataset_id))
        return b"".join(body.data for body in
                        self._server_stream(self._datasets.DownloadDataset, request))

    def download_model_bytes(self, model_id: str) -> bytes:
        """The fitted model as a skops file (see DownloadModel)."""
        request = evaluator_service_pb2.DownloadModelRequest(name=resource_name("models", model_id))
        return b"".join(body.data for body in
                        self._server_stream(self._evaluator.DownloadModel, request))

    def download_dataset(self, dataset_id: str) -> pd.DataFrame:
        data = self.download_dataset_bytes(dataset_id)
        if not data.strip():
            return pd.DataFrame()
        return pd.read_csv(io.BytesIO(data))

    # -------------------------------------------------------------- training
    def train(self, dataset_id: str, target: str, task: str | int = "auto",
              metric: str | None = None, budget_seconds: int = 60,
              holdout_fraction: float | None = None, *,
              families: Iterable[str] = (), max_trials: int = 0,
              initial_params: Mapping[str, Any] | None = None
              ) -> trainer_service_pb2.TrainingJob:
        """Starts a training job (returns at once, PENDING). ``holdout_fraction``: share
        of the rows kept out of training to measure the models on, 0 to 0.5 (None: the
        server's default, 0.2; 0: train on every row, cross-validated scores only).
        ``families``: the model families to search (default all); ``max_trials``: stop
        after that many (0: at the budget); ``initial_params``: ``{family}.{param}`` ->
        value to start that family from (e.g. ``{"random_forest.n_estimators": 300}``)."""
        job = trainer_service_pb2.TrainingJob(
            dataset=resource_name("datasets", dataset_id), target_column=target,
            task=task_from_str(task), metric=metric or "", budget_seconds=int(budget_seconds or 0),
            families=list(families), max_trials=int(max_trials),
            initial_params={k: v if isinstance(v, str) else json.dumps(v)
                            for k, v in (initial_params or {}).items()})
        if holdout_fraction is not None:
            job.holdout_fraction = float(holdout_fraction)
        return self._unary(self._trainer.CreateTrainingJob,
                           trainer_service_pb2.CreateTrainingJobRequest(training_job=job))

    def get_job(self, job_id: str) -> trainer_service_pb2.TrainingJob:
        return self._unary(self._trainer.GetTrainingJob, trainer_service_pb2.GetTrainingJobRequest(
            name=resource_name("trainingJobs", job_id)))

    def jobs(self) -> list[trainer_service_pb2.TrainingJob]:
        return self._pages(self._trainer.ListTrainingJobs,
                           trainer_service_pb2.ListTrainingJobsRequest(), "training_jobs")

    def cancel_job(self, job_id: str) -> trainer_service_pb2.TrainingJob:
        return self._unary(self._trainer.CancelTrainingJob,
                           trainer_service_pb2.CancelTrainingJobRequest(
                               name=resource_name("trainingJobs", job_id)))

    def watch_job(self, job_id: str) -> Iterator[trainer_service_pb2.TrainingJob]:
        """The job each time it changes, until it ends (one WatchTrainingJob stream)."""
        return self._server_stream(self._trainer.WatchTrainingJob,
                                   trainer_service_pb2.WatchTrainingJobRequest(
                                       name=resource_name("trainingJobs", job_id)))

    def wait_for_job(self, job_id: str,
                     on_update: Callable[[trainer_service_pb2.TrainingJob], None] | None = None,
                     *, poll_seconds: float = 1.0, timeout: float | None = None
                     ) -> trainer_service_pb2.TrainingJob:
        """Blocks until the job ends and returns it in its final state. Watches the job
        (reconnecting if the stream drops; polling if the server cannot stream) and
        calls ``on_update(job)`` for every change."""
        name = resource_name("trainingJobs", job_id)
        give_up = time.monotonic() + timeout if timeout else None
        last: trainer_service_pb2.TrainingJob | None = None
        failures = 0

        def update(job: trainer_service_pb2.TrainingJob) -> None:
            nonlocal last
            if last is None or job != last:
                last = job
                if on_update:
                    on_update(job)

        use_watch = True
        while True:
            if give_up and time.monotonic() > give_up:
                raise NbmlError("DEADLINE_EXCEEDED",
                                f"job {resource_id(name)} did not finish in {timeout}s",
                                "WAIT_TIMEOUT")
            if use_watch:
                try:
                    for job in self.watch_job(name):
                        failures = 0
                        update(job)
                        if job.state in TERMINAL_JOB_STATES:
                            return job
                except NbmlError as e:
                    if e.code == "UNIMPLEMENTED":
                        use_watch = False
                    elif e.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL",
                                    "CANCELLED", "UNKNOWN") and failures < 5:
                        failures += 1
                        time.sleep(min(2 ** failures * 0.25, 5))
                    else:
                        raise
            # the stream ended without a final state, or polling: look once
            job = self.get_job(name)
            update(job)
            if job.state in TERMINAL_JOB_STATES:
                return job
            time.sleep(poll_seconds)  # also keeps a stream that keeps ending from spinning

    def trials(self, job_id: str) -> list[trainer_service_pb2.Trial]:
        return self._pages(self._trainer.ListTrials, trainer_service_pb2.ListTrialsRequest(
            parent=resource_name("trainingJobs", job_id)), "trials")

    # -------------------------------------------------------------- models
    def leaderboard(self, job_id: str) -> evaluator_service_pb2.Leaderboard:
        name = resource_name("trainingJobs", job_id) + "/leaderboard"
        return self._unary(self._evaluator.GetLeaderboard,
                           evaluator_service_pb2.GetLeaderboardRequest(name=name))

    def leaderboard_frame(self, job_id: str) -> pd.DataFrame:
        """One row per model, best first: rank, model, family, cv_score, best,
        ranking_note ("" unless the model ranks above one with a better cv_score),
        then one column per holdout metric."""
        board = self.leaderboard(job_id)
        rows = []
        for entry in board.entries:
            row = {"rank": entry.rank, "model": resource_id(entry.model.name),
                   "family": entry.model.family, "cv_score": entry.model.cv_score,
                   "best": entry.model.best or entry.model.name == board.best_model,
                   "ranking_note": entry.model.ranking_note}
            row.update(dict(sorted(entry.evaluation.metrics.items())))
            rows.append(row)
        columns = ["rank", "model", "family", "cv_score", "best", "ranking_note"]
        return pd.DataFrame(rows, columns=columns + sorted(
            {k for r in rows for k in r} - set(columns)))

    def models(self, job_id: str | None = None) -> list[evaluator_service_pb2.Model]:
        request = evaluator_service_pb2.ListModelsRequest()
        if job_id:
            request.training_job = resource_name("trainingJobs", job_id)
        return self._pages(self._evaluator.ListModels, request, "models")

    def get_model(self, model_id: str) -> evaluator_service_pb2.Model:
        return self._unary(self._evaluator.GetModel, evaluator_service_pb2.GetModelRequest(
            name=resource_name("models", model_id)))

    def evaluation(self, model_id: str) -> evaluator_service_pb2.ModelEvaluation:
        name = resource_name("models", model_id) + "/evaluation"
        return self._unary(self._evaluator.GetModelEvaluation,
                           evaluator_service_pb2.GetModelEvaluationRequest(name=name))

    # -------------------------------------------------------------- endpoints
    def deploy(self, model_id: str, display_name: str | None = None
               ) -> predictor_service_pb2.Endpoint:
        endpoint = predictor_service_pb2.Endpoint(model=resource_name("models", model_id),
                                                  display_name=display_name or "")
        return self._unary(self._predictor.CreateEndpoint,
                           predictor_service_pb2.CreateEndpointRequest(endpoint=endpoint))

    def get_endpoint(self, endpoint_id: str) -> predictor_service_pb2.Endpoint:
        return self._unary(self._predictor.GetEndpoint, predictor_service_pb2.GetEndpointRequest(
            name=resource_name("endpoints", endpoint_id)))

    def endpoints(self) -> list[predictor_service_pb2.Endpoint]:
        return self._pages(self._predictor.ListEndpoints,
                           predictor_service_pb2.ListEndpointsRequest(), "endpoints")

    def update_endpoint(self, endpoint_id: str, *, model_id: str | None = None,
                        display_name: str | None = None) -> predictor_service_pb2.Endpoint:
        """Redeploys: points the endpoint at another model and/or renames it. The new
        model is loaded before the switch; no request fails on it."""
        name = resource_name("endpoints", endpoint_id)
        endpoint = predictor_service_pb2.Endpoint(name=name)
        paths = []
        if model_id is not None:
            endpoint.model = resource_name("models", model_id)
            paths.append("model")
        if display_name is not None:
            endpoint.display_name = display_name
            paths.append("display_name")
        request = predictor_service_pb2.UpdateEndpointRequest(endpoint=endpoint)
        request.update_mask.paths.extend(paths)
        self._endpoint_cache.pop(name, None)
        return self._unary(self._predictor.UpdateEndpoint, request)

    def delete_endpoint(self, endpoint_id: str) -> None:
        name = resource_name("endpoints", endpoint_id)
        self._unary(self._predictor.DeleteEndpoint,
                    predictor_service_pb2.DeleteEndpointRequest(name=name))
        self._endpoint_cache.pop(name, None)

    def _endpoint_info(self, name: str) -> predictor_service_pb2.Endpoint:
        if name not in self._endpoint_cache:
            self._endpoint_cache[name] = self.get_endpoint(name)
        return self._endpoint_cache[name]

    def _classes(self, model_name: str) -> list[str] | None:
        """Class labels of a model, in probability order (None if unknown)."""
        if not model_name:
            return None
        if model_name not in self._classes_cache:
            try:
                self._classes_cache[model_name] = list(self.get_model(model_name).classes) or None
            except NbmlError:
                return None
        return self._classes_cache[model_name]

    def _feature_columns(self, endpoint: str, frame: pd.DataFrame) -> list[str] | None:
        """The frame's columns the endpoint needs (extra columns, e.g. the target or an
        id, are not sent); None means: send all columns."""
        features = list(self._endpoint_info(endpoint).feature_columns)
        if not features:
            return None
        present = {str(c): c for c in frame.columns}
        return [present[f] for f in features if f in present]

    def predict(self, endpoint_id: str, frame: pd.DataFrame, *,
                batch_rows: int = PREDICT_BATCH_ROWS, select_features: bool = True
                ) -> pd.DataFrame:
        """Predictions for every row of ``frame``, in order, with ``frame``'s index:
        ``prediction`` plus ``probability_<class>`` columns for classification.
        Only the endpoint's feature columns are sent when ``select_features``."""
        endpoint = resource_name("endpoints", endpoint_id)
        columns = self._feature_columns(endpoint, frame) if select_features else None
        predictions: list[Any] = []
        model = ""

        def send(part: pd.DataFrame) -> predictor_service_pb2.PredictResponse:
            return self._unary(self._predictor.Predict, predictor_service_pb2.PredictRequest(
                endpoint=endpoint, rows=frame_to_structs(part, columns)))

        for start in range(0, len(frame), max(1, batch_rows)):
            part = frame.iloc[start:start + batch_rows]
            try:
                resp = send(part)
            except NbmlError as exc:
                # The feature columns are cached: someone may have redeployed the
                # endpoint to a model with other columns since.
                if not select_features or exc.reason != COLUMNS_MISMATCH:
                    raise
                self._endpoint_cache.pop(endpoint, None)
                fresh = self._feature_columns(endpoint, frame)
                if fresh == columns:
                    raise
                columns = fresh
                resp = send(part)
            if len(resp.predictions) != len(part):
                raise NbmlError("INTERNAL", f"the server returned {len(resp.predictions)} "
                                f"predictions for {len(part)} rows", "PREDICTION_COUNT_MISMATCH")
            predictions.extend(resp.predictions)
            model = resp.model or model
        self.last_model = model
        return predictions_to_frame(predictions, self._classes(model), index=frame.index)

    def predict_columns(self, endpoint_id: str, columns: Mapping[str, Any] | pd.DataFrame
                        ) -> dict[str, np.ndarray]:
        """Predictions for rows sent column by column - column name -> values (lists,
        arrays or Series; exactly the endpoint's feature columns, all of one length, at
        most the server's row limit, 100,000 by default) - in one Predict call, far
        cheaper than ``predict`` on many rows. Returns ``prediction_columns_to_dict`` of
        the answer."""
        request = predictor_service_pb2.PredictRequest(
            endpoint=resource_name("endpoints", endpoint_id),
            columns={str(name): column_values(values) for name, values in columns.items()})
        resp = self._unary(self._predictor.Predict, request)
        self.last_model = resp.model
        return prediction_columns_to_dict(resp.prediction_columns)

    def predict_stream(self, endpoint_id: str, frames: Iterable[pd.DataFrame], *,
                       select_features: bool = True) -> Iterator[pd.DataFrame]:
        """One StreamPredict call: a prediction frame for each input frame, in order."""
        endpoint = resource_name("endpoints", endpoint_id)
        pending: deque[Any] = deque()
        columns_holder: dict[str, Any] = {}

        def requests() -> Iterator[predictor_service_pb2.StreamPredictRequest]:
            first = True
            for frame in frames:
                if select_features and "columns" not in columns_holder:
                    columns_holder["columns"] = self._feature_columns(endpoint, frame)
                pending.append(frame.index)
                yield predictor_service_pb2.StreamPredictRequest(
                    endpoint=endpoint if first else "",
                    rows=frame_to_structs(frame, columns_holder.get("columns")))
                first = False

        if select_features:
            # Fresh, not cached: a stream cannot resend a frame when the endpoint was
            # redeployed to a model with other columns. Fails early before streaming.
            self._endpoint_cache.pop(endpoint, None)
            self._endpoint_info(endpoint)
        self._refresh_if_expiring()
        call = self._predictor.StreamPredict(requests(), metadata=self._metadata(True))
        try:
            for resp in call:
                index = pending.popleft() if pending else None
                yield predictions_to_frame(resp.predictions, self._classes(resp.model), index=index)
        except grpc.RpcError as e:
            raise NbmlError.from_rpc_error(e) from None
        finally:
            call.cancel()

    def batch_predict(self, endpoint_id: str, dataset_id: str, *,
                      timeout: float | None = None) -> dataset_service_pb2.Dataset:
        """Predicts every row of a stored data set; returns the new output data set."""
        return self.batch_predict_response(endpoint_id, dataset_id,
                                           timeout=timeout).output_dataset

    def batch_predict_response(self, endpoint_id: str, dataset_id: str, *,
                               timeout: float | None = None
                               ) -> predictor_service_pb2.BatchPredictResponse:
        deadline = timeout if timeout is not None else (
            max(self.timeout, 600) if self.timeout else None)
        return self._unary(self._predictor.BatchPredict, predictor_service_pb2.BatchPredictRequest(
            endpoint=resource_name("endpoints", endpoint_id),
            dataset=resource_name("datasets", dataset_id)), timeout=deadline)
