"""Locust load test of the REST path through Envoy: users signing up, uploading,
training and predicting at once.

    uv run locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 \
        --headless -u 12 -r 12 -t 60s

Needs only a running platform (`make up`): before the users start, one account uploads
a generated data set, trains on it and deploys the best model; the predicting users
call that endpoint. `make bench-load` runs this and prints the figures; `make test`
runs a short smoke of it (tests/e2e/test_load_smoke.py) that allows no failure.

A request counts as failed when its status is not 200 or, for a training job, when the
job does not end SUCCEEDED.
"""

import base64
import csv
import io
import random
import uuid

import requests
from locust import HttpUser, between, events, task

PASSWORD = "a load test password"
ROWS = 400
# Short jobs (the least budget, a few trials) keep the trainers' queue moving under load.
TRAINING_BUDGET_SECONDS = 5
TRAINING_MAX_TRIALS = 6
# Set by the setup below: the endpoint every predicting user calls, its owner's token.
SHARED: dict[str, str] = {}


def generated_csv(seed: int, rows: int = ROWS) -> bytes:
    """A small churn-like table: numbers, a category, missing values, a binary target."""
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["tenure", "monthly", "plan", "tickets", "churned"])
    for _ in range(rows):
        tenure = rng.randint(0, 72)
        monthly = round(rng.uniform(10, 120), 2)
        plan = rng.choice(["basic", "plus", "pro"])
        tickets = "" if rng.random() < 0.05 else rng.randint(0, 9)
        risk = monthly / 120 - tenure / 72 + (0.3 if plan == "basic" else 0) + rng.gauss(0, 0.3)
        writer.writerow([tenure, monthly, plan, tickets, "yes" if risk > 0.2 else "no"])
    return out.getvalue().encode()


def feature_rows(seed: int, count: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"tenure": rng.randint(0, 72), "monthly": round(rng.uniform(10, 120), 2),
             "plan": rng.choice(["basic", "plus", "pro"]),
             "tickets": None if rng.random() < 0.05 else rng.randint(0, 9)}
            for _ in range(count)]


def upload_body(name: str, seed: int) -> list[dict]:
    # A client-streamed RPC takes a JSON array of messages over REST.
    return [{"metadata": {"display_name": name},
             "chunk": base64.b64encode(generated_csv(seed)).decode()}]


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@events.test_start.add_listener
def deploy_a_model(environment, **_kwargs) -> None:
    """One account, one data set, one trained and deployed model, before any user runs."""
    host = environment.host.rstrip("/")
    with requests.Session() as http:
        http.trust_env = False

        def call(method: str, path: str, **kwargs) -> dict:
            response = http.request(method, host + path, timeout=300, **kwargs)
            response.raise_for_status()
            return response.json()
        owner = f"owner-{uuid.uuid4().hex[:12]}"
        token = call("POST", "/v1/auth:signUp",
                     json={"username": owner, "password": PASSWORD})["tokens"]["access_token"]
        dataset = call("POST", "/v1/datasets:upload", headers=_bearer(token),
                       json=upload_body("load test", seed=0))
        job = call("POST", "/v1/trainingJobs", headers=_bearer(token), json={
            "dataset": dataset["name"], "target_column": "churned",
            "budget_seconds": TRAINING_BUDGET_SECONDS, "max_trials": TRAINING_MAX_TRIALS})
        call("GET", f"/v1/{job['name']}:watch", headers=_bearer(token))
        job = call("GET", f"/v1/{job['name']}", headers=_bearer(token))
        if job["state"] != "JOB_STATE_SUCCEEDED":
            raise RuntimeError(f"the load test's model did not train: {job}")
        endpoint = call("POST", "/v1/endpoints", headers=_bearer(token),
                        json={"model": job["best_model"]})
        # An API key, as a program calling an endpoint would hold (access tokens expire).
        key = call("POST", "/v1/apiKeys", headers=_bearer(token),
                   json={"display_name": "load test"})
    SHARED.update(endpoint=endpoint["name"], api_key=key["secret"])


class _SignedUpUser(HttpUser):
    abstract = True

    def sign_up(self) -> None:
        response = self.client.post("/v1/auth:signUp", name="/v1/auth:signUp", json={
            "username": f"user-{uuid.uuid4().hex[:12]}", "password": PASSWORD})
        response.raise_for_status()
        self.client.headers.update(_bearer(response.json()["tokens"]["access_token"]))


class SigningUpUser(_SignedUpUser):
    """Someone new: signs up, looks at their account and history."""
    weight = 1
    wait_time = between(0.5, 1.5)

    @task
    def sign_up_and_look_around(self) -> None:
        self.client.headers.pop("authorization", None)
        self.sign_up()
        self.client.get("/v1/users/me")
        self.client.get("/v1/activities")


class UploadingUser(_SignedUpUser):
    """Uploads a data set, reads it back, previews and deletes it."""
    weight = 1
    wait_time = between(0.2, 1)

    def on_start(self) -> None:
        self.sign_up()

    @task
    def upload_read_delete(self) -> None:
        dataset = self.client.post("/v1/datasets:upload", name="/v1/datasets:upload",
                                   json=upload_body("upload", seed=random.randrange(1000)))
        if dataset.status_code != 200:
            return
        name = dataset.json()["name"]
        self.client.get(f"/v1/{name}", name="/v1/datasets/{id}")
        self.client.get(f"/v1/{name}:preview", name="/v1/datasets/{id}:preview")
        self.client.delete(f"/v1/{name}", name="/v1/datasets/{id}")


class TrainingUser(_SignedUpUser):
    """Trains on its data set and waits for the job to end."""
    weight = 1
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.sign_up()
        uploaded = self.client.post("/v1/datasets:upload", name="/v1/datasets:upload",
                                    json=upload_body("training", seed=random.randrange(1000)))
        uploaded.raise_for_status()
        self.dataset = uploaded.json()["name"]

    @task
    def train_and_wait(self) -> None:
        created = self.client.post("/v1/trainingJobs", json={
            "dataset": self.dataset, "target_column": "churned",
            "budget_seconds": TRAINING_BUDGET_SECONDS, "max_trials": TRAINING_MAX_TRIALS})
        if created.status_code != 200:
            return
        name = created.json()["name"]
        self.client.get(f"/v1/{name}:watch", name="/v1/trainingJobs/{id}:watch")
        with self.client.get(f"/v1/{name}", name="/v1/trainingJobs/{id}",
                             catch_response=True) as response:
            state = response.json().get("state") if response.status_code == 200 else None
            if state != "JOB_STATE_SUCCEEDED":
                response.failure(f"{name} ended {state}: {response.text[:300]}")
        self.client.get(f"/v1/{name}/leaderboard", name="/v1/trainingJobs/{id}/leaderboard")


class PredictingUser(HttpUser):
    """A program calling the deployed model: mostly single rows, sometimes a hundred."""
    weight = 4
    wait_time = between(0, 0.05)

    def on_start(self) -> None:
        self.client.headers.update(_bearer(SHARED["api_key"]))
        self.path = f"/v1/{SHARED['endpoint']}:predict"
        self.rows = feature_rows(seed=random.randrange(1000), count=100)

    @task(9)
    def predict_one_row(self) -> None:
        self.client.post(self.path, name="/v1/endpoints/{id}:predict (1 row)",
                         json={"rows": [random.choice(self.rows)]})

    @task(1)
    def predict_a_hundred_rows(self) -> None:
        self.client.post(self.path, name="/v1/endpoints/{id}:predict (100 rows)",
                         json={"rows": self.rows})
