"""Security at the door, through Envoy as users meet it: forged, expired and misused
tokens and revoked API keys are refused by every service over gRPC and REST; new
passwords follow the rules; log-in and sign-up attempts are limited per client address;
no secret reaches a log; a model artifact holding a type outside the allowlist is never
loaded."""

import base64
import hashlib
import hmac
import http.client
import json
import os
import time
import uuid

import grpc
import pandas as pd
import pytest
import requests
import skops.io as sio
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from deploy.envoy.process import EnvoyProcess
from nbml.client import Client
from nbml.errors import NbmlError
from nbml.v1 import (auth_service_pb2, auth_service_pb2_grpc, dataset_service_pb2,
                     dataset_service_pb2_grpc, evaluator_service_pb2,
                     evaluator_service_pb2_grpc, predictor_service_pb2,
                     predictor_service_pb2_grpc, trainer_service_pb2, trainer_service_pb2_grpc)
from nbml_server.adapters.registry import open_table_store
from nbml_server.domain.model_registry import artifact_key
from nbml_server.domain.tokens import Caller, TokenIssuer, ensure_keypair
from nbml_server.settings import Settings
from tests.e2e.test_failures import error_of, rest
from tests.e2e.test_failures import services_stay_healthy  # noqa: F401 - autouse, after each test

pytestmark = pytest.mark.e2e

# One authenticated call per service: gRPC stub, method, request, and its REST path.
CALLS = {
    "auth": (auth_service_pb2_grpc.AuthServiceStub, "GetCurrentUser",
             auth_service_pb2.GetCurrentUserRequest(), "/v1/users/me"),
    "dataset": (dataset_service_pb2_grpc.DatasetServiceStub, "ListDatasets",
                dataset_service_pb2.ListDatasetsRequest(), "/v1/datasets"),
    "trainer": (trainer_service_pb2_grpc.TrainerServiceStub, "ListTrainingJobs",
                trainer_service_pb2.ListTrainingJobsRequest(), "/v1/trainingJobs"),
    "evaluator": (evaluator_service_pb2_grpc.EvaluatorServiceStub, "ListModels",
                  evaluator_service_pb2.ListModelsRequest(), "/v1/models"),
    "predictor": (predictor_service_pb2_grpc.PredictorServiceStub, "ListEndpoints",
                  predictor_service_pb2.ListEndpointsRequest(), "/v1/endpoints"),
}
ACCEPTED = ("OK", "", 200, "")
PASSWORD = "a long enough password"


def _reason(body: dict) -> str:
    return next((d.get("reason", "") for d in body.get("details", [])
                 if d.get("@type", "").endswith("ErrorInfo")), "")


def _field_violations(body: dict) -> list[dict]:
    return next((d["field_violations"] for d in body.get("details", [])
                 if d.get("@type", "").endswith("BadRequest")), [])


def outcomes(platform, authorization: str | None) -> dict[str, tuple[str, str, int, str]]:
    """Per service: (gRPC code, reason, HTTP status, reason) of its call made with this
    `authorization` header (None: without one)."""
    metadata = [("authorization", authorization)] if authorization is not None else []
    headers = dict(metadata)
    seen = {}
    with grpc.insecure_channel(platform.address) as channel, requests.Session() as http:
        http.trust_env = False
        for service, (stub, method, request, path) in CALLS.items():
            try:
                getattr(stub(channel), method)(request, metadata=metadata, timeout=30)
                code, reason = "OK", ""
            except grpc.RpcError as e:
                error = NbmlError.from_rpc_error(e)
                code, reason = error.code, error.reason
            response = http.get(f"http://{platform.address}{path}", headers=headers, timeout=30)
            body = response.json() if response.status_code != 200 else {}
            seen[service] = (code, reason, response.status_code, _reason(body))
    return seen


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_json(value: dict) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _flipped(token: str) -> str:
    """The token with one character of its signature changed."""
    head, payload, signature = token.split(".")
    return f"{head}.{payload}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"


