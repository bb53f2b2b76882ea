"""The four systems of the AutoML benchmark, behind one small interface.

A system gets a data set's train split (features + target) and its test features, and
returns test predictions: for classification a frame of class probabilities with one
column per class label (text form), for regression an array of values. The harness
scores every system's predictions the same way (`tools.bench.automl.score`).

- `PlatformSystem`: the platform, used as a user would: one `LocalPlatform` (embedded
  backends, home in a temporary folder, Envoy on a free port) for the whole run, one
  bench user; per data set: upload the train split as CSV, `train`, wait, deploy the
  best model, predict the test features through the endpoint.
- `FlamlSystem`: `flaml.AutoML().fit(..., time_budget=B, seed=0, verbose=0)`.
- `H2OSystem`: H2O AutoML (`max_runtime_secs=B, seed=0, nfolds=5`) on a local H2O
  started once for the run (127.0.0.1, free port, nthreads=2, 6 GB).
- `HgbSystem`: scikit-learn's HistGradientBoosting with default settings: the floor.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import os
import pathlib
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nbml_server.domain.automl import to_label

from .suite import REGRESSION, Dataset

log = logging.getLogger("bench")


def labels(series: pd.Series) -> pd.Series:
    return series.map(to_label).astype(object)


@dataclass
class Outcome:
    """What one system produced for one data set and budget."""

    proba: pd.DataFrame | None = None  # classification: columns = class labels (text)
    values: np.ndarray | None = None  # regression
    fit_seconds: float = 0.0  # the training call (for the platform: train -> job end)
    predict_seconds: float = 0.0
    prepare_seconds: float = 0.0  # upload / conversion before the fit, not in fit_seconds
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # anything odd about the predictions


class Unavailable(Exception):
    """The system cannot run here (not installed, no Java, ...)."""


class System:
    name = ""
    budgeted = True  # False: the result does not depend on the budget (run once)

    def check(self) -> None:
        """Raises Unavailable when the system cannot run here."""

    def start(self, workdir: pathlib.Path) -> None:
        pass

    def stop(self) -> None:
        pass

    def versions(self) -> dict[str, str]:
        return {}

    def run(self, dataset: Dataset, train: pd.DataFrame, test_X: pd.DataFrame,
            budget: int) -> Outcome:
        raise NotImplementedError


def _require(module: str, hint: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - ImportError, or a broken dependency
        raise Unavailable(f"{module} is not importable ({type(error).__name__}: {error}); "
                          f"{hint}") from None


BENCH_HINT = "install with `uv sync --frozen --extra cluster --group bench`"


def _free_port_pair() -> int:
    """A port p with p and p + 1 free on 127.0.0.1 (H2O uses both)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports")


# ============================================================================ platform

