"""Two predictor processes behind Envoy: one is killed (SIGKILL) while predictions go
through Envoy without a pause, not one of them fails, and once restarted on its port the
replica takes traffic again."""

import json
import time

import numpy as np
import pandas as pd
import pytest

from deploy.envoy.process import free_port
from nbml.client import Client
from nbml_server.launcher import LocalPlatform
from tests.e2e.background_calls import WAIT_SECONDS, CallsInBackground
from tests.e2e.small_model import deploy_small_model

pytestmark = pytest.mark.e2e

CALLERS = 2  # concurrent callers, so calls are in flight when the replica dies


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    home = tmp_path_factory.mktemp("nbml-replicas")
    with LocalPlatform(home, http_port=free_port(), predictor_replicas=2) as platform:
        yield platform


@pytest.fixture(scope="module")
def deployed(replicated):
    """A signed-up client, the endpoint of a one-trial logistic regression, and rows."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "z": rng.normal(size=60)})
    frame["y"] = np.where(frame["x"] + frame["z"] > 0, "up", "down")
    with Client(replicated.address) as client:
        client.sign_up("carol", "correct horse battery staple")
        endpoint = deploy_small_model(client, frame, "replicas").endpoint
        yield client, endpoint, frame.drop(columns="y").head(3)


def predictor_hosts(platform) -> dict[str, dict]:
    """Envoy's view of each predictor replica ("host:port" -> health flags and stats)."""
    status, body = platform.envoy.admin_get("/clusters?format=json")
    assert status == 200, body
    [cluster] = [c for c in json.loads(body)["cluster_statuses"] if c["name"] == "predictor"]
    hosts = {}
    for host in cluster["host_statuses"]:
        address = host["address"]["socket_address"]
        stats = {s["name"]: int(s.get("value", 0)) for s in host["stats"]}
        hosts[f"{address['address']}:{address['port_value']}"] = {
            "health": host["health_status"], "stats": stats}
    return hosts


def served(platform, name: str) -> int:
    """Requests the replica answered successfully, as Envoy counted them."""
    address = next(c.address for c in platform.children if c.name == name)
    return predictor_hosts(platform)[address]["stats"].get("rq_success", 0)


def in_rotation(platform, name: str) -> bool:
    address = next(c.address for c in platform.children if c.name == name)
    health = predictor_hosts(platform)[address]["health"]
    return health.get("eds_health_status") == "HEALTHY" and not any(
        value is True and key.startswith("failed") for key, value in health.items())


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    delay = 0.02
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {WAIT_SECONDS} s"
        time.sleep(delay)  # polling Envoy's admin API, not waiting for a fixed time
        delay = min(delay * 2, 0.25)


def cluster_counter(platform, name: str) -> int:
    status, body = platform.envoy.admin_get(f"/stats?filter=^cluster\\.predictor\\.{name}$")
    assert status == 200, body
    return sum(int(line.split(": ")[1]) for line in body.splitlines() if ": " in line)


def test_the_replicas_are_separate_processes_in_one_cluster(replicated):
    replicas = [c for c in replicated.children if c.service == "predictor"]
    assert [c.name for c in replicas] == ["predictor-1", "predictor-2"]
    assert len({c.process.pid for c in replicas}) == 2
    assert set(predictor_hosts(replicated)) == {c.address for c in replicas}
    assert (replicated.home / "logs" / "predictor-2.log").exists()


def test_a_replica_killed_mid_stream_loses_no_prediction_and_serves_again_after_restart(
        replicated, deployed):
    client, endpoint, rows = deployed
    def predict() -> None:
        if len(client.predict(endpoint, rows)) != len(rows):
            raise AssertionError("wrong number of predictions")
    with CallsInBackground(predict, callers=CALLERS) as predictions:
        # Both replicas answer (and have loaded the model) before one dies.
        wait_until(lambda: served(replicated, "predictor-1") > 0
                   and served(replicated, "predictor-2") > 0, "served by both replicas")
        retries_before = cluster_counter(replicated, "upstream_rq_retry")
        ejections_before = cluster_counter(replicated, "outlier_detection.ejections_enforced_total")

        replicated.stop_child("predictor-1", kill=True)
        calls_at_kill = predictions.calls
        wait_until(lambda: not in_rotation(replicated, "predictor-1"),
                   "taken out of rotation by Envoy")
        predictions.wait_for_more(50)  # the survivor alone carries the traffic

        served_before_restart = served(replicated, "predictor-1")
        replicated.restart_child("predictor-1")  # on the port Envoy knows
        wait_until(lambda: in_rotation(replicated, "predictor-1"), "back in rotation")
        calls_while_down = predictions.calls - calls_at_kill
        wait_until(lambda: served(replicated, "predictor-1") > served_before_restart,
                   "serving again after the restart")
        predictions.wait_for_more(20)

    retried = cluster_counter(replicated, "upstream_rq_retry") - retries_before
    ejected = (cluster_counter(replicated, "outlier_detection.ejections_enforced_total")
               - ejections_before)
    print(f"{predictions.calls} Predict calls, {calls_while_down} while predictor-1 was "
          f"down, {retried} retried by Envoy, {ejected} outlier ejections, "
          f"{len(predictions.failures)} failed")
    assert predictions.failures == [], predictions.failures[:3]
    assert retried > 0  # calls did reach the dead replica and were retried elsewhere
    assert not replicated.failed_children()