@pytest.fixture(scope="module")
def tokens(platform, alice, bob, tmp_path_factory) -> dict[str, tuple[str | None, str]]:
    """A valid access token of alice's, and wrong ones made from it: name -> (the
    authorization header, the reason it is refused for)."""
    settings = Settings(home=platform.home)
    as_alice = Caller(alice.whoami().name.split("/")[-1], "alice")
    bob_id = bob.whoami().name.split("/")[-1]
    issuer = TokenIssuer(settings.private_key_path.read_bytes(), ttl_seconds=900)
    valid = issuer.issue(as_alice)
    expired = issuer.issue(as_alice, now=time.time() - 3600)
    head, _, signature = valid.split(".")
    claims = _claims(valid)
    other = tmp_path_factory.mktemp("other-keys")
    ensure_keypair(other / "private.pem", other / "public.pem")
    other_key = TokenIssuer((other / "private.pem").read_bytes(), ttl_seconds=900).issue(as_alice)
    # Algorithm confusion: a verifier that took the token's word for the algorithm
    # would check this HMAC with the public key it has, and accept it.
    confused = f"{_b64_json({'alg': 'HS256', 'typ': 'JWT'})}.{_b64_json(claims)}"
    confused += "." + _b64(hmac.new(settings.public_key_path.read_bytes(), confused.encode(),
                                    hashlib.sha256).digest())
    return {
        "valid": (f"Bearer {valid}", ""),
        "expired": (f"Bearer {expired}", "TOKEN_EXPIRED"),
        "tampered signature": (f"Bearer {_flipped(valid)}", "TOKEN_INVALID"),
        "tampered payload": (  # bob's id under alice's signature
            f"Bearer {head}.{_b64_json({**claims, 'sub': bob_id, 'name': 'bob'})}.{signature}",
            "TOKEN_INVALID"),
        "another key": (f"Bearer {other_key}", "TOKEN_INVALID"),
        "alg none": (f"Bearer {_b64_json({'alg': 'none', 'typ': 'JWT'})}.{_b64_json(claims)}.",
                     "TOKEN_INVALID"),
        "HS256 with the public key": (f"Bearer {confused}", "TOKEN_INVALID"),
        "refresh token": (f"Bearer {alice.refresh_token}", "TOKEN_INVALID"),
        "garbage": ("Bearer not-a-token", "TOKEN_INVALID"),
        "empty bearer": ("Bearer ", "TOKEN_INVALID"),
        "another scheme": (f"Basic {valid}", "TOKEN_INVALID"),
        "no header": (None, "TOKEN_MISSING"),
    }


def test_a_valid_token_is_accepted_by_every_service(platform, tokens):
    authorization, _ = tokens["valid"]
    assert outcomes(platform, authorization) == {service: ACCEPTED for service in CALLS}


@pytest.mark.parametrize("case", [
    "expired", "tampered signature", "tampered payload", "another key", "alg none",
    "HS256 with the public key", "refresh token", "garbage", "empty bearer",
    "another scheme", "no header"])
def test_wrong_tokens_are_refused_by_every_service(platform, tokens, case):
    authorization, reason = tokens[case]
    assert outcomes(platform, authorization) == {
        service: ("UNAUTHENTICATED", reason, 401, reason) for service in CALLS}


def test_a_revoked_api_key_is_refused_by_every_service(platform, alice):
    created = alice.create_api_key_full("revoked soon")
    authorization = f"Bearer {created.secret}"
    # Every process has now looked the key up (and keeps it for up to 2 s).
    assert outcomes(platform, authorization) == {service: ACCEPTED for service in CALLS}
    alice.delete_api_key(created.api_key.name)

    refused = ("UNAUTHENTICATED", "API_KEY_INVALID", 401, "API_KEY_INVALID")
    assert outcomes(platform, authorization)["auth"] == refused  # at once where it was revoked
    deadline = time.monotonic() + 15
    while (seen := outcomes(platform, authorization)) != {s: refused for s in CALLS}:
        assert time.monotonic() < deadline, f"still accepted 15 s after revoking: {seen}"
        time.sleep(0.2)


# -- passwords ---------------------------------------------------------------------------

def test_a_wrong_password_and_an_unknown_user_look_the_same(platform, alice):
    with Client(platform.address) as client:
        wrong = error_of(client.log_in, "alice", "not the password")
        unknown = error_of(client.log_in, "nobody-here", "not the password")
    assert (wrong.code, wrong.reason) == ("UNAUTHENTICATED", "WRONG_CREDENTIALS")
    assert (unknown.code, unknown.reason, unknown.message) == (
        wrong.code, wrong.reason, wrong.message)  # no hint whether the user exists
    for username in ("alice", "nobody-here"):
        response = rest(platform, "POST", "/v1/auth:logIn",
                        json={"username": username, "password": "not the password"})
        assert (response.status_code, _reason(response.json()),
                response.json()["message"]) == (401, "WRONG_CREDENTIALS", wrong.message)