class PlatformSystem(System):
    name = "platform"
    PASSWORD = "bench password, long enough"

    def __init__(self) -> None:
        self.platform = None
        self.client = None
        self.home: pathlib.Path | None = None
        self.scratch: pathlib.Path | None = None

    def check(self) -> None:
        _require("nbml_server.launcher", "run from the project's venv")
        _require("nbml.client", "run from the project's venv")

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version
        out = {}
        for dist in ("nbml-platform", "scikit-learn", "optuna"):
            try:
                out[dist] = version(dist)
            except Exception:  # noqa: BLE001
                pass
        return out

    def start(self, workdir: pathlib.Path) -> None:
        from nbml.client import Client
        from nbml_server.launcher import LocalPlatform

        self.home = workdir / "nbml-home"
        self.scratch = workdir / "platform-upload"
        self.scratch.mkdir(parents=True, exist_ok=True)
        # Empty backend settings mean the embedded defaults under `home`, whatever the
        # caller's environment says.
        env = {"NBML_STORE": "", "NBML_BLOBS": "", "NBML_BUS": ""}
        started = time.monotonic()
        self.platform = LocalPlatform(self.home, http_port=0, env=env)
        self.platform.start()
        log.info("platform up at %s in %.1f s (home %s)", self.platform.address,
                 time.monotonic() - started, self.home)
        # Unary calls may wait for a leaderboard's evaluations: a generous deadline.
        self.client = Client(self.platform.address, timeout=900)
        self.client.sign_up("bench", self.PASSWORD)

    def stop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001
                pass
            self.client = None
        if self.platform is not None:
            self.platform.stop()
            self.platform = None

    def logs(self) -> str:
        return str(self.home / "logs") if self.home else ""

    def run(self, dataset: Dataset, train: pd.DataFrame, test_X: pd.DataFrame,
            budget: int) -> Outcome:
        from nbml.client import job_state_to_str

        client = self.client
        if client is None or self.platform is None:
            raise RuntimeError("the platform is not running")
        failed = self.platform.failed_children()
        if failed:
            raise RuntimeError(f"platform processes exited: {', '.join(failed)} "
                               f"(logs in {self.logs()})")
        out = Outcome()
        started = time.monotonic()
        path = self.scratch / f"{dataset.name}-train.csv"
        train.to_csv(path, index=False)
        uploaded = client.upload_dataset(path, name=path.name)
        path.unlink()
        out.prepare_seconds = time.monotonic() - started

        task = REGRESSION if dataset.task == REGRESSION else "classification"
        trace: list[tuple[float, str, str, float, int]] = []
        t0 = time.monotonic()
        # No holdout: the benchmark has its own test split, and FLAML and H2O train on every row.
        job = client.train(uploaded.name, dataset.target, task=task, budget_seconds=budget,
                           holdout_fraction=0.0)

        def on_update(j) -> None:
            trace.append((time.monotonic() - t0, job_state_to_str(j.state) or "",
                          j.progress.stage, j.progress.elapsed_seconds,
                          j.progress.trials_completed))

        final = client.wait_for_job(job.name, on_update=on_update,
                                    timeout=max(600.0, 20.0 * budget + 300.0))
        out.fit_seconds = time.monotonic() - t0
        state = job_state_to_str(final.state)
        details = out.details
        details.update(job=final.name, state=state, trials=final.progress.trials_completed,
                       job_elapsed_seconds=round(final.progress.elapsed_seconds, 3),
                       resolved_metric=final.resolved_metric,
                       best_cv_score=final.progress.best_score)
        # Search and refit times from the job's progress: the first update in stage
        # "refitting" carries the seconds the search took (elapsed is measured from
        # the start of the search, in the worker).
        refit = next((t for t in trace if t[2] == "refitting"), None)
        running = next((t for t in trace if t[1] == "running"), None)
        if refit is not None:
            details["search_seconds"] = round(refit[3], 3)
            details["refit_seconds"] = round(final.progress.elapsed_seconds - refit[3], 3)
        else:
            details["search_seconds"] = details["refit_seconds"] = None
        # Before the worker picked the job up (bus delivery) and after the search
        # (storing models, job record, stream to the client).
        details["queue_seconds"] = round(running[0], 3) if running else None
        if state != "succeeded" or not final.best_model:
            raise RuntimeError(f"job {final.name} ended {state}: {final.error or 'no model'}")

        # What a user sees next: the leaderboard (holdout metrics of each model; empty
        # here, as the job keeps no holdout). It also drains the evaluator's background
        # work before the next system runs.
        t_board = time.monotonic()
        board = client.leaderboard(final.name)
        details["leaderboard_seconds"] = round(time.monotonic() - t_board, 3)
        details["models"] = [{"family": e.model.family, "cv_score": e.model.cv_score,
                              "holdout": dict(e.evaluation.metrics)} for e in board.entries]
        best = client.get_model(final.best_model)
        details["best_family"] = best.family
        details["best_model"] = best.name
        details["model_classes"] = list(best.classes)

        t1 = time.monotonic()
        endpoint = client.deploy(final.best_model, display_name=f"bench-{dataset.name}")
        predicted = client.predict(endpoint.name, test_X)
        out.predict_seconds = time.monotonic() - t1
        try:
            client.delete_endpoint(endpoint.name)
        except Exception:  # noqa: BLE001 - cleanup only
            pass

        if dataset.task == REGRESSION:
            if "prediction" not in predicted:
                raise RuntimeError(f"no prediction column in {list(predicted.columns)}")
            out.values = pd.to_numeric(predicted["prediction"], errors="coerce").to_numpy(float)
            return out
        prefix = "probability_"
        columns = [c for c in predicted.columns if c.startswith(prefix)]
        if not columns:
            raise RuntimeError(f"no probability columns in the predictions "
                               f"({list(predicted.columns)})")
        out.proba = predicted[columns].rename(columns=lambda c: c[len(prefix):])
        if list(out.proba.columns) != list(best.classes):
            out.notes.append(f"probability columns {list(out.proba.columns)} differ from the "
                             f"model's classes {list(best.classes)}")
        # The label the platform returns must be the most probable class.
        argmax = out.proba.to_numpy().argmax(axis=1)
        disagree = int((np.asarray(out.proba.columns)[argmax]
                        != predicted["prediction"].astype(str).to_numpy()).sum())
        if disagree:
            out.notes.append(f"{disagree} predicted labels are not the most probable class")
        return out


# ============================================================================ FLAML

