"""The malformed-input corpus (tests/corpus/cases.yaml) against the running platform.

Every case gets the answer the manifest names: a refusal with its code, reason and a
field violation saying where (never INTERNAL, UNKNOWN or a 5xx), or acceptance. A
refused request leaves nothing behind, and every service answers its health check
after each case (`services_stay_healthy`, autouse)."""

import json

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory

import nbml.v1.auth_service_pb2  # noqa: F401 - registers the services in the pool
import nbml.v1.evaluator_service_pb2  # noqa: F401
import nbml.v1.predictor_service_pb2  # noqa: F401
from nbml.errors import NbmlError
from nbml.v1 import common_pb2, dataset_service_pb2, trainer_service_pb2
from tests.corpus.manifest import request_cases, resolved, upload_cases
from tests.e2e.test_failures import rest, services_stay_healthy  # noqa: F401 - autouse

pytestmark = pytest.mark.e2e

UPLOADS = upload_cases()
REQUESTS = request_cases()
UPLOAD = "nbml.v1.DatasetService/UploadDataset"
CREATE_JOB = "nbml.v1.TrainerService/CreateTrainingJob"
CHUNK_BYTES = 1 << 20
FORMATS = {"csv": dataset_service_pb2.DATASET_FORMAT_CSV,
           "parquet": dataset_service_pb2.DATASET_FORMAT_PARQUET,
           "unspecified": dataset_service_pb2.DATASET_FORMAT_UNSPECIFIED}
# What a wrongly half-done request could leave behind: the caller's list of that kind.
LEFT_BEHIND = {
    UPLOAD: "datasets",
    "nbml.v1.PredictorService/BatchPredict": "datasets",
    CREATE_JOB: "jobs",
    "nbml.v1.PredictorService/CreateEndpoint": "endpoints",
    "nbml.v1.AuthService/CreateApiKey": "api_keys",
    "POST /v1/trainingJobs": "jobs",
    "POST /v1/datasets:upload": "datasets",
}


def _method(name: str):
    service, method = name.rsplit("/", 1)
    return descriptor_pool.Default().FindServiceByName(service).FindMethodByName(method)


def call(channel, name: str, request, token: str):
    """The answer of gRPC method `name` to `request` (a list of messages for a client
    stream; a server stream is read to its end), or the NbmlError it gave."""
    method = _method(name)
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    stub = kind(f"/{name}", request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString)
    argument = iter(request) if method.client_streaming else request
    try:
        answer = stub(argument, metadata=[("authorization", f"Bearer {token}")], timeout=60)
        return list(answer) if method.server_streaming else answer
    except grpc.RpcError as error:
        return NbmlError.from_rpc_error(error)


def parsed(name: str, payload):
    """Proto JSON `payload` as the request message(s) of method `name`."""
    method = _method(name)
    request_type = message_factory.GetMessageClass(method.input_type)
    if method.client_streaming:
        return [json_format.ParseDict(message, request_type()) for message in payload]
    return json_format.ParseDict(payload, request_type())


def assert_refused(outcome, expected: dict, default_field: str | None = None) -> None:
    assert isinstance(outcome, NbmlError), f"accepted: {str(outcome)[:300]}"
    assert outcome.code not in ("INTERNAL", "UNKNOWN"), repr(outcome)
    assert (outcome.code, outcome.reason) == (expected.get("code", "INVALID_ARGUMENT"),
                                              expected["reason"]), repr(outcome)
    assert outcome.message
    field = expected.get("field", default_field)
    if outcome.code == "INVALID_ARGUMENT":
        assert outcome.field_violations, repr(outcome)
    named = [v for v in outcome.field_violations if field is None or v.field == field]
    if field is not None:
        assert named, f"no violation of {field}: {outcome.field_violations}"
    if "says" in expected:
        texts = [v.description for v in named] + [outcome.message]
        assert any(expected["says"] in text for text in texts), repr(outcome)


def holding(client, kind: str) -> list[str]:
    return sorted(resource.name for resource in getattr(client, kind)())


@pytest.fixture(scope="module")
def channel(platform):
    """Through Envoy, with gRPC's default message limits (4 MiB received), as grpcurl
    and most clients have them."""
    with grpc.insecure_channel(platform.address) as opened:
        yield opened


# --------------------------------------------------------------------------- uploads


