"""The fiddly parts of the Python client: rows <-> Struct, columns -> ColumnValues,
predictions -> DataFrame or arrays,
resource names, rich error parsing, token refresh, and the credentials file."""

import datetime as dt
import math
import os
import stat

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf import any_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from nbml import credentials
from nbml.cli import render
from nbml.client import (
    Client,
    _rules_message,
    column_values,
    frame_to_structs,
    prediction_columns_to_dict,
    predictions_to_frame,
    resource_id,
    resource_name,
    task_from_str,
    to_python_value,
)
from nbml.errors import FieldViolation, NbmlError
from nbml.v1 import (
    auth_service_pb2,
    common_pb2,
    evaluator_service_pb2,
    predictor_service_pb2,
    trainer_service_pb2,
)


# ------------------------------------------------------------------ cells
@pytest.mark.parametrize("value, expected", [
    (None, None),
    (float("nan"), None),
    (np.nan, None),
    (np.float32("nan"), None),
    (pd.NA, None),
    (pd.NaT, None),
    (np.datetime64("NaT"), None),
    (np.int64(7), 7),
    (np.int8(-3), -3),
    (np.uint64(2**40), 2**40),
    (np.float64(2.5), 2.5),
    (np.float32(0.5), 0.5),
    (np.bool_(True), True),
    (np.bool_(False), False),
    (True, True),
    (3, 3),
    (1.25, 1.25),
    ("setosa", "setosa"),
    ("", ""),
    (np.str_("x"), "x"),
    (pd.Timestamp("2024-05-01T12:30:00"), "2024-05-01T12:30:00"),
    (dt.date(2024, 5, 1), "2024-05-01"),
    (b"abc", "abc"),
])
def test_to_python_value(value, expected):
    result = to_python_value(value)
    assert result == expected
    assert type(result) is type(expected)


def test_to_python_value_keeps_bools_apart_from_ints():
    assert to_python_value(np.bool_(True)) is True
    assert type(to_python_value(np.int64(1))) is int


# ------------------------------------------------------------------ frames -> Structs
def _kinds(s: struct_pb2.Struct) -> dict[str, tuple[str, object]]:
    return {k: (v.WhichOneof("kind"), getattr(v, v.WhichOneof("kind")))
            for k, v in s.fields.items()}


def test_frame_to_structs_types_and_missing_values():
    frame = pd.DataFrame({
        "i": np.array([1, 2, 3], dtype="int64"),
        "f": [1.5, np.nan, -2.0],
        "b": np.array([True, False, True]),
        "s": ["a", None, "c"],
        "n": pd.array([1, None, 3], dtype="Int64"),
        "t": pd.to_datetime(["2024-01-01", None, "2024-01-03"]),
    })
    structs = frame_to_structs(frame)
    assert len(structs) == 3
    first, second = _kinds(structs[0]), _kinds(structs[1])
    assert first["i"] == ("number_value", 1.0)
    assert first["f"] == ("number_value", 1.5)
    assert first["b"] == ("bool_value", True)
    assert first["s"] == ("string_value", "a")
    assert first["n"] == ("number_value", 1.0)
    assert first["t"] == ("string_value", "2024-01-01T00:00:00")
    assert second["f"][0] == "null_value"
    assert second["b"] == ("bool_value", False)
    assert second["s"][0] == "null_value"
    assert second["n"][0] == "null_value"
    assert second["t"][0] == "null_value"


def test_frame_to_structs_keeps_row_order_and_selects_columns():
    frame = pd.DataFrame({"a": [3, 1, 2], "target": ["x", "y", "z"], "b": ["p", "q", "r"]},
                         index=[10, 5, 7])
    structs = frame_to_structs(frame, ["b", "a"])
    assert [dict(s) for s in structs] == [{"b": "p", "a": 3.0}, {"b": "q", "a": 1.0},
                                          {"b": "r", "a": 2.0}]


