"""Limits, on a platform of its own started with small ones: the upload size, each user's
storage (uploads and batch predictions), queued or running jobs per user, rows per
prediction and the request size. Each is refused with a clear error over gRPC and REST,
the services stay healthy, and a refused request leaves nothing behind."""

import base64
import re

import grpc
import numpy as np
import pandas as pd
import pytest

from deploy.envoy.process import free_port
from nbml.client import Client, column_values, frame_to_structs
from nbml.errors import NbmlError
from nbml.v1 import (dataset_service_pb2, dataset_service_pb2_grpc, predictor_service_pb2,
                     predictor_service_pb2_grpc)
from nbml_server.launcher import LocalPlatform
# services_stay_healthy: autouse here too, so after each test every service is healthy.
from tests.e2e.test_failures import (error_of, predict_over_grpc, rest,  # noqa: F401
                                     services_stay_healthy)

pytestmark = pytest.mark.e2e

KiB, MiB = 1024, 1024 * 1024
MAX_UPLOAD_BYTES = 64 * KiB
MAX_STORAGE_BYTES = 160 * KiB
MAX_RUNNING_JOBS = 2
MAX_ROWS = 50
# Envoy's REST body limit and the services' gRPC message limit (deploy/envoy and
# nbml_server.platform.server), which these tests do not change.
REST_BODY_LIMIT, GRPC_MESSAGE_LIMIT = 4 * MiB, 8 * MiB


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """This module's own platform (in place of the session's), with small limits."""
    env = {"NBML_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
           "NBML_MAX_STORAGE_BYTES_PER_USER": str(MAX_STORAGE_BYTES),
           "NBML_MAX_RUNNING_JOBS_PER_USER": str(MAX_RUNNING_JOBS),
           "NBML_MAX_PREDICTION_ROWS": str(MAX_ROWS)}
    # Its users all sign up from 127.0.0.1: above Envoy's per-address sign-up limit.
    with LocalPlatform(tmp_path_factory.mktemp("nbml-limits"), http_port=free_port(),
                       env=env, login_attempts_per_minute=1000) as running:
        yield running


def signed_up(platform, name: str) -> Client:
    client = Client(platform.address)
    client.sign_up(name, "correct horse battery staple")
    return client


