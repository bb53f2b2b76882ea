"""Locust load test of the REST path: log in, then predict single rows on an endpoint.

    uv run --group loadtest locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 \
        --headless -u 8 -r 8 -t 30s

Needs a running platform (`make up`), a user and an endpoint:
NBML_LOADTEST_USER, NBML_LOADTEST_PASSWORD, NBML_LOADTEST_ENDPOINT (`ep_…`) and
NBML_LOADTEST_ROWS (a CSV of feature rows to send, one per request).
"""

import csv
import itertools
import os

from locust import HttpUser, between, task


def _rows(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # CSV cells are text; send numbers as numbers, as a real client would.
    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return text or None
    return [{k: value(v) for k, v in row.items()} for row in rows]


class PredictingUser(HttpUser):
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        response = self.client.post("/v1/auth:logIn", json={
            "username": os.environ["NBML_LOADTEST_USER"],
            "password": os.environ["NBML_LOADTEST_PASSWORD"]})
        response.raise_for_status()
        token = response.json()["tokens"]["access_token"]
        self.client.headers["authorization"] = f"Bearer {token}"
        self.endpoint = os.environ["NBML_LOADTEST_ENDPOINT"]
        self.rows = itertools.cycle(_rows(os.environ["NBML_LOADTEST_ROWS"]))

    @task
    def predict_one_row(self) -> None:
        self.client.post(f"/v1/endpoints/{self.endpoint}:predict",
                         json={"rows": [next(self.rows)]}, name="/v1/endpoints/{id}:predict")
