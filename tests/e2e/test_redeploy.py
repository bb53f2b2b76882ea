"""Redeploying an endpoint (UpdateEndpoint) to another model under a stream of
predictions: the new model serves from the switch on and not one request fails; a
client that cached the old model's columns follows a redeploy made elsewhere."""

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf import struct_pb2

from nbml.client import Client
from nbml.v1 import predictor_service_pb2 as pb, predictor_service_pb2_grpc

from tests.e2e.background_calls import CallsInBackground
from tests.e2e.test_failures import error_of, rest

pytestmark = pytest.mark.e2e

CALLERS = 2


def _struct(row: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(row)
    return message


def test_redeploy_switches_models_without_a_failed_request(
        platform, alice, trained, breast_cancer_features):
    old = trained["model"]
    new = next(m.name.split("/")[-1] for m in alice.models(trained["job"])
               if m.name != f"models/{old}")
    endpoint = alice.deploy(old, "redeployed")
    secret = alice.create_api_key("redeploy test")
    rows = breast_cancer_features.head(2).to_dict(orient="records")

    request = pb.PredictRequest(endpoint=endpoint.name, rows=[_struct(r) for r in rows])
    with grpc.insecure_channel(platform.address) as channel:
        stub = predictor_service_pb2_grpc.PredictorServiceStub(channel)

        def predict() -> str:  # the model that answered
            return stub.Predict(request, timeout=30,
                                metadata=(("authorization", f"Bearer {secret}"),)).model
        with CallsInBackground(predict, callers=CALLERS) as calls:
            calls.wait_for(lambda c: len(c.results) >= 20, "predictions from the old model")
            updated = alice.update_endpoint(endpoint.name, model_id=new)
            switched = len(calls.results)
            calls.wait_for(lambda c: len(c.results) >= switched + 40,
                           "predictions after the redeploy")

    assert calls.failures == []
    assert set(calls.results[:20]) == {f"models/{old}"}
    # A request already running when the switch came may end on the old model; every
    # request after those is the new model's.
    assert set(calls.results[switched + CALLERS:]) == {f"models/{new}"}
    assert updated.model == f"models/{new}" and updated.display_name == "redeployed"
    assert updated.update_time.ToNanoseconds() > updated.create_time.ToNanoseconds()
    assert alice.get_endpoint(endpoint.name).model == f"models/{new}"


def test_update_endpoint_over_rest_and_its_errors(platform, alice, bob, trained):
    endpoint = alice.deploy(trained["model"], "before").name
    renamed = rest(platform, "PATCH", f"/v1/{endpoint}", alice.token,
                   params={"update_mask": "display_name"},
                   json={"display_name": "after", "model": "models/ignored"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["display_name"] == "after"
    assert renamed.json()["model"] == f"models/{trained['model']}"  # not in the mask

    error = error_of(lambda: alice.update_endpoint(endpoint))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "NOTHING_TO_UPDATE")
    bobs_model = error_of(lambda: alice.update_endpoint(endpoint, model_id="mdl_missing"))
    assert (bobs_model.code, bobs_model.reason) == ("NOT_FOUND", "MODEL_NOT_FOUND")
    bad_mask = rest(platform, "PATCH", f"/v1/{endpoint}", alice.token,
                    params={"update_mask": "feature_columns"}, json={})
    assert bad_mask.status_code == 400
    assert "feature_columns" in bad_mask.text
    assert alice.get_endpoint(endpoint).display_name == "after"


def test_a_client_follows_a_redeploy_to_a_model_with_other_columns(
        platform, alice, trained, breast_cancer_csv):
    # Both models find their columns in the whole file: the classifier the 30
    # measurements, the regressor of "mean radius" the other 29 and "target".
    frame = pd.read_csv(breast_cancer_csv).head(3)
    job = alice.train(trained["dataset"], "mean radius", budget_seconds=5,
                      families=["ridge"], max_trials=2)
    regressor = alice.wait_for_job(job.name.split("/")[-1]).best_model.split("/")[-1]
    endpoint = alice.deploy(trained["model"], "columns change").name.split("/")[-1]
    assert any(c.startswith("probability_") for c in alice.predict(endpoint, frame).columns)

    # Redeployed by someone else: alice's client still holds the classifier's columns.
    with Client(platform.address, token=alice.token) as colleague:
        colleague.update_endpoint(endpoint, model_id=regressor)
    radius = alice.predict(endpoint, frame)
    assert alice.last_model == f"models/{regressor}"
    assert list(radius.columns) == ["prediction"]
    assert np.allclose(radius["prediction"].astype(float), frame["mean radius"], atol=1.0)

    with Client(platform.address, token=alice.token) as colleague:
        colleague.update_endpoint(endpoint, model_id=trained["model"])
    streamed = list(alice.predict_stream(endpoint, [frame]))
    assert len(streamed) == 1 and any(c.startswith("probability_") for c in streamed[0].columns)

    # A frame that really lacks a column still gets the server's answer.
    error = error_of(lambda: alice.predict(endpoint, frame.drop(columns=["mean radius"])))
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "PREDICTION_COLUMNS_MISMATCH")
