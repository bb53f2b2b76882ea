"""The platform interceptor on a real in-process gRPC server: authentication, error
mapping to rich statuses, request ids, and the caller's request history."""

import itertools
import logging
import time
from concurrent import futures

import argon2
import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from nbml.v1 import auth_service_pb2 as pb
from nbml.v1 import auth_service_pb2_grpc
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.auth.servicer import AuthServicer
from nbml_server.domain.accounts import Accounts
from nbml_server.domain.tokens import Caller, TokenIssuer, TokenVerifier, ensure_keypair
from nbml_server.errors import NotFound, Unauthenticated
from nbml_server.platform.interceptors import (Authenticator, PlatformInterceptor,
                                               current_caller)
from nbml_server.platform.status import ERROR_DOMAIN

AUTH = "/nbml.v1.AuthService/"
STREAM = "/nbml.test.Probe/Count"
BOOM_PAGE_SIZE = 666      # ListApiKeys with this page size raises an unexpected error
ABORT_PAGE_SIZE = 404     # ListApiKeys with this page size calls context.abort(NOT_FOUND)
PASSWORD = "a-good-password"
_names = itertools.count()


class ProbeServicer(AuthServicer):
    """The real AuthServicer plus two ways for a handler to go wrong."""

    def ListApiKeys(self, request, context):
        if request.page_size == BOOM_PAGE_SIZE:
            raise RuntimeError("a bug in a handler")
        if request.page_size == ABORT_PAGE_SIZE:
            context.abort(grpc.StatusCode.NOT_FOUND, "the handler aborted itself")
        return super().ListApiKeys(request, context)


def count_stream(request: bytes, context):
    """Streams `caller username:i` for i < n; n comes as the request bytes. A request of
    b'fail' streams two items and then fails with NotFound."""
    fail = request == b"fail"
    n = 2 if fail else int(request or b"0")
    for i in range(n):
        yield f"{current_caller().username}:{i}".encode()
    if fail:
        raise NotFound("ran out of things", reason="THING_NOT_FOUND")


class Platform:
    def __init__(self, tmp):
        private, public = tmp / "private.pem", tmp / "public.pem"
        ensure_keypair(private, public)
        self.private = private.read_bytes()
        self.store = SqliteTableStore(tmp / "store.db")
        self.issuer = TokenIssuer(self.private, 300)
        self.accounts = Accounts(self.store, self.issuer, refresh_ttl_seconds=3600,
                                 hasher=argon2.PasswordHasher(time_cost=1, memory_cost=8,
                                                              parallelism=1))
        self.verifier = TokenVerifier(public.read_bytes())
        interceptor = PlatformInterceptor(Authenticator(self.verifier, self.accounts),
                                          self.accounts)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  interceptors=[interceptor])
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server(
            ProbeServicer(self.accounts), self.server)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "nbml.test.Probe", {"Count": grpc.unary_stream_rpc_method_handler(count_stream)})])
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        assert self.port
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = auth_service_pb2_grpc.AuthServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.count = self.channel.unary_stream(STREAM)

    def close(self):
        self.channel.close()
        self.server.stop(None).wait()
        self.store.close()

    def sign_up(self):
        name = f"user{next(_names)}"
        response = self.stub.SignUp(pb.SignUpRequest(username=name, password=PASSWORD),
                                    timeout=10)
        return response

    def activities(self, user_id):
        """The user's recorded calls, oldest first. Sorted by the recorded time, not by
        key: activity ids only order by millisecond (see tests/unit/test_accounts.py)."""
        rows = self.accounts.list_activities(Caller(user_id, ""), 1000, "").rows
        return sorted(rows, key=lambda a: a["time"])


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    p = Platform(tmp_path_factory.mktemp("interceptor"))
    yield p
    p.close()


def bearer(token, **extra):
    return (("authorization", f"Bearer {token}"), *extra.items())