def test_frame_to_structs_with_string_dtype_and_non_string_column_names():
    frame = pd.DataFrame({0: pd.array(["u", None], dtype="string"), 1: [1, 2]})
    structs = frame_to_structs(frame)
    assert _kinds(structs[0]) == {"0": ("string_value", "u"), "1": ("number_value", 1.0)}
    assert _kinds(structs[1])["0"][0] == "null_value"


def test_frame_from_csv_round_trips():
    import io

    frame = pd.read_csv(io.StringIO("x,c,flag\n1,red,true\n,blue,false\n3,,true\n"))
    rows = [dict(s) for s in frame_to_structs(frame)]
    assert rows == [{"x": 1.0, "c": "red", "flag": True},
                    {"x": None, "c": "blue", "flag": False},
                    {"x": 3.0, "c": None, "flag": True}]


def test_empty_frame_gives_no_structs():
    assert frame_to_structs(pd.DataFrame({"a": []})) == []


# ------------------------------------------------------------------ columns
def test_numeric_columns_go_as_numbers_with_nan_for_missing():
    for values in (np.array([1, 2, 3]), pd.Series([1.5, np.nan, 3.0]),
                   [1, None, 2.5], pd.Series([1, None, 3], dtype="Int64")):
        column = column_values(values)
        assert not column.strings and not column.missing_indices
        np.testing.assert_array_equal(np.array(column.numbers),
                                      np.asarray(pd.Series(values, dtype="float64")))


def test_other_columns_go_as_strings_with_missing_indices():
    column = column_values(pd.Series(["pro", None, 3, 2.5, 4.0, True, np.nan], dtype=object))
    assert list(column.strings) == ["pro", "", "3", "2.5", "4", "True", ""]
    assert list(column.missing_indices) == [1, 6]
    assert not column.numbers
    booleans = column_values(np.array([True, False]))
    assert list(booleans.strings) == ["True", "False"] and not booleans.numbers


def test_prediction_columns_as_arrays():
    classified = prediction_columns_to_dict(predictor_service_pb2.PredictionColumns(
        labels=["b", "a"], values=[0.75, 0.5], classes=["a", "b"],
        probabilities=[0.25, 0.75, 0.5, 0.5]))
    assert list(classified) == ["prediction", "probability_a", "probability_b"]
    assert list(classified["prediction"]) == ["b", "a"]
    assert list(classified["probability_b"]) == [0.75, 0.5]
    regressed = prediction_columns_to_dict(predictor_service_pb2.PredictionColumns(
        values=[1.5, -2.0]))
    assert list(regressed) == ["prediction"] and list(regressed["prediction"]) == [1.5, -2.0]


# ------------------------------------------------------------------ predictions -> frame
def _clf(label, probs):
    return predictor_service_pb2.Prediction(label=label, value=probs[label], probabilities=probs)


def test_classification_predictions_use_the_model_class_order():
    preds = [_clf("b", {"a": 0.1, "b": 0.7, "c": 0.2}), _clf("a", {"a": 0.6, "b": 0.3, "c": 0.1})]
    frame = predictions_to_frame(preds, classes=["c", "a", "b"], index=pd.Index([4, 9]))
    assert list(frame.columns) == ["prediction", "probability_c", "probability_a", "probability_b"]
    assert list(frame.index) == [4, 9]
    assert list(frame["prediction"]) == ["b", "a"]
    assert frame.loc[9, "probability_a"] == pytest.approx(0.6)


def test_classification_without_known_classes_sorts_them():
    preds = [_clf("yes", {"yes": 0.8, "no": 0.2})]
    frame = predictions_to_frame(preds)
    assert list(frame.columns) == ["prediction", "probability_no", "probability_yes"]


def test_missing_probability_is_nan():
    preds = [_clf("a", {"a": 1.0}), _clf("b", {"b": 1.0})]
    frame = predictions_to_frame(preds, classes=["a", "b"])
    assert math.isnan(frame["probability_b"][0])


def test_regression_predictions():
    preds = [predictor_service_pb2.Prediction(value=v) for v in (1.5, -2.0, 0.0)]
    frame = predictions_to_frame(preds)
    assert list(frame.columns) == ["prediction"]
    assert frame["prediction"].dtype == np.float64
    assert list(frame["prediction"]) == [1.5, -2.0, 0.0]


