"""`make bench-serving`: the platform's predictor against MLflow's model server
(`mlflow models serve --env-manager local`) on the same fitted models, the same
machine and the same load, in one run (issue 5).

1. The platform (embedded backends, Envoy in front) trains three models on the
   benchmark's churn set (categorical and numeric columns, missing values) through its
   own API, one family per job: logistic regression, histogram gradient boosting and a
   300-tree random forest, each with the platform's preprocessing. Each is deployed; the
   first prediction after deploying it is timed (the model is not in memory yet). A
   900-tree forest (~50 MB) is trained and deployed for that timing only.
2. Each model's artifact is downloaded (DownloadModel) and saved as an MLflow model
   (sklearn flavour, skops format, `predict_proba` as its pyfunc) that MLflow serves.
3. Native load (wrk for HTTP, ghz for gRPC; see load_tools): single-row requests at
   concurrency 1, 8 and 32, and 1000-row requests at concurrency 1 - REST through Envoy
   and gRPC through Envoy for the platform (single rows as `rows`, 1000 rows as
   `columns`), REST for MLflow (its `dataframe_split`). Requests/s, p50, p99,
   errors and the server processes' CPU seconds are recorded; the in-process
   `predict_proba` time of the same pipeline is the floor.

Output: a table on stdout and results.json / results.md in --output-dir.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import pandas as pd
from google.protobuf import json_format

from nbml.client import column_values
from nbml.v1 import predictor_service_pb2
from tools.bench import suite
from tools.bench.load_tools import LoadResult, ghz, wrk
from tools.bench.run_info import git_commit, json_default, load_average

log = logging.getLogger("bench.serving")

ROOT = pathlib.Path(__file__).resolve().parents[2]
PASSWORD = "bench password, long enough"
DATASET = "churn"
# name -> (families, initial params) of the job that trains it.
MODELS = {
    "logistic_regression": (["logistic_regression"], {}),
    "hist_gradient_boosting": (["hist_gradient_boosting"], {}),
    "random_forest_300": (["random_forest"], {"random_forest.n_estimators": 300}),
}
# Deployed only to time their first prediction: the 50 MB model (~57 KB a tree).
FIRST_PREDICTION_ONLY = {
    "random_forest_900": (["random_forest"], {"random_forest.n_estimators": 900}),
}
SINGLE_ROW_CONCURRENCY = (1, 8, 32)
BATCH_ROWS = 1000
PREDICT_METHOD = "nbml.v1.PredictorService/Predict"
# Targets of issue 5, at concurrency 8 on single rows.
REST_SPEEDUP_TARGET, GRPC_SPEEDUP_TARGET, P99_SHARE_TARGET = 5.0, 8.0, 0.25
BATCH_FLOOR_TARGET, FIRST_PREDICTION_TARGET_S = 1.5, 1.0


# ------------------------------------------------------------------ request bodies

def json_rows(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON objects; missing values as null."""
    return [{c: (None if isinstance(v, float) and math.isnan(v) else v) for c, v in row.items()}
            for row in json.loads(frame.to_json(orient="records"))]


def platform_body(frame: pd.DataFrame) -> dict:
    """A PredictRequest (without its endpoint) as proto JSON: a single row as `rows`,
    more as `columns` (the form meant for many rows; `nbml.client.column_values`)."""
    if len(frame) == 1:
        return {"rows": json_rows(frame)}
    request = predictor_service_pb2.PredictRequest(
        columns={name: column_values(values) for name, values in frame.items()})
    return json_format.MessageToDict(request, preserving_proto_field_name=True)


def mlflow_body(frame: pd.DataFrame) -> bytes:
    rows = json_rows(frame)
    return json.dumps({"dataframe_split": {"columns": list(frame.columns),
                                           "data": [list(r.values()) for r in rows]}}).encode()


# ------------------------------------------------------------------ the platform side

