"""Build the FileDescriptorSet that Envoy's gRPC-JSON transcoder loads.

The descriptor set is assembled from the Python descriptor pool (the generated
``nbml.v1.*_pb2`` modules), so no ``protoc`` is needed at runtime.  It holds every
transitively imported file in dependency order (each file appears after all the
files it imports), which is what ``protoc --include_imports`` produces too.

``google/rpc/status.proto`` and ``google/rpc/error_details.proto`` are included on
purpose: with ``convert_grpc_status: true`` Envoy renders the ``grpc-status-details-bin``
trailer as a JSON ``google.rpc.Status`` and can only print the ``details`` (``BadRequest``,
``ErrorInfo``, ...) when their types are in the descriptor set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pb2

# Import for their side effect of registering the files in the default pool.
from google.rpc import error_details_pb2, status_pb2
from nbml.v1 import (
    auth_service_pb2,
    common_pb2,
    dataset_service_pb2,
    evaluator_service_pb2,
    events_pb2,
    predictor_service_pb2,
    trainer_service_pb2,
)

__all__ = [
    "SERVICES",
    "SERVICE_NAMES",
    "ROOT_FILES",
    "build_descriptor_set",
    "write_descriptor_set",
]

#: Short name -> fully qualified gRPC service name.
SERVICE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "auth": "nbml.v1.AuthService",
        "dataset": "nbml.v1.DatasetService",
        "trainer": "nbml.v1.TrainerService",
        "evaluator": "nbml.v1.EvaluatorService",
        "predictor": "nbml.v1.PredictorService",
    }
)

#: The five fully qualified service names, in a stable order.
SERVICES: tuple[str, ...] = tuple(SERVICE_NAMES.values())

#: Files the descriptor set is rooted at (their imports are pulled in transitively).
ROOT_FILES: tuple[_descriptor.FileDescriptor, ...] = (
    auth_service_pb2.DESCRIPTOR,
    dataset_service_pb2.DESCRIPTOR,
    trainer_service_pb2.DESCRIPTOR,
    evaluator_service_pb2.DESCRIPTOR,
    predictor_service_pb2.DESCRIPTOR,
    common_pb2.DESCRIPTOR,
    events_pb2.DESCRIPTOR,
    status_pb2.DESCRIPTOR,
    error_details_pb2.DESCRIPTOR,
)


def _topological(files: Iterable[_descriptor.FileDescriptor]) -> list[_descriptor.FileDescriptor]:
    """Files and all their imports, each file after every file it depends on."""
    ordered: list[_descriptor.FileDescriptor] = []
    seen: set[str] = set()

    def visit(fd: _descriptor.FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            visit(dep)
        ordered.append(fd)

    for fd in files:
        visit(fd)
    return ordered


def build_descriptor_set(
    roots: Iterable[_descriptor.FileDescriptor] = ROOT_FILES,
) -> bytes:
    """Serialized ``google.protobuf.FileDescriptorSet`` for the nbml.v1 API.

    Includes every transitive dependency (google/api/*, google/protobuf/*,
    google/rpc/*) in dependency order. Deterministic for a given set of generated
    modules.
    """
    fds = descriptor_pb2.FileDescriptorSet()
    for fd in _topological(roots):
        proto = fds.file.add()
        # CopyToProto keeps the custom options (google.api.http, field_behavior)
        # as they were serialized by protoc.
        fd.CopyToProto(proto)
    return fds.SerializeToString(deterministic=True)


def write_descriptor_set(path: str) -> bytes:
    """Write :func:`build_descriptor_set` to ``path``; returns the bytes written."""
    data = build_descriptor_set()
    with open(path, "wb") as fh:
        fh.write(data)
    return data
