"""Domain errors. Domain code raises these; the gRPC layer maps them to status codes.

Each error carries a stable UPPER_SNAKE `reason` (clients may branch on it) and a
message for people (which may change).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad input: `field` is a path into the request (or a place in a file, such
    as `file.row[12].column[price]`), `description` says what is wrong there."""

    field: str
    description: str


class DomainError(Exception):
    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None,
                 *, reason: str | None = None):
        super().__init__(message, reason=reason)
        self.violations = list(violations or [])

    @classmethod
    def of(cls, field: str, description: str, *, reason: str | None = None) -> "InvalidArgument":
        """One violation, with the message `field: description`."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)], reason=reason)


class NotFound(DomainError):
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    """A backend (table store, blob store, event bus) cannot be reached right now; the
    request may be retried. Adapters raise it for connection failures and time-outs."""

    reason = "BACKEND_UNAVAILABLE"
