"""One real platform (five services, a worker, Envoy) per test session, on loopback."""

import pathlib

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from deploy.envoy.process import free_port
from nbml.client import Client
from nbml_server.launcher import LocalPlatform


# The suite signs up and logs in hundreds of users, all from 127.0.0.1, in minutes;
# tests/e2e/test_auth_security.py checks the limit with an Envoy of its own.
SUITE_LOGIN_ATTEMPTS_PER_MINUTE = 100_000


@pytest.fixture(scope="session")
def platform(tmp_path_factory):
    home = tmp_path_factory.mktemp("nbml-home")
    with LocalPlatform(home, http_port=free_port(),
                       login_attempts_per_minute=SUITE_LOGIN_ATTEMPTS_PER_MINUTE) as running:
        yield running
        assert not running.failed_children(), "a platform process died during the tests"


@pytest.fixture(scope="session")
def breast_cancer_csv(tmp_path_factory) -> pathlib.Path:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.copy()
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    path = tmp_path_factory.mktemp("data") / "breast_cancer.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def breast_cancer_features(breast_cancer_csv) -> pd.DataFrame:
    return pd.read_csv(breast_cancer_csv).drop(columns=["target"])


def new_user(platform, name: str) -> Client:
    client = Client(platform.address)
    client.sign_up(name, "correct horse battery staple")
    return client


@pytest.fixture(scope="session")
def alice(platform) -> Client:
    with new_user(platform, "alice") as client:
        yield client


@pytest.fixture(scope="session")
def bob(platform) -> Client:
    with new_user(platform, "bob") as client:
        yield client


@pytest.fixture(scope="session")
def trained(alice, breast_cancer_csv):
    """Alice's breast-cancer data set, a finished job on it, and an endpoint of its best model."""
    dataset = alice.upload_dataset(breast_cancer_csv)
    dataset_id = dataset.name.split("/")[-1]
    job = alice.train(dataset_id, "target", budget_seconds=15)
    job = alice.wait_for_job(job.name.split("/")[-1])
    endpoint = alice.deploy(job.best_model.split("/")[-1])
    return {"dataset": dataset_id, "job": job.name.split("/")[-1],
            "model": job.best_model.split("/")[-1], "endpoint": endpoint.name.split("/")[-1],
            "final_job": job}
