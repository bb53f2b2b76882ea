"""`python -m nbml_server.auth`: the auth service process."""

from nbml.v1 import auth_service_pb2_grpc
from nbml_server.auth.servicer import AuthServicer
from nbml_server.platform.server import Platform, serve


def build(platform: Platform):
    servicer = AuthServicer(platform.accounts)
    return lambda server: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)


if __name__ == "__main__":
    serve("auth", build, signs_tokens=True)
