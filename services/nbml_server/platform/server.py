"""Builds and runs one service process: settings -> adapters -> handlers -> servicer ->
gRPC server with the platform interceptor, health checking and reflection."""

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nbml.v1 import (auth_service_pb2, dataset_service_pb2, evaluator_service_pb2,
                     predictor_service_pb2, trainer_service_pb2)
from nbml_server.adapters.registry import open_blob_store, open_event_bus, open_table_store
from nbml_server.domain.accounts import Accounts
from nbml_server.domain.tokens import TokenIssuer, TokenVerifier, ensure_keypair
from nbml_server.platform.interceptors import Authenticator, PlatformInterceptor
from nbml_server.ports.blob_store import BlobStore
from nbml_server.ports.event_bus import EventBus
from nbml_server.ports.table_store import TableStore
from nbml_server.settings import Settings

log = logging.getLogger("nbml.server")

ALL_SERVICES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in ((auth_service_pb2, "AuthService"),
                         (dataset_service_pb2, "DatasetService"),
                         (trainer_service_pb2, "TrainerService"),
                         (evaluator_service_pb2, "EvaluatorService"),
                         (predictor_service_pb2, "PredictorService")))
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass
class Platform:
    """The adapters and shared domain objects one process is built from."""

    settings: Settings
    store: TableStore
    blobs: BlobStore
    bus: EventBus
    accounts: Accounts
    verifier: TokenVerifier

    def close(self) -> None:
        self.bus.close()
        self.blobs.close()
        self.store.close()


def open_platform(settings: Settings, *, signs_tokens: bool = False) -> Platform:
    """Opens the adapters. Only the auth service reads the private key (`signs_tokens`)."""
    if signs_tokens:
        ensure_keypair(settings.private_key_path, settings.public_key_path)
    store = open_table_store(settings.store_uri)
    issuer = (TokenIssuer(settings.private_key_path.read_bytes(), settings.access_token_seconds)
              if signs_tokens else None)
    accounts = Accounts(store, issuer, refresh_ttl_seconds=settings.refresh_token_seconds)
    return Platform(settings=settings, store=store,
                    blobs=open_blob_store(settings.blobs_uri),
                    bus=open_event_bus(settings.bus_uri), accounts=accounts,
                    verifier=TokenVerifier(settings.public_key_path.read_bytes()))


def build_server(platform: Platform, register: Callable[[grpc.Server], None],
                 service_name: str, *, address: str, workers: int = 16) -> tuple[grpc.Server, int]:
    interceptor = PlatformInterceptor(Authenticator(platform.verifier, platform.accounts),
                                      platform.accounts)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=service_name),
        interceptors=[interceptor],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)])
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", f"nbml.v1.{service_name.capitalize()}Service"):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # Every process reflects every service, so grpcurl works through Envoy whichever
    # upstream answers the reflection request.
    reflection.enable_server_reflection(
        (*ALL_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"cannot listen on {address}")
    return server, port


def serve(service_name: str, build: Callable[[Platform], Callable[[grpc.Server], None]],
          argv: list[str] | None = None, *, signs_tokens: bool = False) -> None:
    """Entry point of a service process: `python -m nbml_server.<service> --port N`."""
    parser = argparse.ArgumentParser(prog=f"nbml-{service_name}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    platform = open_platform(settings, signs_tokens=signs_tokens)
    server, port = build_server(platform, build(platform), service_name,
                                address=f"{args.host}:{args.port}")
    server.start()
    # The launcher reads this line to learn the port (0 asks the OS for a free one).
    print(f"LISTENING {service_name} {args.host}:{port}", flush=True)
    stop_on_signals(lambda: server.stop(grace=5).wait())
    server.wait_for_termination()
    platform.close()


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Runs `stop` in a thread on SIGTERM/SIGINT (signal handlers must return fast)."""
    def handle(signum, frame):
        threading.Thread(target=stop, daemon=True).start()
    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