@pytest.mark.parametrize("password, reason, description", [
    ("short", "INVALID_PASSWORD", "must be 8 to 1024 characters"),
    ("Password123", "PASSWORD_TOO_COMMON", "is one of the most common passwords; choose another"),
    ("abcabcabcabc", "PASSWORD_TOO_REPETITIVE", "must use at least 4 different characters"),
    ("{name}-2024!", "PASSWORD_CONTAINS_USERNAME",
     "must have at least 8 characters besides the user name"),
])
def test_sign_up_refuses_weak_passwords(platform, password, reason, description):
    name = f"weak-{uuid.uuid4().hex[:8]}"
    password = password.format(name=name)
    with Client(platform.address) as client:
        error = error_of(client.sign_up, name, password)
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", reason)
    assert [(v.field, v.description) for v in error.field_violations] == [("password",
                                                                           description)]
    response = rest(platform, "POST", "/v1/auth:signUp",
                    json={"username": name, "password": password})
    assert response.status_code == 400
    assert _reason(response.json()) == reason
    assert [(v["field"], v["description"]) for v in _field_violations(response.json())] == [
        ("password", description)]
    with Client(platform.address) as client:  # refused: the name is still free
        assert client.sign_up(name, PASSWORD).user.username == name


# -- log-in limit ------------------------------------------------------------------------

ATTEMPTS_PER_MINUTE = 3


@pytest.fixture
def strict_envoy(platform, tmp_path):
    """An Envoy of its own, with a low limit, in front of the session's services (the
    session's Envoy has a high one: the suite logs in from one address all the time)."""
    upstreams: dict[str, list[tuple[str, int]]] = {}
    for child in platform.children:
        if child.service:
            host, _, port = child.address.rpartition(":")
            upstreams.setdefault(child.service, []).append((host, int(port)))
    with EnvoyProcess(tmp_path / "envoy", upstreams=upstreams, wait_healthy=True,
                      concurrency=1, login_attempts_per_minute=ATTEMPTS_PER_MINUTE) as envoy:
        yield envoy


def _post(envoy: EnvoyProcess, path: str, body: dict, *, source: str = "127.0.0.1",
          token: str = "", method: str = "POST") -> tuple[int, dict]:
    """A REST call from the client address `source` (any 127.x address is loopback)."""
    connection = http.client.HTTPConnection(envoy.listen_address, envoy.listen_port,
                                            timeout=30, source_address=(source, 0))
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, json.dumps(body) if body else None, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_log_in_and_sign_up_attempts_are_limited_per_client_address(platform, strict_envoy):
    name = f"limited-{uuid.uuid4().hex[:8]}"
    with Client(platform.address) as client:
        token = client.sign_up(name, PASSWORD).access_token
    wrong = {"username": name, "password": "not the password"}
    statuses = [_post(strict_envoy, "/v1/auth:logIn", wrong)[0]
                for _ in range(ATTEMPTS_PER_MINUTE)]
    assert statuses == [401] * ATTEMPTS_PER_MINUTE
    status, body = _post(strict_envoy, "/v1/auth:logIn", wrong)
    assert (status, body["code"], _reason(body)) == (429, 8, "TOO_MANY_ATTEMPTS")
    assert body["message"] == ("too many log-in or sign-up attempts from this address; "
                               "try again in a minute")

    # gRPC attempts count in the same bucket, right password or not.
    with Client(strict_envoy.address) as client:
        error = error_of(client.log_in, name, PASSWORD)
    assert error.code == "RESOURCE_EXHAUSTED" and "try again in a minute" in error.message
    # Another address has a bucket of its own; other calls are not limited.
    status, body = _post(strict_envoy, "/v1/auth:logIn", {"username": name, "password": PASSWORD},
                         source="127.0.0.2")
    assert status == 200 and body["user"]["username"] == name
    status, me = _post(strict_envoy, "/v1/users/me", {}, token=token, method="GET")
    assert (status, me["username"]) == (200, name)

    # Sign-up has a bucket of its own: these (refused) sign-ups reach the service.
    weak = {"username": f"x{name}", "password": "short"}
    statuses = [_post(strict_envoy, "/v1/auth:signUp", weak)[0]
                for _ in range(ATTEMPTS_PER_MINUTE)]
    assert statuses == [400] * ATTEMPTS_PER_MINUTE
    assert _post(strict_envoy, "/v1/auth:signUp", weak)[0] == 429


# -- secrets in logs ---------------------------------------------------------------------