class FlamlSystem(System):
    name = "flaml"

    def check(self) -> None:
        _require("flaml.automl", BENCH_HINT)
        _require("lightgbm", BENCH_HINT)

    def versions(self) -> dict[str, str]:
        import flaml
        return {"flaml": flaml.__version__}

    def run(self, dataset: Dataset, train: pd.DataFrame, test_X: pd.DataFrame,
            budget: int) -> Outcome:
        from flaml import AutoML

        out = Outcome()
        X = train[dataset.feature_columns]
        y = labels(train[dataset.target]) if dataset.classification else train[dataset.target]
        task = "regression" if dataset.task == REGRESSION else "classification"
        automl = AutoML()
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            automl.fit(X, y, task=task, time_budget=budget, seed=0, verbose=0)
        out.fit_seconds = time.monotonic() - t0
        out.details.update(best_estimator=automl.best_estimator,
                           best_config=_jsonable(automl.best_config),
                           best_loss=_float(automl.best_loss),
                           metric=str(automl._state.metric) if hasattr(automl, "_state") else None,
                           eval_method=getattr(getattr(automl, "_state", None), "eval_method",
                                               None))
        t1 = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dataset.classification:
                proba = np.asarray(automl.predict_proba(test_X[dataset.feature_columns]))
                out.proba = pd.DataFrame(proba, columns=[to_label(c) for c in automl.classes_])
            else:
                out.values = np.asarray(automl.predict(test_X[dataset.feature_columns]),
                                        dtype=float).reshape(-1)
        out.predict_seconds = time.monotonic() - t1
        return out


# ============================================================================ H2O

class H2OSystem(System):
    name = "h2o"

    def __init__(self) -> None:
        self.h2o = None
        self.started = False
        self.scratch: pathlib.Path | None = None

    def check(self) -> None:
        _require("h2o", BENCH_HINT)
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise Unavailable("H2O needs a Java runtime (no `java` on PATH, no JAVA_HOME)")

    def versions(self) -> dict[str, str]:
        import h2o
        return {"h2o": h2o.__version__}

    def start(self, workdir: pathlib.Path) -> None:
        import h2o

        ice = workdir / "h2o"
        ice.mkdir(parents=True, exist_ok=True)
        self.scratch = workdir / "h2o-upload"
        self.scratch.mkdir(parents=True, exist_ok=True)
        port = _free_port_pair()
        started = time.monotonic()
        self.started = True  # from here on, stop() must try to shut it down
        said = io.StringIO()  # h2o.init prints (e.g. "your H2O is old"): keep it quiet
        try:
            with contextlib.redirect_stdout(said):
                h2o.init(ip="127.0.0.1", port=port, nthreads=2, max_mem_size="6G",
                         bind_to_localhost=True, telemetry=False, verbose=False,
                         ice_root=str(ice), log_dir=str(ice / "logs"))
        except Exception:
            log.error("h2o.init said:\n%s", said.getvalue())
            raise
        h2o.no_progress()
        self.h2o = h2o
        log.info("H2O up on port %d in %.1f s", port, time.monotonic() - started)

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        try:
            import h2o
            cluster = h2o.cluster()
            if cluster is not None:
                cluster.shutdown()
        except Exception as error:  # noqa: BLE001
            log.warning("could not shut H2O down: %s", error)

    def _frame(self, frame: pd.DataFrame, dataset: Dataset, with_target: bool, name: str):
        """The frame in H2O, through a CSV file (H2OFrame(pandas) turns missing text
        values into a level "nan"; in a CSV they are empty cells, which H2O reads as
        missing). Categoricals and a classification target are enums."""
        types = {}
        for c in frame.columns:
            if c == dataset.target:
                types[c] = "enum" if dataset.classification else "real"
            elif c in dataset.categorical_columns:
                types[c] = "enum"
            else:
                types[c] = "real"
        data = frame.copy()
        if with_target and dataset.classification:
            data[dataset.target] = labels(data[dataset.target])
        path = self.scratch / f"{name}.csv"
        data.to_csv(path, index=False)
        try:
            return self.h2o.upload_file(str(path), destination_frame=name, header=1,
                                        col_names=list(data.columns),
                                        col_types=[types[c] for c in data.columns])
        finally:
            path.unlink(missing_ok=True)

    def run(self, dataset: Dataset, train: pd.DataFrame, test_X: pd.DataFrame,
            budget: int) -> Outcome:
        from h2o.automl import H2OAutoML

        h2o = self.h2o
        if h2o is None:
            raise RuntimeError("H2O is not running")
        out = Outcome()
        try:
            warnings.filterwarnings("ignore", category=Warning, module=r"h2o\.")
            t_prep = time.monotonic()
            train_h = self._frame(train, dataset, True, f"{dataset.name}_{budget}_train")
            test_h = self._frame(test_X[dataset.feature_columns], dataset, False,
                                 f"{dataset.name}_{budget}_test")
            out.prepare_seconds = time.monotonic() - t_prep
            aml = H2OAutoML(max_runtime_secs=budget, seed=0, nfolds=5,
                            project_name=f"bench_{dataset.name}_{budget}", verbosity=None)
            t0 = time.monotonic()
            aml.train(x=dataset.feature_columns, y=dataset.target, training_frame=train_h)
            out.fit_seconds = time.monotonic() - t0
            if aml.leader is None:
                raise RuntimeError("H2O AutoML finished without a leader model")
            board = aml.leaderboard.as_data_frame(use_multi_thread=False)
            out.details.update(leader=aml.leader.model_id, models=len(board),
                               leaderboard_top=board.head(5).to_dict("records"))
            t1 = time.monotonic()
            predicted = aml.leader.predict(test_h).as_data_frame(use_multi_thread=False)
            out.predict_seconds = time.monotonic() - t1
            if dataset.classification:
                levels = train_h[dataset.target].levels()[0]
                columns = {}
                for level in levels:
                    # H2O names a probability column after its level; levels that are
                    # not valid names (e.g. digits) get a "p" prefix.
                    name = next((c for c in (level, f"p{level}") if c in predicted.columns), None)
                    if name is None:
                        raise RuntimeError(f"no probability column for class {level!r} in "
                                           f"{list(predicted.columns)}")
                    columns[level] = predicted[name].to_numpy(float)
                out.proba = pd.DataFrame(columns)
            else:
                out.values = predicted["predict"].to_numpy(float)
            return out
        finally:
            try:
                h2o.remove_all()
            except Exception:  # noqa: BLE001
                pass


