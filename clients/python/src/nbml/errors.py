"""Errors raised by the nbml client.

Every failed call raises :class:`NbmlError`. Its fields come from the gRPC status and,
when the server sent one, the rich status in the ``grpc-status-details-bin`` trailer
(a ``google.rpc.Status`` carrying ``google.rpc.ErrorInfo`` for the stable ``reason``
and ``google.rpc.BadRequest`` for per-field problems).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"

# Canonical gRPC code numbers -> names (google.rpc.Code), so the module needs no grpc.
_CODE_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


@dataclass(frozen=True)
class FieldViolation:
    """One bad input: ``field`` is a path into the request (or a place in an uploaded
    file, e.g. ``file.row[12].column[price]``); ``description`` says what is wrong."""

    field: str
    description: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "description": self.description}


class NbmlError(Exception):
    """A failed nbml call.

    Attributes:
        code: canonical gRPC status code name, e.g. ``"NOT_FOUND"``.
        message: text for people.
        reason: stable UPPER_SNAKE reason from ``google.rpc.ErrorInfo`` (may be empty);
            scripts may branch on it.
        field_violations: list of :class:`FieldViolation` from ``google.rpc.BadRequest``.
        metadata: ``ErrorInfo.metadata`` (dict of str).
        request_id: the server's request id when known (``google.rpc.RequestInfo`` or the
            ``x-request-id`` header).
    """

    def __init__(self, code: str, message: str, reason: str = "",
                 field_violations: list[FieldViolation] | None = None, *,
                 metadata: dict[str, str] | None = None, request_id: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or ""
        self.field_violations = list(field_violations or [])
        self.metadata = dict(metadata or {})
        self.request_id = request_id or ""

    def __str__(self) -> str:
        return self.message or self.code

    def __repr__(self) -> str:
        return (f"NbmlError(code={self.code!r}, message={self.message!r}, "
                f"reason={self.reason!r}, field_violations={self.field_violations!r})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the CLI prints under ``"error"``."""
        return {
            "code": self.code,
            "reason": self.reason or None,
            "message": self.message,
            "field_violations": [v.to_dict() for v in self.field_violations],
        }

    # ----------------------------------------------------------------- parsing
    @classmethod
    def from_status(cls, code: str, message: str, details: bytes | None,
                    *, request_id: str = "") -> "NbmlError":
        """Builds an error from a status code name, its message and the serialized
        ``google.rpc.Status`` (``grpc-status-details-bin``), which may be empty."""
        reason = ""
        violations: list[FieldViolation] = []
        meta: dict[str, str] = {}
        if details:
            status = status_pb2.Status()
            try:
                status.ParseFromString(details)
            except Exception:  # noqa: BLE001 - a garbled trailer must not hide the error
                status = None
            if status is not None:
                if status.message:
                    message = status.message
                if status.code and code in ("", "UNKNOWN"):
                    code = _CODE_NAMES.get(status.code, code)
                for any_msg in status.details:
                    if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                        info = error_details_pb2.ErrorInfo()
                        any_msg.Unpack(info)
                        reason = reason or info.reason
                        meta.update(info.metadata)
                    elif any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                        bad = error_details_pb2.BadRequest()
                        any_msg.Unpack(bad)
                        violations.extend(FieldViolation(v.field, v.description)
                                          for v in bad.field_violations)
                    elif any_msg.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
                        info = error_details_pb2.RequestInfo()
                        any_msg.Unpack(info)
                        request_id = request_id or info.request_id
        request_id = request_id or meta.get("request_id", "")
        return cls(code or "UNKNOWN", message or "", reason, violations,
                   metadata=meta, request_id=request_id)

    @classmethod
    def from_rpc_error(cls, error: Any) -> "NbmlError":
        """Converts a ``grpc.RpcError`` (anything with ``code()``, ``details()`` and
        ``trailing_metadata()``) into an :class:`NbmlError`."""
        try:
            code_obj = error.code()
        except Exception:  # noqa: BLE001
            code_obj = None
        code = getattr(code_obj, "name", None) or (str(code_obj) if code_obj else "UNKNOWN")
        try:
            message = error.details() or ""
        except Exception:  # noqa: BLE001
            message = str(error)
        details_bin = None
        request_id = ""
        for getter in ("trailing_metadata", "initial_metadata"):
            try:
                md = getattr(error, getter)()
            except Exception:  # noqa: BLE001
                md = None
            for key, value in md or ():
                if key == STATUS_DETAILS_KEY and details_bin is None:
                    details_bin = value if isinstance(value, bytes) else str(value).encode()
                elif key == REQUEST_ID_KEY and not request_id:
                    request_id = value.decode() if isinstance(value, bytes) else str(value)
        return cls.from_status(code, message, details_bin, request_id=request_id)
