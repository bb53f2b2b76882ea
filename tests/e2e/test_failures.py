"""Failures a user meets: each is a clear error with the right gRPC status (and HTTP
code through REST), the services stay healthy, and nothing half-written is left."""

import grpc
import numpy as np
import pandas as pd
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nbml.client import column_type_to_str, column_values, frame_to_structs
from nbml.errors import NbmlError
from nbml.v1 import predictor_service_pb2, predictor_service_pb2_grpc
from nbml_server.launcher import SERVICES

from .small_model import deploy_small_model

pytestmark = pytest.mark.e2e


def error_of(call, *args, **kwargs) -> NbmlError:
    with pytest.raises(NbmlError) as caught:
        call(*args, **kwargs)
    return caught.value


def rest(platform, method, path, token=None, **kwargs):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, f"http://{platform.address}{path}", headers=headers,
                               timeout=60, **kwargs)


@pytest.fixture(autouse=True)
def services_stay_healthy(platform):
    yield
    assert not platform.failed_children()
    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(platform.address) as channel:  # through Envoy
        assert health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10).status == serving
    for child in platform.children:
        if child.name in SERVICES:
            with grpc.insecure_channel(child.address) as channel:
                service = f"nbml.v1.{child.name.capitalize()}Service"
                assert health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=10).status == serving


def test_malformed_csv_is_rejected_and_leaves_nothing(platform, bob, tmp_path):
    before = len(bob.datasets())
    blobs = list((platform.home / "blobs").rglob("*"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n4,5\n7,8,9\n")
    error = error_of(bob.upload_dataset, bad)
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "CSV_PARSE_ERROR")
    assert any("3" in v.description for v in error.field_violations), error.field_violations
    assert len(bob.datasets()) == before
    assert list((platform.home / "blobs").rglob("*")) == blobs


@pytest.fixture(scope="module")
def small_dataset(bob, tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.csv"
    pd.DataFrame({"x": range(40), "z": [i % 7 for i in range(40)], "same": ["one"] * 40,
                  "y": ["a", "b"] * 20}).to_csv(path, index=False)
    return bob.upload_dataset(path).name.split("/")[-1]


@pytest.mark.parametrize("target, kwargs, reason", [
    ("no_such_column", {}, "UNKNOWN_TARGET_COLUMN"),
    ("same", {}, "TARGET_SINGLE_CLASS"),
    ("y", {"budget_seconds": 1}, "BUDGET_OUT_OF_RANGE"),
    ("y", {"budget_seconds": 100_000}, "BUDGET_OUT_OF_RANGE"),
    ("y", {"holdout_fraction": 0.6}, "HOLDOUT_FRACTION_OUT_OF_RANGE"),
    ("y", {"holdout_fraction": -0.1}, "HOLDOUT_FRACTION_OUT_OF_RANGE"),
    ("y", {"metric": "rmse", "task": "classification"}, "UNKNOWN_METRIC"),
])
def test_bad_training_requests(bob, small_dataset, target, kwargs, reason):
    jobs_before = len(bob.jobs())
    error = error_of(bob.train, small_dataset, target, **kwargs)
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", reason)
    assert error.field_violations and error.field_violations[0].field.startswith("training_job.")
    assert len(bob.jobs()) == jobs_before


def test_prediction_rows_with_missing_or_extra_columns(platform, alice, trained,
                                                       breast_cancer_features):
    row = breast_cancer_features.iloc[0].to_dict()
    missing = {k: v for k, v in row.items() if k != "mean radius"}
    extra = {**row, "shoe size": 43}
    for rows, needle in (([missing], "missing column 'mean radius'"),
                         ([extra], "unknown column 'shoe size'")):
        response = rest(platform, "POST", f"/v1/endpoints/{trained['endpoint']}:predict",
                        alice.token, json={"rows": rows})
        assert response.status_code == 400, response.text
        body = response.json()
        assert needle in body["message"]
        details = [d for d in body["details"] if d["@type"].endswith("BadRequest")]
        assert details[0]["field_violations"][0]["field"].startswith("rows[0].")


def test_prediction_values_of_the_wrong_type_are_refused_naming_them(alice, trained,
                                                                     breast_cancer_features):
    rows = breast_cancer_features.head(5).astype({"mean radius": object})
    rows.loc[3, "mean radius"] = "big"
    for predict, field in ((alice.predict, "rows[3].mean radius"),
                           (alice.predict_columns, "columns.mean radius[3]")):
        error = error_of(predict, trained["endpoint"], rows)
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "PREDICTION_VALUE_TYPE")
        assert [(v.field, v.description) for v in error.field_violations] == [
            (field, "'big' is not a number; the column is numeric")]


def test_a_number_column_that_was_0_or_1_in_training_takes_other_numbers(bob):
    # Such a column is a boolean in the profile; a model that read it as one refused a 2
    # (a digits pixel in the AutoML benchmark).
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "pixel": rng.integers(0, 2, 60)})
    frame["y"] = np.where(frame["x"] + frame["pixel"] > 0.5, "yes", "no")
    model = deploy_small_model(bob, frame, "zero-one.csv")
    dataset = bob.get_dataset(model.dataset)
    types = {c.name: column_type_to_str(c.type) for c in dataset.profile.columns}
    assert types["pixel"] == "boolean"
    predictions = bob.predict(model.endpoint, pd.DataFrame({"x": [0.1, 0.1], "pixel": [2, 0]}))
    assert len(predictions) == 2


def test_malformed_columnar_requests_are_refused(platform, alice, trained,
                                                 breast_cancer_features):
    rows = breast_cancer_features.head(3)
    columns = {name: column_values(values) for name, values in rows.items()}
    both = predictor_service_pb2.PredictRequest(
        endpoint=f"endpoints/{trained['endpoint']}", columns=columns,
        rows=frame_to_structs(rows))
    ragged = predictor_service_pb2.PredictRequest(
        endpoint=f"endpoints/{trained['endpoint']}",
        columns={**columns, "mean radius": column_values(rows["mean radius"].head(2))})
    with grpc.insecure_channel(platform.address) as channel:  # through Envoy
        stub = predictor_service_pb2_grpc.PredictorServiceStub(channel)
        for request, reason, field in ((both, "ROWS_AND_COLUMNS", "columns"),
                                       (ragged, "COLUMN_LENGTHS_DIFFER", "columns.mean radius")):
            error = error_of(predict_over_grpc, stub, alice.token, request)
            assert (error.code, error.reason) == ("INVALID_ARGUMENT", reason)
            assert [v.field for v in error.field_violations] == [field]


def predict_over_grpc(stub, token, request):
    try:
        return stub.Predict(request, metadata=[("authorization", f"Bearer {token}")], timeout=60)
    except grpc.RpcError as e:
        raise NbmlError.from_rpc_error(e) from None


def test_user_rules_reject_the_upload(bob, tmp_path):
    path = tmp_path / "ages.csv"
    pd.DataFrame({"age": [30, -4, 50], "country": ["FR", "US", "XX"]}).to_csv(path, index=False)
    before = len(bob.datasets())
    error = error_of(bob.upload_dataset, path, rules={
        "required_columns": ["age", "income"],
        "column_rules": [{"column": "age", "min": 0},
                         {"column": "country", "allowed_values": ["FR", "US"]}]})
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "RULES_VIOLATED")
    fields = [v.field for v in error.field_violations]
    assert "metadata.rules.required_columns[1]" in fields
    assert any("income" in v.description for v in error.field_violations)
    assert any("-4" in v.description for v in error.field_violations)
    assert any("XX" in v.description for v in error.field_violations)
    assert len(bob.datasets()) == before