def train_models(client, train: pd.DataFrame, target: str, budget: int,
                 names: list[str]) -> dict[str, str]:
    """Model name -> platform model id, one job per model."""
    dataset = client.upload_dataset(train, name=f"{DATASET}-train")
    jobs = {name: client.train(dataset.name, target, task="classification", budget_seconds=budget,
                               holdout_fraction=0, families=families, max_trials=1,
                               initial_params=params)
            for name, (families, params) in {**MODELS, **FIRST_PREDICTION_ONLY}.items()
            if name in names}
    models = {}
    for name, job in jobs.items():
        final = client.wait_for_job(job.name)
        if not final.best_model:
            raise RuntimeError(f"the {name} job did not produce a model: {final.error}")
        models[name] = final.best_model.split("/")[-1]
    return models


def first_prediction_seconds(client, model_id: str, rows: pd.DataFrame) -> tuple[str, float]:
    """Deploys the model and times deployment + the first prediction (the predictor
    loads the model then)."""
    started = time.perf_counter()
    endpoint = client.deploy(model_id).name
    client.predict(endpoint, rows)
    return endpoint, time.perf_counter() - started


def in_process_seconds(pipeline, frame: pd.DataFrame, repeats: int) -> float:
    """Median seconds of one predict_proba call on the frame."""
    pipeline.predict_proba(frame)  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        pipeline.predict_proba(frame)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# ------------------------------------------------------------------ MLflow

