"""The REST surface under a bounded schemathesis run through Envoy: every operation of
docs/api/openapi.yaml, with valid and invalid input, and not one 5xx answer."""

import json
import os
import pathlib
import subprocess
import sys
import time

import grpc
import pandas as pd
import pytest
import requests
import yaml

from nbml.client import Client, resource_id
from nbml.v1 import trainer_service_pb2

pytestmark = pytest.mark.e2e

DESCRIPTION = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.yaml"
# Test cases per operation in each of schemathesis' phases (examples, coverage, fuzzing,
# stateful); the coverage phase adds its boundary and wrong-type values on top.
EXAMPLES_PER_OPERATION = 5
SEED = 6
FINISHED = {trainer_service_pb2.JOB_STATE_SUCCEEDED, trainer_service_pb2.JOB_STATE_FAILED,
            trainer_service_pb2.JOB_STATE_CANCELLED}


@pytest.fixture(scope="module")
def fuzzer(platform, breast_cancer_csv):
    """A user of its own and one of each of its resources, by the description's path
    parameter that names them: a small data set, a one-trial job, its model, an endpoint
    and an API key."""
    with Client(platform.address) as client:
        client.sign_up("fuzzer", "correct horse battery staple")
        dataset = client.upload_dataset(pd.read_csv(breast_cancer_csv).head(120), name="fuzz")
        job = client.train(dataset.name, "target", budget_seconds=5,
                           families=["logistic_regression"], max_trials=1)
        job = client.wait_for_job(job.name)
        endpoint = client.deploy(job.best_model)
        api_key = client.create_api_key_full("fuzz").api_key
        yield client, {"dataset": dataset.name, "trainingJob": job.name,
                       "model": job.best_model, "endpoint": endpoint.name,
                       "apiKey": api_key.name}
        # Training is the one costly thing the run could start (the worker is shared).
        for started in client.jobs():
            if started.state not in FINISHED:
                client.cancel_job(started.name)


def with_resources(description: dict, resources: dict[str, str]) -> dict:
    """The description with each path parameter either the fuzzer's own resource or any
    other string, so that valid input also gets past the lookup to the code behind it.
    Deletes get other strings only, so that the resources last through the run."""
    for path_item in description["paths"].values():
        for method, operation in path_item.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and method != "delete":
                    own = resource_id(resources[parameter["name"]])
                    parameter["schema"] = {"anyOf": [{"type": "string", "enum": [own]},
                                                     {"type": "string"}]}
    return description


def test_no_operation_answers_5xx(platform, fuzzer, tmp_path):
    client, resources = fuzzer
    description = tmp_path / "openapi.yaml"
    description.write_text(yaml.safe_dump(
        with_resources(yaml.safe_load(DESCRIPTION.read_text()), resources)))
    har, report = tmp_path / "requests.har", tmp_path / "report.json"
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", str(description),
         "--url", f"http://{platform.address}",
         "--header", f"authorization: Bearer {client.token}",
         "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES_PER_OPERATION),
         "--seed", str(SEED), "--generation-database", "none", "--workers", "2",
         "--request-timeout", "60", "--no-color",
         "--report", "har,json", "--report-har-path", str(har),
         "--report-json-path", str(report)],
        # Loopback only, never through a proxy; schemathesis' own files stay in tmp_path.
        cwd=tmp_path, env={**os.environ, "NO_PROXY": "*"},
        capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started

    answers = json.loads(har.read_text())["log"]["entries"]
    server_errors = [
        f"{a['request']['method']} {a['request']['url']} -> {a['response']['status']} "
        f"{a['response']['content'].get('text', '')[:300]}"
        for a in answers if a["response"]["status"] >= 500]
    assert not server_errors, "\n".join(server_errors)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    operations = json.loads(report.read_text())["operations"]
    assert operations["tested"] == operations["total"]
    print(f"{len(answers)} requests to {operations['total']} operations in {seconds:.0f} s")


def test_an_unparsable_message_is_invalid_argument(platform, fuzzer):
    client, _ = fuzzer
    # Envoy's transcoder turns an object where a map's string value belongs into bytes
    # no protobuf parser reads; the first fuzz run found it as a 500.
    with requests.Session() as session:
        session.trust_env = False
        answer = session.post(
            f"http://{platform.address}/v1/trainingJobs", timeout=60,
            headers={"authorization": f"Bearer {client.token}"},
            json={"dataset": "datasets/ds_1", "target_column": "target",
                  "initial_params": {"random_forest.n_estimators": {}}})
    assert answer.status_code == 400, answer.text
    assert answer.json()["details"][0]["reason"] == "MALFORMED_REQUEST"

    with grpc.insecure_channel(platform.address) as channel:
        create = channel.unary_unary("/nbml.v1.TrainerService/CreateTrainingJob")
        with pytest.raises(grpc.RpcError) as caught:
            # Field 1 announces 5 bytes and brings 1.
            create(b"\x0a\x05\x12", timeout=30,
                   metadata=(("authorization", f"Bearer {client.token}"),))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