def rich_status(error: grpc.RpcError):
    """(google.rpc.Status, ErrorInfo, BadRequest or None) of a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status in {error!r}"
    info, bad_request = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
    assert info is not None, "no ErrorInfo detail"
    assert info.domain == ERROR_DOMAIN
    return status, info, bad_request


def failing(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, timeout=10, **kwargs)
    return e.value


def user_id_of(response) -> str:
    return response.user.name.removeprefix("users/")


# -- public methods --------------------------------------------------------------------

def test_public_methods_need_no_token(platform):
    signed = platform.sign_up()
    assert signed.user.name.startswith("users/usr_")
    assert signed.tokens.access_token and signed.tokens.refresh_token
    logged = platform.stub.LogIn(pb.LogInRequest(username=signed.user.username,
                                                 password=PASSWORD), timeout=10)
    assert logged.user.name == signed.user.name
    refreshed = platform.stub.RefreshToken(
        pb.RefreshTokenRequest(refresh_token=logged.tokens.refresh_token), timeout=10)
    assert refreshed.tokens.access_token
    # Public calls carry no caller, so nothing is recorded for them.
    assert platform.activities(user_id_of(signed)) == []


def test_public_method_ignores_a_bad_token(platform):
    name = f"user{next(_names)}"
    platform.stub.SignUp(pb.SignUpRequest(username=name, password=PASSWORD),
                         metadata=(("authorization", "Basic nonsense"),), timeout=10)


def test_health_needs_no_token(platform):
    response = platform.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


# -- authentication --------------------------------------------------------------------

def test_protected_method_without_token(platform):
    error = failing(platform.stub.GetCurrentUser, pb.GetCurrentUserRequest())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    status, info, bad_request = rich_status(error)
    assert status.code == code_pb2.UNAUTHENTICATED
    assert info.reason == "TOKEN_MISSING"
    assert info.metadata["request_id"]  # generated when the client sent none
    assert bad_request is None
    assert "Bearer" in error.details()


@pytest.mark.parametrize("header, reason", [
    ("Basic x", "TOKEN_INVALID"),
    ("Bearer", "TOKEN_INVALID"),
    ("Bearer    ", "TOKEN_INVALID"),
    ("Token abc", "TOKEN_INVALID"),
    ("Bearer not.a.jwt", "TOKEN_INVALID"),
    ("Bearer nbml_not-a-real-key", "API_KEY_INVALID"),
])
def test_bad_authorization_headers(platform, header, reason):
    error = failing(platform.stub.GetCurrentUser, pb.GetCurrentUserRequest(),
                    metadata=(("authorization", header),))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich_status(error)[1].reason == reason


def test_expired_token(platform):
    signed = platform.sign_up()
    token = platform.issuer.issue(Caller(user_id_of(signed), signed.user.username),
                                  now=time.time() - 3600)
    error = failing(platform.stub.GetCurrentUser, pb.GetCurrentUserRequest(),
                    metadata=bearer(token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich_status(error)[1].reason == "TOKEN_EXPIRED"
    # Failed authentication has no caller: nothing is recorded.
    assert platform.activities(user_id_of(signed)) == []


def test_bearer_scheme_is_case_insensitive_and_tokens_work(platform):
    signed = platform.sign_up()
    user = platform.stub.GetCurrentUser(
        pb.GetCurrentUserRequest(),
        metadata=(("authorization", f"bearer {signed.tokens.access_token}"),), timeout=10)
    assert user.name == signed.user.name and user.username == signed.user.username


def test_api_key_authenticates_until_deleted(platform):
    signed = platform.sign_up()
    created = platform.stub.CreateApiKey(
        pb.CreateApiKeyRequest(api_key=pb.ApiKey(display_name="ci")),
        metadata=bearer(signed.tokens.access_token), timeout=10)
    assert created.secret.startswith("nbml_")
    user = platform.stub.GetCurrentUser(pb.GetCurrentUserRequest(),
                                        metadata=bearer(created.secret), timeout=10)
    assert user.name == signed.user.name
    platform.stub.DeleteApiKey(pb.DeleteApiKeyRequest(name=created.api_key.name),
                               metadata=bearer(created.secret), timeout=10)
    error = failing(platform.stub.GetCurrentUser, pb.GetCurrentUserRequest(),
                    metadata=bearer(created.secret))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich_status(error)[1].reason == "API_KEY_INVALID"


# -- error mapping ---------------------------------------------------------------------

def test_invalid_argument_carries_field_violations(platform):
    error = failing(platform.stub.SignUp, pb.SignUpRequest(username="a", password="short"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status, info, bad_request = rich_status(error)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == error.details()
    assert info.reason == "INVALID_USERNAME"
    assert bad_request is not None
    assert [v.field for v in bad_request.field_violations] == ["username", "password"]
    assert all(v.description for v in bad_request.field_violations)


def test_other_domain_errors_keep_their_code_and_reason(platform):
    signed = platform.sign_up()
    error = failing(platform.stub.SignUp, pb.SignUpRequest(username=signed.user.username.upper(),
                                                           password=PASSWORD))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    status, info, bad_request = rich_status(error)
    assert info.reason == "USERNAME_TAKEN" and bad_request is None
    error = failing(platform.stub.LogIn, pb.LogInRequest(username=signed.user.username,
                                                         password="wrong-password"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich_status(error)[1].reason == "WRONG_CREDENTIALS"


def test_unexpected_exception_becomes_internal_and_the_server_keeps_serving(platform, caplog):
    signed = platform.sign_up()
    auth = bearer(signed.tokens.access_token)
    with caplog.at_level(logging.ERROR, logger="nbml.rpc"):
        error = failing(platform.stub.ListApiKeys, pb.ListApiKeysRequest(
            page_size=BOOM_PAGE_SIZE), metadata=auth)
    assert error.code() == grpc.StatusCode.INTERNAL
    status, info, _ = rich_status(error)
    request_id = info.metadata["request_id"]
    assert info.reason == "INTERNAL" and request_id
    assert request_id in error.details()
    assert "a bug in a handler" not in error.details()  # internals are not leaked
    # The traceback is logged with the request id.
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)
    # The server is still up, for this and other calls.
    for _ in range(3):
        listed = platform.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=auth, timeout=10)
        assert list(listed.api_keys) == []
    [*_, failed, ok1, ok2, ok3] = platform.activities(user_id_of(signed))
    assert failed["status"] == "INTERNAL" and failed["request_id"] == request_id
    assert [a["status"] for a in (ok1, ok2, ok3)] == ["OK"] * 3


def test_handler_abort_keeps_its_status_code(platform):
    signed = platform.sign_up()
    error = failing(platform.stub.ListApiKeys, pb.ListApiKeysRequest(page_size=ABORT_PAGE_SIZE),
                    metadata=bearer(signed.tokens.access_token))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# -- request ids -----------------------------------------------------------------------

def test_client_request_id_is_echoed_in_error_info(platform):
    error = failing(platform.stub.GetCurrentUser, pb.GetCurrentUserRequest(),
                    metadata=(("x-request-id", "req-from-client-1"),))
    assert rich_status(error)[1].metadata["request_id"] == "req-from-client-1"

    signed = platform.sign_up()
    error = failing(platform.stub.ListApiKeys, pb.ListApiKeysRequest(page_size=BOOM_PAGE_SIZE),
                    metadata=bearer(signed.tokens.access_token,
                                    **{"x-request-id": "req-from-client-2"}))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert rich_status(error)[1].metadata["request_id"] == "req-from-client-2"
    assert "req-from-client-2" in error.details()

    error = failing(platform.stub.SignUp, pb.SignUpRequest(username="x", password="y"),
                    metadata=(("x-request-id", "req-from-client-3"),))
    assert rich_status(error)[1].metadata["request_id"] == "req-from-client-3"


def test_request_id_in_trailers_on_success(platform):
    signed = platform.sign_up()
    _, call = platform.stub.GetCurrentUser.with_call(
        pb.GetCurrentUserRequest(),
        metadata=bearer(signed.tokens.access_token, **{"x-request-id": "req-ok-1"}), timeout=10)
    assert ("x-request-id", "req-ok-1") in tuple(call.trailing_metadata())
    _, call = platform.stub.GetCurrentUser.with_call(
        pb.GetCurrentUserRequest(), metadata=bearer(signed.tokens.access_token), timeout=10)
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert generated and generated != "req-ok-1"
    ids = [a["request_id"] for a in platform.activities(user_id_of(signed))]
    assert ids == ["req-ok-1", generated]


def test_distinct_calls_get_distinct_request_ids(platform):
    ids = {rich_status(failing(platform.stub.GetCurrentUser, pb.GetCurrentUserRequest()))[1]
           .metadata["request_id"] for _ in range(3)}
    assert len(ids) == 3


# -- history ---------------------------------------------------------------------------

def test_each_authenticated_call_is_recorded(platform):
    signed = platform.sign_up()
    auth = bearer(signed.tokens.access_token, **{"x-request-id": "hist-1"})
    pause = 0.002  # distinct milliseconds, so the listing order below is deterministic
    platform.stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=auth, timeout=10)
    time.sleep(pause)
    failing(platform.stub.DeleteApiKey, pb.DeleteApiKeyRequest(name="apiKeys/key_missing"),
            metadata=auth)
    time.sleep(pause)
    failing(platform.stub.DeleteApiKey, pb.DeleteApiKeyRequest(name="bogus"), metadata=auth)
    time.sleep(pause)
    platform.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=auth, timeout=10)
    time.sleep(pause)
    # An unauthenticated attempt is not anyone's history.
    failing(platform.stub.GetCurrentUser, pb.GetCurrentUserRequest())

    recorded = platform.activities(user_id_of(signed))
    assert [(a["method"], a["status"], a["resource"]) for a in recorded] == [
        (AUTH + "GetCurrentUser", "OK", ""),
        (AUTH + "DeleteApiKey", "NOT_FOUND", "apiKeys/key_missing"),
        (AUTH + "DeleteApiKey", "INVALID_ARGUMENT", "bogus"),
        (AUTH + "ListApiKeys", "OK", ""),
    ]
    for a in recorded:
        assert a["request_id"] == "hist-1"
        assert a["duration_ms"] >= 0
        assert abs(a["time"] - time.time()) < 60

    # The same history through the API, newest first (ListActivities records itself
    # only after it has answered).
    listed = platform.stub.ListActivities(pb.ListActivitiesRequest(), metadata=auth,
                                          timeout=10)
    assert [a.method.rsplit("/", 1)[1] for a in listed.activities] == [
        "ListApiKeys", "DeleteApiKey", "DeleteApiKey", "GetCurrentUser"]
    assert listed.activities[1].resource == "bogus"
    assert listed.activities[1].status == "INVALID_ARGUMENT"


def test_history_is_per_user(platform):
    alice, bob = platform.sign_up(), platform.sign_up()
    platform.stub.GetCurrentUser(pb.GetCurrentUserRequest(),
                                 metadata=bearer(alice.tokens.access_token), timeout=10)
    assert len(platform.activities(user_id_of(alice))) == 1
    assert platform.activities(user_id_of(bob)) == []


# -- streaming -------------------------------------------------------------------------

def test_streaming_call_sees_the_caller_in_every_item(platform):
    signed = platform.sign_up()
    items = list(platform.count(b"3", metadata=bearer(signed.tokens.access_token), timeout=10))
    name = signed.user.username
    assert items == [f"{name}:{i}".encode() for i in range(3)]
    [recorded] = platform.activities(user_id_of(signed))
    assert (recorded["method"], recorded["status"]) == (STREAM, "OK")


def test_streaming_call_needs_a_token(platform):
    with pytest.raises(grpc.RpcError) as e:
        list(platform.count(b"3", timeout=10))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich_status(e.value)[1].reason == "TOKEN_MISSING"


def test_streaming_domain_error_after_some_items(platform):
    signed = platform.sign_up()
    received = []
    with pytest.raises(grpc.RpcError) as e:
        for item in platform.count(b"fail", metadata=bearer(signed.tokens.access_token),
                                   timeout=10):
            received.append(item)
    assert len(received) == 2
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert rich_status(e.value)[1].reason == "THING_NOT_FOUND"
    [recorded] = platform.activities(user_id_of(signed))
    assert recorded["status"] == "NOT_FOUND"


# -- outside a call --------------------------------------------------------------------

def test_current_caller_outside_an_authenticated_call():
    with pytest.raises(Unauthenticated) as e:
        current_caller()
    assert e.value.reason == "TOKEN_MISSING"
