"""The generated gRPC code in the client package and the OpenAPI description in docs/api
match protos/ (regenerate: make gen)."""

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATED = ROOT / "clients" / "python" / "src" / "nbml" / "v1"


def test_generated_code_is_fresh(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_protos.py"), str(tmp_path)],
                   check=True)
    fresh = tmp_path / "nbml" / "v1"
    fresh_files = sorted(p.name for p in fresh.iterdir())
    committed_files = sorted(p.name for p in GENERATED.iterdir() if p.is_file()
                             and p.suffix in (".py", ".pyi"))
    assert committed_files == fresh_files, "generated files differ: run `make gen`"
    _, mismatch, errors = filecmp.cmpfiles(fresh, GENERATED, fresh_files, shallow=False)
    assert not mismatch and not errors, f"stale generated code {mismatch + errors}: run `make gen`"


def test_openapi_description_is_fresh(tmp_path):
    fresh = tmp_path / "openapi.yaml"
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_openapi.py"), str(fresh)],
                   check=True)
    committed = ROOT / "docs" / "api" / "openapi.yaml"
    assert fresh.read_text() == committed.read_text(), \
        "stale docs/api/openapi.yaml: run `make openapi`"