class MlflowServer:
    """`mlflow models serve` of one saved model, on loopback."""

    def __init__(self, model_dir: pathlib.Path, port: int, log_path: pathlib.Path):
        self.model_dir, self.port, self.log_path = model_dir, port, log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        # --env-manager local runs `uvicorn` by bare name: the venv's bin must be on PATH.
        env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}",
               "OMP_NUM_THREADS": "1"}
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(self.model_dir),
                 "-h", "127.0.0.1", "-p", str(self.port), "--env-manager", "local"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)  # not listening yet: nothing to wait on but the socket
        raise RuntimeError(f"mlflow models serve did not answer /ping in {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None


def save_for_mlflow(pipeline, path: pathlib.Path) -> None:
    """The fitted pipeline as an MLflow sklearn model (skops, with the types skops
    reports for it trusted), served by `predict_proba` like the platform's endpoint."""
    import mlflow.sklearn
    import skops.io as sio

    # MLflow dumps the pipeline with plain skops (a forest's trees one by one, not
    # packed as in the platform's artifact), so it is asked about that dump.
    trusted = list(sio.get_untrusted_types(data=sio.dumps(pipeline)))
    mlflow.sklearn.save_model(pipeline, str(path), serialization_format="skops",
                              skops_trusted_types=trusted, pyfunc_predict_fn="predict_proba")


# ------------------------------------------------------------------ one model

def bench_model(name: str, *, address: str, token: str, model_id: str,
                endpoint: str, pipeline, artifact: bytes, test_X: pd.DataFrame,
                server_pids: list[int], seconds: float, workdir: pathlib.Path) -> dict:
    one, batch = test_X.head(1), test_X.head(BATCH_ROWS)
    auth = {"Authorization": f"Bearer {token}"}
    rest_url = f"http://{address}/v1/{endpoint}:predict"
    proto = ROOT / "protos" / "nbml" / "v1" / "predictor_service.proto"
    imports = [ROOT / "protos", ROOT / "build" / "protodeps"]

    def platform_rest(frame, concurrency):
        body = json.dumps(platform_body(frame)).encode()
        return wrk(rest_url, body, concurrency=concurrency, seconds=seconds, headers=auth,
                   server_pids=server_pids)

    def platform_grpc(frame, concurrency):
        return ghz(address, PREDICT_METHOD, {"endpoint": endpoint, **platform_body(frame)},
                   concurrency=concurrency, seconds=seconds, proto=proto, import_paths=imports,
                   metadata={"authorization": f"Bearer {token}"}, server_pids=server_pids)

    model_dir = workdir / f"mlflow-{name}"
    save_for_mlflow(pipeline, model_dir)
    mlflow = MlflowServer(model_dir, free_port(), workdir / f"mlflow-{name}.log")
    mlflow.start()
    try:
        def mlflow_rest(frame, concurrency):
            return wrk(f"{mlflow.url}/invocations", mlflow_body(frame), concurrency=concurrency,
                       seconds=seconds, server_pids=[mlflow.process.pid])

        runs = []
        cases = [("1 row", one, c) for c in SINGLE_ROW_CONCURRENCY] + [
            (f"{len(batch)} rows", batch, 1)]
        for label, frame, concurrency in cases:
            for system, run in (("platform REST", platform_rest), ("platform gRPC", platform_grpc),
                                ("mlflow REST", mlflow_rest)):
                result = run(frame, concurrency)
                log.info("%-22s %-8s c=%-2d %-13s %8.1f req/s  p50 %7.2f ms  p99 %7.2f ms  "
                         "errors %d  cpu %.1f s", name, label, concurrency, system,
                         result.requests_per_second, result.p50_ms, result.p99_ms, result.errors,
                         result.server_cpu_seconds)
                runs.append({"rows": len(frame), "concurrency": concurrency, "system": system,
                             **result.as_dict()})
    finally:
        mlflow.stop()
    return {"model": name, "model_id": model_id, "artifact_mb": round(len(artifact) / 2**20, 2),
            "floor_ms": {"1": in_process_seconds(pipeline, one, 200) * 1000,
                         str(len(batch)): in_process_seconds(pipeline, batch, 20) * 1000},
            "runs": runs}


def free_port() -> int:
    from deploy.envoy.process import free_port as pick
    return pick()


# ------------------------------------------------------------------ report

def _find(runs: list[dict], system: str, rows: int, concurrency: int) -> LoadResult | None:
    for run in runs:
        if (run["system"], run["rows"], run["concurrency"]) == (system, rows, concurrency):
            return LoadResult(**{k: run[k] for k in LoadResult.__dataclass_fields__})
    return None


def verdicts(model: dict) -> dict:
    """The issue's targets for one model: value and whether it is met."""
    runs = model["runs"]
    rest, grpc_, peer = (_find(runs, s, 1, 8) for s in
                         ("platform REST", "platform gRPC", "mlflow REST"))
    batch = _find(runs, "platform gRPC", BATCH_ROWS, 1)
    out = {}
    if rest and peer and peer.requests_per_second:
        out["rest_speedup_c8"] = (rest.requests_per_second / peer.requests_per_second,
                                  REST_SPEEDUP_TARGET)
        out["rest_p99_share_c8"] = (rest.p99_ms / peer.p99_ms if peer.p99_ms else math.inf,
                                    P99_SHARE_TARGET)
    if grpc_ and peer and peer.requests_per_second:
        out["grpc_speedup_c8"] = (grpc_.requests_per_second / peer.requests_per_second,
                                  GRPC_SPEEDUP_TARGET)
    if batch:
        out["batch_p50_over_floor"] = (batch.p50_ms / model["floor_ms"][str(BATCH_ROWS)],
                                       BATCH_FLOOR_TARGET)
    out["first_prediction_s"] = (model["first_prediction_s"], FIRST_PREDICTION_TARGET_S)
    out["errors"] = (sum(r["errors"] for r in runs), 0)
    return {k: {"value": round(v, 3), "target": t,
                "met": v <= t if k in ("rest_p99_share_c8", "batch_p50_over_floor",
                                       "first_prediction_s", "errors") else v >= t}
            for k, (v, t) in out.items()}


def table(models: list[dict]) -> list[str]:
    header = ("| model | rows | conc | system | req/s | p50 ms | p99 ms | errors | server CPU s "
              "| × MLflow req/s |")
    lines = [header, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for model in models:
        for run in model["runs"]:
            peer = _find(model["runs"], "mlflow REST", run["rows"], run["concurrency"])
            ratio = (f"{run['requests_per_second'] / peer.requests_per_second:.2f}"
                     if peer and peer.requests_per_second and run["system"] != "mlflow REST"
                     else "")
            lines.append(f"| {model['model']} | {run['rows']} | {run['concurrency']} | "
                         f"{run['system']} | {run['requests_per_second']:.1f} | "
                         f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['errors']} | "
                         f"{run['server_cpu_seconds']:.1f} | {ratio} |")
    return lines


def markdown(result: dict) -> str:
    lines = [f"# Serving benchmark ({result['date']}, commit {result['commit']})", "",
             f"{result['seconds']:g} s per run, data set `{DATASET}`, load average before "
             f"{result['load_average']}; `mlflow models serve --env-manager local` "
             f"(mlflow {result['mlflow']}).", "",
             "## Targets (issue 5)", "",
             "| model | artifact MB | floor 1 row ms | floor 1000 rows ms | target | value | "
             "goal | met |", "|---|---:|---:|---:|---|---:|---:|---|"]
    for model in result["models"]:
        for key, verdict in model["verdicts"].items():
            lines.append(f"| {model['model']} | {model['artifact_mb']} | "
                         f"{model['floor_ms']['1']:.2f} | {model['floor_ms'][str(BATCH_ROWS)]:.2f} "
                         f"| {key} | {verdict['value']} | {verdict['target']} | "
                         f"{'yes' if verdict['met'] else '**no**'} |")
    lines += ["", "## First prediction after deploying", "",
              "Deploy, then one single-row prediction (the predictor loads the model then).",
              "", "| model | artifact MB | seconds | met |", "|---|---:|---:|---|"]
    lines += [f"| {f['model']} | {f['artifact_mb']} | {f['first_prediction_s']} | "
              f"{'yes' if f['met'] else '**no**'} |" for f in result["first_predictions"]]
    lines += ["", "## Every run", "", *table(result["models"]), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load run")
    parser.add_argument("--budget", type=int, default=30, help="training budget per job")
    every = [*MODELS, *FIRST_PREDICTION_ONLY]
    parser.add_argument("--models", default=",".join(every),
                        help=f"comma-separated subset of {', '.join(every)}")
    parser.add_argument("--output-dir", type=pathlib.Path,
                        default=ROOT / "docs" / "benchmarks" / "serving")
    parser.add_argument("--keep-workdir", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODELS and m not in FIRST_PREDICTION_ONLY]
    if unknown:
        raise SystemExit(f"unknown models: {', '.join(unknown)}")
    from importlib.metadata import version

    from nbml.client import Client
    from nbml_server.domain.automl import load_model
    from nbml_server.launcher import LocalPlatform

    dataset = suite.DATASETS[DATASET]
    train, test = dataset.split
    test_X = test[dataset.feature_columns]
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-serving-"))
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
              "load_average": load_average(), "seconds": args.seconds,
              "mlflow": version("mlflow"), "models": [], "first_predictions": []}
    platform = LocalPlatform(workdir / "nbml-home", http_port=free_port(),
                             env={"NBML_STORE": "", "NBML_BLOBS": "", "NBML_BUS": ""})
    try:
        platform.start()
        client = Client(platform.address, timeout=600)
        client.sign_up("bench", PASSWORD)
        token = client.create_api_key("serving bench")
        log.info("platform up at %s; training %s", platform.address, ", ".join(chosen))
        models = train_models(client, train, dataset.target, args.budget, chosen)
        server_pids = [c.process.pid for c in platform.children if c.name == "predictor"]
        server_pids.append(platform.envoy.pid)
        for name in chosen:
            endpoint, first = first_prediction_seconds(client, models[name], test_X.head(1))
            artifact = client.download_model_bytes(models[name])
            log.info("%s: %.1f MB, first prediction after deploying %.3f s", name,
                     len(artifact) / 2**20, first)
            result["first_predictions"].append({
                "model": name, "artifact_mb": round(len(artifact) / 2**20, 2),
                "first_prediction_s": round(first, 3),
                "met": first <= FIRST_PREDICTION_TARGET_S})
            if name in FIRST_PREDICTION_ONLY:
                continue
            entry = bench_model(name, address=platform.address, token=token,
                                model_id=models[name], endpoint=endpoint,
                                pipeline=load_model(artifact), artifact=artifact,
                                test_X=test_X, server_pids=server_pids, seconds=args.seconds,
                                workdir=workdir)
            entry["first_prediction_s"] = first
            entry["verdicts"] = verdicts(entry)
            result["models"].append(entry)
        client.close()
    finally:
        platform.stop()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(
        json.dumps(result, indent=2, default=json_default) + "\n")
    text = markdown(result)
    (args.output_dir / "results.md").write_text(text)
    print(text)
    print(f"wrote {args.output_dir / 'results.json'}, results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