def csv_of_size(size: int) -> bytes:
    """A one-column CSV file of exactly `size` bytes."""
    rows = ["1"] * ((size - 2) // 2)
    if size % 2:
        rows[0] = "10"
    return ("v\n" + "".join(f"{row}\n" for row in rows)).encode()


def upload_file(client: Client, tmp_path, data: bytes, name: str = "data.csv"):
    path = tmp_path / name
    path.write_bytes(data)
    return client.upload_dataset(path)


def rest_upload(platform, token: str, data: bytes):
    """An upload over REST: a JSON array of messages, the file in 16 KiB chunks."""
    messages = [{"metadata": {"display_name": "rest upload"}}] + [
        {"chunk": base64.b64encode(data[i:i + 16 * KiB]).decode()}
        for i in range(0, len(data), 16 * KiB)]
    return rest(platform, "POST", "/v1/datasets:upload", token, json=messages)


def rest_reason(response) -> str:
    [info] = [d for d in response.json()["details"] if d["@type"].endswith("ErrorInfo")]
    return info["reason"]


def stored_files(platform) -> list:
    return sorted((platform.home / "blobs").rglob("*"))


@pytest.fixture(scope="module")
def deployed(platform):
    """A user with a deployed one-trial logistic regression, and rows to predict."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "z": rng.normal(size=60)})
    frame["y"] = np.where(frame["x"] + frame["z"] > 0, "up", "down")
    with signed_up(platform, "pat") as client:
        dataset = client.upload_dataset(frame, name="training")
        job = client.wait_for_job(client.train(
            dataset.name, "y", budget_seconds=5, holdout_fraction=0,
            families=["logistic_regression"], max_trials=1).name)
        assert job.best_model, job.error
        endpoint = client.deploy(job.best_model).name
        yield client, endpoint, dataset.name, frame.drop(columns="y")


def test_an_upload_over_the_size_limit_is_refused_as_it_streams(platform, tmp_path):
    files_before = stored_files(platform)
    with signed_up(platform, "uma") as client:
        error = error_of(upload_file, client, tmp_path, csv_of_size(MAX_UPLOAD_BYTES + 1))
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "FILE_TOO_LARGE")
        assert [(v.field, v.description) for v in error.field_violations] == [
            ("chunk", f"the file is larger than the limit of {MAX_UPLOAD_BYTES} bytes")]

        # A 64 MiB stream is refused soon after it passes the limit, long before its end:
        # the service never waits for (or holds) the whole file.
        sent = []
        chunk_bytes, total = 16 * KiB, 64 * MiB

        def long_upload():
            yield dataset_service_pb2.UploadDatasetRequest(
                metadata=dataset_service_pb2.DatasetUploadMetadata(display_name="long"))
            for number in range(total // chunk_bytes):
                sent.append(number)
                yield dataset_service_pb2.UploadDatasetRequest(chunk=b"1\n" * (chunk_bytes // 2))
        with grpc.insecure_channel(platform.address) as channel:  # through Envoy
            with pytest.raises(grpc.RpcError) as caught:
                dataset_service_pb2_grpc.DatasetServiceStub(channel).UploadDataset(
                    long_upload(), metadata=[("authorization", f"Bearer {client.token}")],
                    timeout=60)
        assert NbmlError.from_rpc_error(caught.value).reason == "FILE_TOO_LARGE"
        assert len(sent) * chunk_bytes < total / 4, f"{len(sent)} chunks were sent"

        response = rest_upload(platform, client.token, csv_of_size(MAX_UPLOAD_BYTES + 1))
        assert response.status_code == 400, response.text
        assert rest_reason(response) == "FILE_TOO_LARGE"
        assert client.datasets() == []
    assert stored_files(platform) == files_before


def test_uploads_past_the_users_storage_are_refused_until_room_is_made(platform, tmp_path):
    file_bytes = 60_000
    with signed_up(platform, "sam") as client, signed_up(platform, "tom") as other:
        first = upload_file(client, tmp_path, csv_of_size(file_bytes))
        upload_file(client, tmp_path, csv_of_size(file_bytes))
        files_before = stored_files(platform)
        error = error_of(upload_file, client, tmp_path, csv_of_size(file_bytes))
        assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", "STORAGE_QUOTA_EXCEEDED")
        used = 2 * file_bytes
        assert (f"your data sets take {used} of your {MAX_STORAGE_BYTES} bytes and this upload "
                f"is larger than the {MAX_STORAGE_BYTES - used} bytes left") in error.message
        response = rest_upload(platform, client.token, csv_of_size(file_bytes))
        assert response.status_code == 429, response.text
        assert rest_reason(response) == "STORAGE_QUOTA_EXCEEDED"
        assert len(client.datasets()) == 2
        assert stored_files(platform) == files_before

        upload_file(other, tmp_path, csv_of_size(file_bytes))  # storage is per user
        client.delete_dataset(first.name)
        upload_file(client, tmp_path, csv_of_size(file_bytes))
        assert len(client.datasets()) == 2


def test_too_many_rows_in_a_prediction_are_refused_naming_the_field(platform, deployed):
    client, endpoint, _, features = deployed
    rows = pd.concat([features] * 2).head(MAX_ROWS + 1)
    assert len(client.predict(endpoint, rows.head(MAX_ROWS))) == MAX_ROWS
    too_many = f"{MAX_ROWS + 1} rows, at most {MAX_ROWS} per request"
    for predict, field in ((client.predict, "rows"), (client.predict_columns, "columns")):
        error = error_of(predict, endpoint, rows)
        assert (error.code, error.reason) == ("INVALID_ARGUMENT", "TOO_MANY_ROWS")
        assert [(v.field, v.description) for v in error.field_violations] == [(field, too_many)]

    streamed = client.predict_stream(endpoint, [rows.head(3), rows])
    assert len(next(streamed)) == 3
    error = error_of(next, streamed)
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "TOO_MANY_ROWS")

    endpoint_id = endpoint.split("/")[-1]
    for body in ({"rows": rows.to_dict(orient="records")},
                 {"columns": {c: {"numbers": rows[c].tolist()} for c in rows}}):
        response = rest(platform, "POST", f"/v1/endpoints/{endpoint_id}:predict", client.token,
                        json=body)
        assert response.status_code == 400, response.text
        assert rest_reason(response) == "TOO_MANY_ROWS"


def test_a_batch_prediction_that_does_not_fit_the_storage_left_is_refused(platform, deployed,
                                                                          tmp_path):
    client, endpoint, dataset, _ = deployed
    output = client.batch_predict(endpoint, dataset)  # 60 rows, in slices of 50
    assert output.row_count == 60
    # Fill the storage but for 100 bytes, far less than another output needs.
    fill = MAX_STORAGE_BYTES - sum(d.size_bytes for d in client.datasets()) - 100
    pieces = -(-fill // MAX_UPLOAD_BYTES)
    fillers = [upload_file(client, tmp_path, csv_of_size(fill // pieces + (i < fill % pieces)))
               for i in range(pieces)]
    assert sum(d.size_bytes for d in client.datasets()) == MAX_STORAGE_BYTES - 100
    datasets_before, files_before = len(client.datasets()), stored_files(platform)
    error = error_of(client.batch_predict, endpoint, dataset)
    assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", "STORAGE_QUOTA_EXCEEDED")
    needed = re.search(r"this data set needs (\d+) more", error.message)
    assert needed and int(needed[1]) > 100, error.message
    response = rest(platform, "POST", f"/v1/{endpoint}:batchPredict", client.token,
                    json={"dataset": dataset})
    assert response.status_code == 429, response.text
    assert len(client.datasets()) == datasets_before
    assert stored_files(platform) == files_before

    client.delete_dataset(fillers[0].name)
    assert client.batch_predict(endpoint, dataset).row_count == 60


def test_jobs_past_the_running_limit_are_refused_until_one_ends(platform, deployed):
    other, _, other_dataset, features = deployed
    with signed_up(platform, "joan") as client:
        dataset = client.upload_dataset(features.assign(y=features["x"] > 0), name="jobs").name
        # Long budgets: the jobs are still queued or running when the next one comes.
        running = [client.train(dataset, "y", budget_seconds=300).name
                   for _ in range(MAX_RUNNING_JOBS)]
        error = error_of(client.train, dataset, "y", budget_seconds=300)
        assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", "TOO_MANY_RUNNING_JOBS")
        assert error.message.startswith(
            f"{MAX_RUNNING_JOBS} of your training jobs are queued or running and at most "
            f"{MAX_RUNNING_JOBS} may be at once")
        response = rest(platform, "POST", "/v1/trainingJobs", client.token,
                        json={"dataset": dataset, "target_column": "y", "budget_seconds": 300})
        assert response.status_code == 429, response.text
        assert rest_reason(response) == "TOO_MANY_RUNNING_JOBS"
        assert sorted(j.name for j in client.jobs()) == sorted(running)

        # Another user's jobs are their own.
        other.cancel_job(other.train(other_dataset, "y", budget_seconds=300).name)

        # A job being cancelled no longer counts, even before its worker stops it.
        client.cancel_job(running[0])
        client.cancel_job(client.train(dataset, "y", budget_seconds=300).name)
        client.cancel_job(running[1])


def test_a_message_or_body_over_the_request_size_limit_is_refused(platform, deployed):
    client, endpoint, _, features = deployed
    big = features.head(1).astype(object)
    big.loc[big.index[0], "x"] = "9" * (GRPC_MESSAGE_LIMIT + 1)
    request = predictor_service_pb2.PredictRequest(endpoint=endpoint,
                                                   rows=frame_to_structs(big))
    with grpc.insecure_channel(platform.address) as channel:  # through Envoy
        stub = predictor_service_pb2_grpc.PredictorServiceStub(channel)
        error = error_of(predict_over_grpc, stub, client.token, request)
        assert error.code == "RESOURCE_EXHAUSTED"
        small = predictor_service_pb2.PredictRequest(
            endpoint=endpoint, columns={c: column_values(features[c].head(2)) for c in features})
        assert len(predict_over_grpc(stub, client.token, small).prediction_columns.labels) == 2

    response = rest(platform, "POST", f"/v1/{endpoint}:predict", client.token,
                    json={"rows": [{"x": "9" * (REST_BODY_LIMIT + 1), "z": 0}]})
    assert response.status_code == 413