def test_no_password_token_or_key_reaches_any_log(platform):
    name = f"logscan-{uuid.uuid4().hex[:8]}"
    secrets = {"password": f"Zq-{uuid.uuid4().hex}-pass",
               "wrong password": f"Wr-{uuid.uuid4().hex}", "refused password": f"{name}-1"}
    with Client(platform.address) as client:
        error_of(client.sign_up, name, secrets["refused password"])  # contains the name
        session = client.sign_up(name, secrets["password"])
        with Client(platform.address) as guesser:
            failed_log_in = error_of(guesser.log_in, name, secrets["wrong password"])
        logged_in = rest(platform, "POST", "/v1/auth:logIn",
                         json={"username": name, "password": secrets["password"]})
        key = client.create_api_key_full("log scan")
        spent_refresh_token = client.refresh_token
        client.refresh()
        secrets.update({
            "sign-up access token": session.access_token,
            "sign-up refresh token": session.refresh_token,
            "log-in access token": logged_in.json()["tokens"]["access_token"],
            "log-in refresh token": logged_in.json()["tokens"]["refresh_token"],
            "refreshed access token": client.token, "refreshed refresh token": client.refresh_token,
            "API key": key.secret})
        for authorization in (f"Bearer {key.secret}", f"Bearer {client.token}",
                              f"Bearer {_flipped(client.token)}"):
            outcomes(platform, authorization)
        client.delete_api_key(key.api_key.name)
        outcomes(platform, f"Bearer {key.secret}")
        with Client(platform.address, refresh_token=spent_refresh_token) as replayer:
            error_of(replayer.refresh)

    store = open_table_store(Settings(home=platform.home).store_uri)
    try:
        password_hash = store.get("users_by_name", name, "")["password_hash"]
    finally:
        store.close()
    secrets["password hash"] = password_hash
    secrets["password hash digest"] = password_hash.rsplit("$", 1)[-1]
    for kind in [k for k in secrets if "token" in k]:  # a token cut short is still a secret
        secrets[f"{kind} (signature)"] = secrets[kind].rsplit(".", 1)[-1]

    # Envoy writes its access log in batches: wait for this test's last REST call.
    access_log = platform.envoy.access_log_path
    deadline = time.monotonic() + 30
    while logged_in.headers["x-request-id"].encode() not in access_log.read_bytes():
        assert time.monotonic() < deadline, "the log-in never reached Envoy's access log"
        time.sleep(0.2)
    logs = {str(path.relative_to(platform.home)): path.read_bytes()
            for path in platform.home.rglob("*.log")}
    assert {f"logs/{s}.log" for s in CALLS} | {"envoy/envoy.access.log"} <= set(logs)
    # The failed log-in was logged, with its request id: these are the right files.
    assert failed_log_in.request_id
    assert failed_log_in.request_id.encode() in logs["logs/auth.log"]
    leaks = [(path, kind) for path, data in logs.items()
             for kind, secret in secrets.items() if secret.encode() in data]
    assert leaks == []


# -- model artifacts ---------------------------------------------------------------------

def test_a_model_artifact_with_a_disallowed_type_is_never_loaded(platform, tmp_path):
    data = tmp_path / "small.csv"
    frame = pd.DataFrame({"x": range(80), "z": [i % 7 for i in range(80)],
                          "y": ["a", "b"] * 40})
    frame.to_csv(data, index=False)
    rows = frame.drop(columns=["y"]).head(3)
    with Client(platform.address) as mallory:
        mallory.sign_up(f"mallory-{uuid.uuid4().hex[:8]}", PASSWORD)
        dataset = mallory.upload_dataset(data)
        job = mallory.wait_for_job(mallory.train(
            dataset.name, "y", budget_seconds=5, families=["logistic_regression", "knn"],
            max_trials=2).name)
        good = job.best_model.split("/")[-1]
        bad = next(m.name.split("/")[-1] for m in mallory.models(job.name)
                   if m.name != job.best_model)
        endpoint = mallory.deploy(good)
        assert len(mallory.predict(endpoint.name, rows)) == 3

        # Someone with write access to the blob store swaps the stored model for one that
        # would run a shell command.
        user_id = mallory.whoami().name.split("/")[-1]
        artifact = platform.home / "blobs" / artifact_key(user_id, bad)
        assert artifact.is_file()
        artifact.write_bytes(sio.dumps(Pipeline([("run", FunctionTransformer(func=os.system))])))

        # Redeploying to it is refused before the endpoint switches.
        error = error_of(mallory.update_endpoint, endpoint.name, model_id=bad)
        assert (error.code, error.reason) == ("FAILED_PRECONDITION", "UNTRUSTED_ARTIFACT")
        assert "posix.system" in error.message
        assert mallory.get_endpoint(endpoint.name).model == f"models/{good}"
        assert len(mallory.predict(endpoint.name, rows)) == 3

        # Deploying it is refused too: no endpoint is made on a model that cannot load.
        endpoints_before = len(mallory.endpoints())
        error = error_of(mallory.deploy, bad)
        assert (error.code, error.reason) == ("FAILED_PRECONDITION", "UNTRUSTED_ARTIFACT")
        response = rest(platform, "POST", "/v1/endpoints", mallory.token,
                        json={"model": f"models/{bad}"})
        assert response.status_code == 400
        assert _reason(response.json()) == "UNTRUSTED_ARTIFACT"
        assert len(mallory.endpoints()) == endpoints_before