# ------------------------------------------------------------------ names and enums
@pytest.mark.parametrize("collection, given, expected", [
    ("datasets", "ds_01m81vnk75e4dq3g1e9xs08pr1", "datasets/ds_01m81vnk75e4dq3g1e9xs08pr1"),
    ("datasets", "datasets/ds_1", "datasets/ds_1"),
    ("trainingJobs", "job_1", "trainingJobs/job_1"),
    ("models", " mdl_1 ", "models/mdl_1"),
    ("endpoints", "endpoints/ep_1", "endpoints/ep_1"),
])
def test_resource_name(collection, given, expected):
    assert resource_name(collection, given) == expected


@pytest.mark.parametrize("collection, given", [
    ("datasets", ""), ("datasets", "models/mdl_1"), ("endpoints", "endpoints/"),
    ("datasets", "datasets/ds_1/x"),
])
def test_resource_name_rejects_bad_values(collection, given):
    with pytest.raises(NbmlError) as exc:
        resource_name(collection, given)
    assert exc.value.code == "INVALID_ARGUMENT"


def test_resource_id():
    assert resource_id("datasets/ds_1") == "ds_1"
    assert resource_id("trainingJobs/job_1/leaderboard") == "job_1"
    assert resource_id("ds_1") == "ds_1"
    assert resource_id("") == ""


def test_task_from_str():
    assert task_from_str("auto") == common_pb2.TASK_AUTO
    assert task_from_str("Classification") == common_pb2.TASK_CLASSIFICATION
    assert task_from_str("TASK_REGRESSION") == common_pb2.TASK_REGRESSION
    with pytest.raises(NbmlError):
        task_from_str("clustering")


def test_rules_accept_short_column_types():
    rules = _rules_message({"required_columns": ["id"], "column_types": {"price": "numeric"},
                            "column_rules": [{"column": "price", "min": 0, "not_null": True}]})
    assert list(rules.required_columns) == ["id"]
    assert rules.column_types["price"] == common_pb2.COLUMN_TYPE_NUMERIC
    assert rules.column_rules[0].HasField("min") and not rules.column_rules[0].HasField("max")


def test_rules_reject_garbage():
    with pytest.raises(NbmlError):
        _rules_message({"no_such_field": 1})


# ------------------------------------------------------------------ rich errors
class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details="", trailing=()):
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


def _packed(message):
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _rich_status():
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message="the upload failed validation",
        details=[
            _packed(error_details_pb2.ErrorInfo(reason="DATASET_INVALID", domain="nbml.dev",
                                                metadata={"request_id": "req-42"})),
            _packed(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="file.row[12].column[price]", description="below the minimum 0"),
                error_details_pb2.BadRequest.FieldViolation(
                    field="metadata.display_name", description="too long"),
            ])),
        ])


def test_error_from_rich_status():
    err = NbmlError.from_rpc_error(FakeRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, "ignored plain message",
        [("x-request-id", "req-42"),
         ("grpc-status-details-bin", _rich_status().SerializeToString())]))
    assert err.code == "INVALID_ARGUMENT"
    assert err.message == "the upload failed validation"
    assert str(err) == "the upload failed validation"
    assert err.reason == "DATASET_INVALID"
    assert err.request_id == "req-42"
    assert err.field_violations == [
        FieldViolation("file.row[12].column[price]", "below the minimum 0"),
        FieldViolation("metadata.display_name", "too long"),
    ]
    assert err.to_dict() == {
        "code": "INVALID_ARGUMENT", "reason": "DATASET_INVALID",
        "message": "the upload failed validation",
        "field_violations": [
            {"field": "file.row[12].column[price]", "description": "below the minimum 0"},
            {"field": "metadata.display_name", "description": "too long"},
        ]}


def test_error_without_details():
    err = NbmlError.from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no data set ds_9"))
    assert (err.code, err.message, err.reason, err.field_violations) == (
        "NOT_FOUND", "no data set ds_9", "", [])
    assert err.to_dict()["reason"] is None


