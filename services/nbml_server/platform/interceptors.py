"""One interceptor for every service: request id, authentication, error mapping and
the caller's request history.

Handlers read the authenticated caller with `current_caller()`.
"""

import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from nbml_server import errors
from nbml_server.domain.accounts import Accounts, Activity
from nbml_server.domain.tokens import API_KEY_PREFIX, Caller, TokenVerifier
from nbml_server.platform.status import internal_status, to_status

log = logging.getLogger("nbml.rpc")

# Methods anyone may call: sign-up, log-in, refresh, health and reflection.
PUBLIC_METHODS = frozenset({
    "/nbml.v1.AuthService/SignUp",
    "/nbml.v1.AuthService/LogIn",
    "/nbml.v1.AuthService/RefreshToken",
})
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# Request fields that name the resource a request is about, for the history.
RESOURCE_FIELDS = ("name", "parent", "endpoint", "dataset")

_current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "nbml_caller", default=None)


def current_caller() -> Caller:
    caller = _current_caller.get()
    if caller is None:  # only reachable if a public method asks for a caller
        raise errors.Unauthenticated("this call needs a token", reason="TOKEN_MISSING")
    return caller


class Authenticator:
    """Turns the `authorization` metadata into a Caller: a JWT, or an API key."""

    def __init__(self, verifier: TokenVerifier, accounts: Accounts):
        self.verifier = verifier
        self.accounts = accounts

    def authenticate(self, metadata: dict[str, str]) -> Caller:
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise errors.Unauthenticated(
                "this call needs a token: send 'authorization: Bearer <token>'",
                reason="TOKEN_MISSING")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthenticated("the authorization header must be 'Bearer <token>'",
                                         reason="TOKEN_INVALID")
        token = token.strip()
        if token.startswith(API_KEY_PREFIX):
            return self.accounts.caller_for_api_key(token)
        return self.verifier.verify(token)


def _resource_of(request) -> str:
    for field in RESOURCE_FIELDS:
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            return value
    return ""


@dataclass(frozen=True)
class _Unparsable:
    """A request message protobuf could not parse. gRPC would answer INTERNAL, but the
    sender is at fault: Envoy's transcoder, for one, turns a JSON object sent where a
    string belongs (a map's value) into bytes no parser accepts."""

    problem: str


def _tolerant(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:  # the handler takes the raw bytes
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Unparsable(str(error))
    return deserialize


def _refuse_unparsable(message):
    if isinstance(message, _Unparsable):
        raise errors.InvalidArgument(
            f"the request message could not be parsed ({message.problem}); through REST, "
            "look for a JSON value of the wrong type, such as an object where a string "
            "belongs", reason="MALFORMED_REQUEST")
    return message


def _parsed(request):
    """The request, or for a client stream its messages, refusing unparsable ones."""
    if isinstance(request, Iterator):
        return (_refuse_unparsable(message) for message in request)
    return _refuse_unparsable(request)


class _Call:
    """What one RPC needs to be recorded once it ends."""

    def __init__(self, method: str, request_id: str):
        self.method = method
        self.request_id = request_id
        self.started = time.perf_counter()
        self.caller: Caller | None = None
        self.resource = ""


class PlatformInterceptor(grpc.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, accounts: Accounts):
        self.authenticator = authenticator
        self.accounts = accounts

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ())
                    if isinstance(v, str)}
        public = method in PUBLIC_METHODS or method.startswith(PUBLIC_PREFIXES)
        if method.startswith(PUBLIC_PREFIXES):
            return handler
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        deserializer = _tolerant(handler.request_deserializer)

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, metadata, request_id, public),
                deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, metadata, request_id, public),
                deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, metadata, request_id, public),
                deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method, metadata, request_id, public),
            deserializer, handler.response_serializer)

    # -- wrappers ---------------------------------------------------------------------

    def _begin(self, call: _Call, request, context, metadata, public) -> None:
        context.set_trailing_metadata((("x-request-id", call.request_id),))
        if not isinstance(request, Iterator):
            call.resource = _resource_of(request)
        if not public:
            call.caller = self.authenticator.authenticate(metadata)

    @contextlib.contextmanager
    def _guarded(self, call: _Call, context):
        """Maps what the handler raised to a status, and records the call either way."""
        try:
            yield
        except errors.DomainError as error:
            status = to_status(error, call.request_id)
            log.info("%s %s -> %s %s (%s)", call.request_id, call.method, status.code.name,
                     error.reason, error.message)
            context.abort_with_status(status)
        except Exception:
            # context.abort() in a handler raises a bare Exception on purpose: keep its status.
            if context.code() not in (None, grpc.StatusCode.OK):
                raise
            log.exception("%s %s failed", call.request_id, call.method)
            context.abort_with_status(internal_status(call.request_id))
        finally:
            self._record(call, context)

    def _unary(self, behaviour: Callable, method, metadata, request_id, public):
        def wrapper(request, context):
            call = _Call(method, request_id)
            with self._guarded(call, context):
                self._begin(call, request, context, metadata, public)
                request = _parsed(request)
                return self._as_caller(call.caller, lambda: behaviour(request, context))
        return wrapper

    def _streaming(self, behaviour: Callable, method, metadata, request_id, public):
        def wrapper(request, context):
            call = _Call(method, request_id)
            with self._guarded(call, context):
                self._begin(call, request, context, metadata, public)
                request = _parsed(request)
                responses = self._as_caller(call.caller, lambda: behaviour(request, context))
                while True:
                    try:
                        item = self._as_caller(call.caller, lambda: next(responses))
                    except StopIteration:
                        return
                    yield item
        return wrapper

    @staticmethod
    def _as_caller(caller, step):
        # Streaming responses resume in whatever context the server iterates them in.
        token = _current_caller.set(caller)
        try:
            return step()
        finally:
            _current_caller.reset(token)

    def _record(self, call: _Call, context) -> None:
        if call.caller is None:
            return
        code = context.code() or grpc.StatusCode.OK
        try:
            self.accounts.record_activity(call.caller.user_id, Activity(
                method=call.method, resource=call.resource, status=code.name,
                time=time.time(), duration_ms=(time.perf_counter() - call.started) * 1000,
                request_id=call.request_id))
        except Exception:  # history must never fail the request it records
            log.exception("%s could not record activity", call.request_id)