# ============================================================================ floor

class HgbSystem(System):
    name = "hgb"
    budgeted = False
    MAX_CATEGORIES = 255  # HistGradientBoosting's native categorical limit (max_bins)

    def versions(self) -> dict[str, str]:
        import sklearn
        return {"scikit-learn": sklearn.__version__}

    def _encode(self, dataset: Dataset, train_X: pd.DataFrame, test_X: pd.DataFrame):
        """Categoricals as pandas categories (native support, categorical_features=
        "from_dtype"); above 255 levels as ordinal codes. Categories come from the
        training rows only; unseen test values become missing."""
        train_X, test_X = train_X.copy(), test_X.copy()
        for c in dataset.categorical_columns:
            values = sorted({to_label(v) for v in train_X[c].dropna()})
            dtype = pd.CategoricalDtype(values)
            train_c = train_X[c].map(to_label, na_action="ignore").astype(dtype)
            test_c = test_X[c].map(to_label, na_action="ignore").astype(dtype)
            if len(values) > self.MAX_CATEGORIES:
                train_c = train_c.cat.codes.replace(-1, np.nan).astype(float)
                test_c = test_c.cat.codes.replace(-1, np.nan).astype(float)
            train_X[c], test_X[c] = train_c, test_c
        return train_X, test_X

    def run(self, dataset: Dataset, train: pd.DataFrame, test_X: pd.DataFrame,
            budget: int) -> Outcome:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        out = Outcome()
        features = dataset.feature_columns
        t_prep = time.monotonic()
        X, X_test = self._encode(dataset, train[features], test_X[features])
        out.prepare_seconds = time.monotonic() - t_prep
        if dataset.classification:
            model = HistGradientBoostingClassifier(categorical_features="from_dtype",
                                                   random_state=0)
            y = labels(train[dataset.target])
        else:
            model = HistGradientBoostingRegressor(categorical_features="from_dtype",
                                                  random_state=0)
            y = train[dataset.target]
        t0 = time.monotonic()
        model.fit(X, y)
        out.fit_seconds = time.monotonic() - t0
        out.details["n_iter"] = int(model.n_iter_)
        t1 = time.monotonic()
        if dataset.classification:
            out.proba = pd.DataFrame(model.predict_proba(X_test),
                                     columns=[to_label(c) for c in model.classes_])
        else:
            out.values = np.asarray(model.predict(X_test), dtype=float)
        out.predict_seconds = time.monotonic() - t1
        return out


# ============================================================================ helpers

def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return _float(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


SYSTEMS: dict[str, type[System]] = {
    "platform": PlatformSystem, "flaml": FlamlSystem, "h2o": H2OSystem, "hgb": HgbSystem}
PEERS = ("flaml", "h2o", "hgb")