def test_error_with_garbled_details_keeps_the_plain_status():
    err = NbmlError.from_rpc_error(FakeRpcError(
        grpc.StatusCode.INTERNAL, "boom", [("grpc-status-details-bin", b"\xff\x00garbage")]))
    assert (err.code, err.message, err.reason) == ("INTERNAL", "boom", "")


def test_error_when_trailing_metadata_is_none():
    class NoMetadata(FakeRpcError):
        def trailing_metadata(self):
            return None

    err = NbmlError.from_rpc_error(NoMetadata(grpc.StatusCode.UNAVAILABLE, "down"))
    assert (err.code, err.message) == ("UNAVAILABLE", "down")


# ------------------------------------------------------------------ client behaviour
class _Method:
    """A fake stub method: pops scripted results (exceptions are raised)."""

    def __init__(self, *results):
        self.results = list(results)
        self.calls = []

    def __call__(self, request, metadata=None, timeout=None):
        self.calls.append((request, dict(metadata or ())))
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, BaseException):
            raise result
        return result(request) if callable(result) else result


class _Stub:
    def __init__(self, **methods):
        self.__dict__.update(methods)


@pytest.fixture
def client():
    c = Client("localhost:1", "old-token", refresh_token="refresh-1")
    yield c
    c.close()


def test_unauthenticated_call_refreshes_once_and_retries(client):
    seen_tokens = []
    client.on_tokens = lambda access, refresh: seen_tokens.append((access, refresh))
    user = auth_service_pb2.User(name="users/usr_1", username="ada")
    get_user = _Method(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "expired"), user)
    refresh = _Method(auth_service_pb2.RefreshTokenResponse(tokens=auth_service_pb2.Tokens(
        access_token="new-token", refresh_token="refresh-2", expires_in_seconds=900)))
    client._auth = _Stub(GetCurrentUser=get_user, RefreshToken=refresh)

    assert client.whoami().username == "ada"
    assert [md.get("authorization") for _, md in get_user.calls] == [
        "Bearer old-token", "Bearer new-token"]
    assert refresh.calls[0][0].refresh_token == "refresh-1"
    assert refresh.calls[0][1] == {}  # RefreshToken is sent without the stale token
    assert seen_tokens == [("new-token", "refresh-2")]
    assert (client.token, client.refresh_token) == ("new-token", "refresh-2")


def test_failed_refresh_raises_the_original_error(client):
    get_user = _Method(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "expired"))
    refresh = _Method(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "refresh token revoked"))
    client._auth = _Stub(GetCurrentUser=get_user, RefreshToken=refresh)
    with pytest.raises(NbmlError) as exc:
        client.whoami()
    assert (exc.value.code, exc.value.message) == ("UNAUTHENTICATED", "expired")
    assert len(get_user.calls) == 1


def test_no_refresh_without_refresh_token():
    with Client("localhost:1", "api-key") as c:
        get_user = _Method(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "bad key"))
        c._auth = _Stub(GetCurrentUser=get_user)
        with pytest.raises(NbmlError):
            c.whoami()
        assert len(get_user.calls) == 1


def test_list_methods_follow_page_tokens(client):
    pages = {"": ("p2", ["a", "b"]), "p2": ("p3", ["c"]), "p3": ("", ["d"])}

    def page(request):
        token, methods = pages[request.page_token]
        return auth_service_pb2.ListActivitiesResponse(
            activities=[auth_service_pb2.Activity(method=m) for m in methods],
            next_page_token=token)

    client._auth = _Stub(ListActivities=_Method(page))
    assert [a.method for a in client.activities(limit=None)] == ["a", "b", "c", "d"]
    assert [a.method for a in client.activities(limit=3)] == ["a", "b", "c"]


