"""The user path over REST (curl's view), through Envoy's JSON transcoding."""

import base64

import pytest
import requests

from nbml_server.domain.automl import load_model

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rest(platform):
    session = requests.Session()
    session.trust_env = False  # loopback only, never through a proxy
    base = f"http://{platform.address}"

    def call(method: str, path: str, token: str | None = None, **kwargs):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return session.request(method, base + path, headers=headers, timeout=120, **kwargs)
    yield call
    session.close()


@pytest.fixture(scope="module")
def carol(rest) -> str:
    response = rest("POST", "/v1/auth:signUp",
                    json={"username": "carol", "password": "carol's long password"})
    assert response.status_code == 200, response.text
    return response.json()["tokens"]["access_token"]


def test_rest_user_path(rest, carol, breast_cancer_csv, breast_cancer_features):
    assert rest("GET", "/v1/users/me", carol).json()["username"] == "carol"

    # A client-streamed RPC takes a JSON array of messages over REST.
    upload = rest("POST", "/v1/datasets:upload", carol, json=[{
        "metadata": {"display_name": "breast cancer"},
        "chunk": base64.b64encode(breast_cancer_csv.read_bytes()).decode()}])
    assert upload.status_code == 200, upload.text
    dataset = upload.json()
    assert dataset["row_count"] == "569"  # int64 travels as a JSON string
    assert dataset["profile"]["target_suggestions"][0]["column"] == "target"

    created = rest("POST", "/v1/trainingJobs", carol, json={
        "dataset": dataset["name"], "target_column": "target", "budget_seconds": 10})
    assert created.status_code == 200, created.text
    job_name = created.json()["name"]
    assert created.json()["state"] == "JOB_STATE_PENDING"

    watched = rest("GET", f"/v1/{job_name}:watch", carol)
    assert watched.status_code == 200
    job = rest("GET", f"/v1/{job_name}", carol).json()
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert job["holdout_fraction"] == 0.2  # unset: the default, resolved

    board = rest("GET", f"/v1/{job_name}/leaderboard", carol).json()
    assert board["best_model"] == job["best_model"]
    assert board["entries"][0]["evaluation"]["metrics"]["roc_auc"] > 0.95

    endpoint = rest("POST", "/v1/endpoints", carol, json={"model": job["best_model"]}).json()
    rows = breast_cancer_features.head(5).to_dict(orient="records")
    predicted = rest("POST", f"/v1/{endpoint['name']}:predict", carol, json={"rows": rows})
    assert predicted.status_code == 200, predicted.text
    predictions = predicted.json()["predictions"]
    assert len(predictions) == 5
    assert all(p["label"] in ("malignant", "benign") for p in predictions)

    # The same rows column by column, answered column by column.
    columns = {name: {"numbers": values.tolist()}
               for name, values in breast_cancer_features.head(5).items()}
    by_column = rest("POST", f"/v1/{endpoint['name']}:predict", carol, json={"columns": columns})
    assert by_column.status_code == 200, by_column.text
    answer = by_column.json()
    assert not answer.get("predictions")  # Envoy prints empty fields too
    prediction_columns = answer["prediction_columns"]
    assert prediction_columns["labels"] == [p["label"] for p in predictions]
    classes = prediction_columns["classes"]
    assert sorted(classes) == ["benign", "malignant"]
    assert prediction_columns["probabilities"] == pytest.approx(
        [p["probabilities"][c] for p in predictions for c in classes], abs=1e-9)

    listed = rest("GET", "/v1/datasets?page_size=1", carol).json()
    assert len(listed["datasets"]) == 1

    downloaded = rest("GET", f"/v1/{job['best_model']}:download", carol)
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "application/octet-stream"
    model = load_model(downloaded.content)
    assert set(model.predict(breast_cancer_features.head(5))) <= {"malignant", "benign"}


def test_rest_errors_carry_status_and_details(rest, carol):
    missing = rest("GET", "/v1/datasets/ds_01m81vnk75e4dq3g1e9xs08pr1", carol)
    assert missing.status_code == 404
    assert missing.json()["code"] == 5  # google.rpc.Code.NOT_FOUND

    bad_budget = rest("POST", "/v1/trainingJobs", carol, json={
        "dataset": "datasets/ds_01m81vnk75e4dq3g1e9xs08pr1", "target_column": "y"})
    assert bad_budget.status_code == 404

    unauthenticated = rest("GET", "/v1/users/me")
    assert unauthenticated.status_code == 401

    wrong = rest("POST", "/v1/auth:logIn", json={"username": "carol", "password": "nope nope"})
    assert wrong.status_code == 401
    assert "wrong user name or password" in wrong.json()["message"]
