"""Generate the Python gRPC code for protos/nbml/v1 into the client package.

Usage: python tools/gen_protos.py [OUTPUT_ROOT]

The output root defaults to clients/python/src; the stale-code test passes a temporary
folder and compares. googleapis' .proto files come from googleapis-common-protos.
"""

import pathlib
import sys

import google.api
import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "clients" / "python" / "src"


def include_paths() -> list[str]:
    googleapis = pathlib.Path(google.api.__path__[0]).parent.parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    return [str(PROTO_ROOT), str(googleapis), str(well_known)]


def generate(out: pathlib.Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", *(f"-I{p}" for p in include_paths()),
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in {pathlib.Path(p).parent for p in protos}:
        # Generated modules import each other as `nbml.v1.x_pb2`: make that a package.
        (out / package / "__init__.py").touch()


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