def test_predict_batches_rows_keeps_order_and_sends_only_features(client):
    def predict(request):
        return predictor_service_pb2.PredictResponse(model="models/mdl_1", predictions=[
            predictor_service_pb2.Prediction(
                label="yes" if row.fields["x"].number_value > 1 else "no",
                probabilities={"yes": 0.9, "no": 0.1} if row.fields["x"].number_value > 1
                else {"yes": 0.2, "no": 0.8})
            for row in request.rows])

    predict_method = _Method(predict)
    client._predictor = _Stub(
        Predict=predict_method,
        GetEndpoint=_Method(predictor_service_pb2.Endpoint(
            name="endpoints/ep_1", model="models/mdl_1", feature_columns=["x", "c"])))
    client._evaluator = _Stub(GetModel=_Method(evaluator_service_pb2.Model(
        name="models/mdl_1", classes=["no", "yes"])))
    frame = pd.DataFrame({"x": [0, 2, 3, np.nan, 5], "c": ["a", "b", None, "d", "e"],
                          "target": ["no", "yes", "yes", "no", "yes"]},
                         index=[50, 40, 30, 20, 10])

    result = client.predict("ep_1", frame, batch_rows=2)

    assert [len(req.rows) for req, _ in predict_method.calls] == [2, 2, 1]
    assert all(req.endpoint == "endpoints/ep_1" for req, _ in predict_method.calls)
    assert set(predict_method.calls[0][0].rows[0].fields) == {"x", "c"}
    assert predict_method.calls[1][0].rows[1].fields["x"].WhichOneof("kind") == "null_value"
    assert list(result.index) == [50, 40, 30, 20, 10]
    assert list(result.columns) == ["prediction", "probability_no", "probability_yes"]
    assert list(result["prediction"]) == ["no", "yes", "yes", "no", "yes"]
    assert client.last_model == "models/mdl_1"


def test_job_documents_use_lowercase_states_and_bare_ids():
    job = trainer_service_pb2.TrainingJob(
        name="trainingJobs/job_1", dataset="datasets/ds_1", target_column="species",
        task=common_pb2.TASK_AUTO, resolved_task=common_pb2.TASK_CLASSIFICATION,
        resolved_metric="log_loss", state=trainer_service_pb2.JOB_STATE_SUCCEEDED,
        best_model="models/mdl_1",
        progress=trainer_service_pb2.JobProgress(trials_completed=4, best_score=0.1))
    doc = render.job_doc(job)
    assert doc["id"] == "job_1" and doc["dataset"] == "ds_1"
    assert doc["state"] == "succeeded" and doc["task"] == "classification"
    assert doc["metric"] == "log_loss" and doc["best_model"] == "mdl_1" and doc["error"] is None
    assert doc["progress"]["trials_completed"] == 4
    assert doc["holdout_fraction"] is None  # a server from before the option
    job.holdout_fraction = 0.0
    doc = render.job_doc(job)
    assert doc["holdout_fraction"] == 0.0
    assert "holdout:     none (trained on every row)" in render.job_text(doc)
    job.holdout_fraction = 0.2
    assert "holdout:     20% of the rows" in render.job_text(render.job_doc(job))


def test_train_sends_the_holdout_fraction_only_when_given(client):
    create = _Method(lambda request: request.training_job)
    client._trainer = _Stub(CreateTrainingJob=create)
    client.train("ds_1", "y")
    client.train("ds_1", "y", holdout_fraction=0)
    client.train("ds_1", "y", holdout_fraction=0.3)
    sent = [request.training_job for request, _ in create.calls]
    assert not sent[0].HasField("holdout_fraction")
    assert sent[1].HasField("holdout_fraction") and sent[1].holdout_fraction == 0.0
    assert sent[2].holdout_fraction == 0.3


def test_leaderboard_without_holdout_metrics():
    entry = evaluator_service_pb2.LeaderboardEntry(
        rank=1, model=evaluator_service_pb2.Model(name="models/mdl_1", family="ridge",
                                                  cv_score=0.9, best=True),
        evaluation=evaluator_service_pb2.ModelEvaluation(name="models/mdl_1/evaluation"))
    board = evaluator_service_pb2.Leaderboard(name="trainingJobs/job_1/leaderboard",
                                              metric="rmse", entries=[entry],
                                              best_model="models/mdl_1")
    doc = render.leaderboard_doc(board, "job_1")
    assert doc["models"][0]["holdout_metrics"] == {} and doc["models"][0]["cv_score"] == 0.9
    text = render.leaderboard_text(doc)
    assert "mdl_1" in text and "0.9000" in text and "no holdout metrics" in text
    assert doc["models"][0]["ranking_note"] is None and "rank 1" not in text


