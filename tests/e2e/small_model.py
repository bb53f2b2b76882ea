"""The quickest model an e2e test can deploy: a one-trial logistic regression."""

from dataclasses import dataclass

import pandas as pd

from nbml.client import Client


@dataclass(frozen=True)
class SmallModel:
    dataset: str  # "datasets/{id}"
    endpoint: str  # "endpoints/{id}"


def deploy_small_model(client: Client, frame: pd.DataFrame, name: str,
                       target: str = "y") -> SmallModel:
    """Uploads `frame`, trains one logistic regression on it for `target` and deploys it."""
    dataset = client.upload_dataset(frame, name=name)
    job = client.wait_for_job(client.train(
        dataset.name, target, budget_seconds=5, holdout_fraction=0,
        families=["logistic_regression"], max_trials=1).name)
    assert job.best_model, job.error
    return SmallModel(dataset.name, client.deploy(job.best_model).name)
