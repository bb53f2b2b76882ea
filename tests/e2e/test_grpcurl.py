"""grpcurl against Envoy's port, through server reflection (as the README shows)."""

import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def grpcurl():
    path = shutil.which("grpcurl")
    assert path, "grpcurl is not on PATH: `make test` installs it into build/tools/bin"
    return path


def run(grpcurl, *args) -> str:
    result = subprocess.run([grpcurl, "-plaintext", *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_and_call_through_reflection(grpcurl, platform, alice):
    services = run(grpcurl, platform.address, "list").split()
    for name in ("Auth", "Dataset", "Trainer", "Evaluator", "Predictor"):
        assert f"nbml.v1.{name}Service" in services

    described = run(grpcurl, platform.address, "describe", "nbml.v1.TrainerService")
    assert "CreateTrainingJob" in described

    me = json.loads(run(grpcurl, "-H", f"authorization: Bearer {alice.token}",
                        platform.address, "nbml.v1.AuthService/GetCurrentUser"))
    assert me["username"] == "alice"


def test_grpcurl_shows_the_error(grpcurl, platform):
    result = subprocess.run([grpcurl, "-plaintext", platform.address,
                             "nbml.v1.DatasetService/ListDatasets"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Unauthenticated" in result.stderr and "Bearer" in result.stderr