def test_a_ranking_note_is_shown_under_the_leaderboard_and_kept_in_json():
    note = "ranked first, as the simplest model that is not clearly worse: ..."
    entries = [evaluator_service_pb2.LeaderboardEntry(rank=rank, model=model) for rank, model in (
        (1, evaluator_service_pb2.Model(name="models/mdl_1", family="ridge", cv_score=54.0,
                                        best=True, ranking_note=note)),
        (2, evaluator_service_pb2.Model(name="models/mdl_2", family="ensemble",
                                        cv_score=52.7)))]
    board = evaluator_service_pb2.Leaderboard(name="trainingJobs/job_1/leaderboard",
                                              metric="rmse", entries=entries,
                                              best_model="models/mdl_1")
    doc = render.leaderboard_doc(board, "job_1")
    assert [m["ranking_note"] for m in doc["models"]] == [note, None]
    assert f"rank 1 (ridge): {note}" in render.leaderboard_text(doc)
    assert render.model_doc(entries[0].model)["ranking_note"] == note


# ------------------------------------------------------------------ credentials
@pytest.fixture
def config_env(tmp_path):
    return {"NBML_CONFIG_DIR": str(tmp_path / "cfg")}


def test_credentials_file_is_private_and_keyed_by_server(config_env):
    credentials.save("localhost:8080", credentials.StoredCredentials("ada", "a1", "r1"), config_env)
    credentials.save("other:9000", credentials.StoredCredentials("bob", "a2", "r2"), config_env)
    path = credentials.credentials_path(config_env)
    assert path.parent == credentials.config_dir(config_env)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert credentials.load("localhost:8080", config_env) == credentials.StoredCredentials(
        "ada", "a1", "r1")
    assert credentials.load("other:9000", config_env).username == "bob"
    assert credentials.load("nowhere:1", config_env) is None


def test_credentials_update_keeps_username_and_mode(config_env):
    credentials.save("s:1", credentials.StoredCredentials("ada", "a1", "r1"), config_env)
    os.chmod(credentials.credentials_path(config_env), 0o644)
    credentials.update_tokens("s:1", "a2", "r2", config_env)
    assert credentials.load("s:1", config_env) == credentials.StoredCredentials("ada", "a2", "r2")
    assert stat.S_IMODE(os.stat(credentials.credentials_path(config_env)).st_mode) == 0o600


def test_nbml_token_overrides_the_stored_token(config_env):
    credentials.save("s:1", credentials.StoredCredentials("ada", "stored", "r1"), config_env)
    resolved = credentials.resolve("s:1", {**config_env, "NBML_TOKEN": "nbml_apikey"})
    assert (resolved.token, resolved.refresh_token, resolved.source) == ("nbml_apikey", None, "env")
    resolved = credentials.resolve("s:1", config_env)
    assert (resolved.token, resolved.refresh_token, resolved.source) == ("stored", "r1", "file")
    assert credentials.resolve("other:2", config_env).source == "none"


def test_credentials_delete_and_corrupt_file(config_env):
    credentials.save("s:1", credentials.StoredCredentials("ada", "a", "r"), config_env)
    assert credentials.delete("s:1", config_env) is True
    assert credentials.delete("s:1", config_env) is False
    credentials.credentials_path(config_env).write_text("{not json")
    assert credentials.load("s:1", config_env) is None
    credentials.save("s:1", credentials.StoredCredentials("ada", "a", "r"), config_env)
    assert credentials.load("s:1", config_env).access_token == "a"


def test_config_dir_defaults_to_platformdirs():
    import platformdirs

    assert str(credentials.config_dir({})) == platformdirs.user_config_dir("nbml")