def upload_messages(case) -> list:
    data = case.data()
    metadata = dataset_service_pb2.DatasetUploadMetadata(display_name=case.name,
                                                         format=FORMATS[case.format])
    return [dataset_service_pb2.UploadDatasetRequest(metadata=metadata)] + [
        dataset_service_pb2.UploadDatasetRequest(chunk=data[start:start + CHUNK_BYTES])
        for start in range(0, len(data), CHUNK_BYTES)]


@pytest.fixture(scope="module")
def bob_blobs(platform, bob):
    """Bob's stored data set files, as the blob store's folder holds them."""
    user_id = bob.whoami().name.split("/")[-1]
    folder = platform.home / "blobs" / "users" / user_id / "datasets"
    return lambda: sorted(folder.rglob("*"))


@pytest.mark.parametrize("case", UPLOADS, ids=lambda case: case.name)
def test_upload(case, channel, bob, bob_blobs):
    datasets, blobs = holding(bob, "datasets"), bob_blobs()
    outcome = call(channel, UPLOAD, upload_messages(case), bob.token)
    if case.refused is not None:
        assert_refused(outcome, case.refused, default_field="file")
        assert (holding(bob, "datasets"), bob_blobs()) == (datasets, blobs)
        return
    assert not isinstance(outcome, NbmlError), repr(outcome)
    try:
        columns = {c.name: common_pb2.ColumnType.Name(c.type).removeprefix("COLUMN_TYPE_").lower()
                   for c in outcome.profile.columns}
        assert list(columns) == case.accepted["columns"]
        assert outcome.row_count == case.accepted["rows"]
        for column, kind in case.accepted.get("types", {}).items():
            assert columns[column] == kind, column
        if case.train is not None:
            jobs = holding(bob, "jobs")
            request = trainer_service_pb2.CreateTrainingJobRequest(
                training_job=trainer_service_pb2.TrainingJob(
                    dataset=outcome.name, target_column=case.train["target"]))
            refusal = call(channel, CREATE_JOB, request, bob.token)
            assert_refused(refusal, case.train, default_field="training_job.target_column")
            assert holding(bob, "jobs") == jobs
    finally:
        bob.delete_dataset(outcome.name.split("/")[-1])


# --------------------------------------------------------------------------- requests


@pytest.fixture(scope="module")
def names(trained) -> dict[str, str]:
    """The placeholders of the manifest: Alice's trained resources."""
    return {"$dataset": f"datasets/{trained['dataset']}", "$job": f"trainingJobs/{trained['job']}",
            "$model": f"models/{trained['model']}", "$endpoint": f"endpoints/{trained['endpoint']}"}


@pytest.mark.parametrize("case", [c for c in REQUESTS if c.grpc], ids=lambda case: case.name)
def test_grpc_request(case, channel, alice, names):
    request = parsed(case.grpc, resolved(case.request, names))
    kind = LEFT_BEHIND.get(case.grpc)
    before = holding(alice, kind) if kind else None
    outcome = call(channel, case.grpc, request, alice.token)
    if case.accepted is not None:
        assert not isinstance(outcome, NbmlError), repr(outcome)
        return
    assert_refused(outcome, case.refused)
    if kind:
        assert holding(alice, kind) == before


def reason_of(body: str) -> str:
    """The ErrorInfo reason of a JSON google.rpc.Status body ("" when there is none)."""
    try:
        details = json.loads(body).get("details", [])
    except ValueError:
        return ""
    return next((d["reason"] for d in details if d["@type"].endswith("ErrorInfo")), "")


@pytest.mark.parametrize("case", [c for c in REQUESTS if c.rest], ids=lambda case: case.name)
def test_rest_request(case, platform, alice, names):
    method, path = case.rest.split(" ", 1)
    if case.json is not None:
        payload = {"json": resolved(case.json, names)}
    else:
        payload = {"data": case.body.encode() if isinstance(case.body, str) else case.body}
    kind = LEFT_BEHIND.get(f"{method} {path}")
    before = holding(alice, kind) if kind else None
    response = rest(platform, method, path, alice.token, **payload)
    assert response.status_code < 500, response.text
    if case.accepted is not None:
        assert response.status_code == case.accepted["status"], response.text
        return
    assert response.status_code == case.refused["status"], response.text
    if "reason" in case.refused:
        assert reason_of(response.text) == case.refused["reason"], response.text
    if "says" in case.refused:
        assert case.refused["says"] in response.text
    if kind:
        assert holding(alice, kind) == before
