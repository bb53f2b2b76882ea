"""Domain errors -> gRPC status with rich details (google.rpc.ErrorInfo, BadRequest)."""

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from nbml_server import errors

ERROR_DOMAIN = "nbml.dev"

_CODES = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def code_for(error: errors.DomainError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in _CODES:
            return _CODES[kind]
    return grpc.StatusCode.INTERNAL


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: errors.DomainError, request_id: str = "") -> grpc.Status:
    code = code_for(error)
    details = [_packed(error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN,
        metadata={"request_id": request_id} if request_id else {}))]
    if isinstance(error, errors.InvalidArgument) and error.violations:
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations])))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message,
                               details=details)
    return _with_request_id(rpc_status.to_status(status), request_id)


def internal_status(request_id: str) -> grpc.Status:
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (request id {request_id}); the service is still up",
        details=[_packed(error_details_pb2.ErrorInfo(
            reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"request_id": request_id}))])
    return _with_request_id(rpc_status.to_status(status), request_id)


class _Status(grpc.Status):
    def __init__(self, code, details, trailing_metadata):
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


def _with_request_id(status: grpc.Status, request_id: str) -> grpc.Status:
    """Aborting replaces the trailers, so the request id travels with the status."""
    if not request_id:
        return status
    return _Status(status.code, status.details,
                   (*status.trailing_metadata, ("x-request-id", request_id)))
