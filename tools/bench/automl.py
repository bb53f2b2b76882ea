"""`make bench-automl`: the platform's AutoML against FLAML, H2O AutoML and a
HistGradientBoosting floor - same run, same machine, same splits, same budget.

    python -m tools.bench.automl [--budgets 10,60] [--datasets name,name]
                                 [--systems platform,flaml,h2o,hgb] [--output-dir bench-results]

For each data set (tools/bench/suite.py) and budget, every system trains on the same
75 % train split and predicts the same 25 % test split; the harness scores all
predictions the same way: binary ROC-AUC; multiclass log loss and accuracy; regression
R2 and RMSE. The platform is used as a user would (upload the train CSV, train, deploy,
predict through the endpoint) and never sees the test rows' targets.

Ratios are oriented so that > 1 means the platform is better: binary platform/peer
ROC-AUC, multiclass peer/platform log loss, regression peer/platform RMSE.

Writes results.json, results.md and results.png into the output folder (results.json
after every data set, so an interrupted run keeps what it finished). Systems that are
not installed are reported as missing. The platform and H2O are stopped at the end,
also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import pathlib
import platform as _platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score, roc_auc_score

from . import report, suite
from .run_info import git_commit, json_default, load_average
from .suite import BINARY, MULTICLASS, REGRESSION, Dataset
from .systems import PEERS, SYSTEMS, Outcome, System, Unavailable, labels

log = logging.getLogger("bench")

DEFAULT_BUDGETS = (10, 60)
MIN_BUDGET = 5  # the platform's minimum
PRIMARY = {BINARY: "roc_auc", MULTICLASS: "log_loss", REGRESSION: "rmse"}
LOWER_IS_BETTER = {"log_loss", "rmse"}


# ------------------------------------------------------------------ scoring

def score(dataset: Dataset, y_test: pd.Series, outcome: Outcome) -> tuple[dict, list[str]]:
    """Test metrics of one system's predictions, and notes about anything repaired."""
    notes: list[str] = []
    if dataset.task == REGRESSION:
        values = np.asarray(outcome.values, dtype=float)
        y = y_test.to_numpy(dtype=float)
        if len(values) != len(y):
            raise ValueError(f"{len(values)} predictions for {len(y)} rows")
        bad = ~np.isfinite(values)
        if bad.any():
            notes.append(f"{int(bad.sum())} non-finite predictions replaced by the train mean")
            values = np.where(bad, np.nanmean(values[~bad]) if (~bad).any() else 0.0, values)
        return {"r2": float(r2_score(y, values)),
                "rmse": float(np.sqrt(mean_squared_error(y, values)))}, notes

    y = labels(y_test).to_numpy()
    classes = sorted(set(y) | set(outcome.proba.columns))
    proba = outcome.proba
    if len(proba) != len(y):
        raise ValueError(f"{len(proba)} predictions for {len(y)} rows")
    missing = [c for c in classes if c not in proba.columns]
    if missing:
        notes.append(f"no probability column for class(es) {missing}: taken as 0")
    P = proba.reindex(columns=classes).to_numpy(dtype=float)
    nan = np.isnan(P)
    if nan.any():
        if not missing:
            notes.append(f"{int(nan.any(axis=1).sum())} rows with missing probabilities: taken as 0")
        P = np.where(nan, 0.0, P)
    sums = P.sum(axis=1)
    if np.any(np.abs(sums - 1) > 1e-3):
        notes.append(f"probabilities of {int((np.abs(sums - 1) > 1e-3).sum())} rows do not "
                     "sum to 1: normalised")
    P = P / np.where(sums > 0, sums, 1)[:, None]
    P = np.clip(P, 1e-15, 1)
    P = P / P.sum(axis=1, keepdims=True)
    predicted = np.asarray(classes)[P.argmax(axis=1)]
    metrics = {"accuracy": float(accuracy_score(y, predicted)),
               "log_loss": float(log_loss(y, P, labels=classes))}
    if dataset.task == BINARY:
        positive = classes[1]
        metrics["roc_auc"] = float(roc_auc_score(y == positive, P[:, 1]))
    return metrics, notes


def ratio(task: str, platform: dict | None, peer: dict | None) -> float | None:
    """> 1: the platform is better."""
    if not platform or not peer:
        return None
    metric = PRIMARY[task]
    a, b = platform.get(metric), peer.get(metric)
    if a is None or b is None:
        return None
    if metric in LOWER_IS_BETTER:
        return b / a if a > 0 else (float("inf") if b > 0 else 1.0)
    return a / b if b > 0 else None


# ------------------------------------------------------------------ the run

class Bench:
    def __init__(self, datasets: list[Dataset], budgets: list[int], system_names: list[str],
                 output_dir: pathlib.Path, workdir: pathlib.Path):
        self.datasets = datasets
        self.budgets = budgets
        self.system_names = system_names
        self.output_dir = output_dir
        self.workdir = workdir
        self.systems: dict[str, System] = {}
        self.missing: dict[str, str] = {}
        self.runs: list[dict] = []
        self.started = time.time()
        self.meta: dict[str, Any] = {}
        self.summaries: dict[str, dict] = {}

    # -- lifecycle
    def start(self) -> None:
        versions: dict[str, str] = {}
        for name in self.system_names:
            system = SYSTEMS[name]()
            try:
                system.check()
                versions.update(system.versions())
            except Unavailable as why:
                self.missing[name] = str(why)
                log.warning("%s: not available: %s", name, why)
                continue
            self.systems[name] = system
        self.meta = {
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "budgets": self.budgets, "datasets": [d.name for d in self.datasets],
            "systems": self.system_names, "missing": self.missing, "versions": versions,
            "machine": {"cpus": os.cpu_count(), "python": _platform.python_version(),
                        "platform": _platform.platform(),
                        "load_average_at_start": load_average()},
            "commit": git_commit(), "split": {"test_size": suite.TEST_SIZE,
                                               "random_state": suite.SPLIT_SEED,
                                               "stratified": "classification"},
        }
        for name, system in list(self.systems.items()):
            try:
                system.start(self.workdir)
            except Exception as error:  # noqa: BLE001 - run the others
                log.error("%s did not start: %s", name, error)
                self.missing[name] = f"did not start: {type(error).__name__}: {error}"
                system.stop()
                del self.systems[name]

    def stop(self) -> None:
        for name, system in self.systems.items():
            try:
                system.stop()
            except BaseException as error:  # noqa: BLE001 - stop the others too
                log.warning("stopping %s: %s", name, error)

    # -- running
    def run(self) -> None:
        for dataset in self.datasets:
            t = time.monotonic()
            train, test = dataset.split
            test_X = test[dataset.feature_columns].copy()
            y_test = test[dataset.target]
            self.summaries[dataset.name] = dataset.summary()
            log.info("== %s (%s): %d train / %d test rows, %d features", dataset.name,
                     dataset.task, len(train), len(test), len(dataset.feature_columns))
            for name in self.system_names:
                if name in self.missing:
                    for budget in (self.budgets if SYSTEMS[name].budgeted else [None]):
                        self._record(dataset, name, budget, status="missing",
                                     error=self.missing[name])
                    continue
                system = self.systems[name]
                if not system.budgeted:
                    self._run_one(dataset, system, None, train, test_X, y_test)
            for budget in self.budgets:
                for name, system in self.systems.items():
                    if system.budgeted:
                        self._run_one(dataset, system, budget, train, test_X, y_test)
            log.info("   %s done in %.0f s", dataset.name, time.monotonic() - t)
            # free the frames of the large sets
            for attr in ("frame", "split"):
                dataset.__dict__.pop(attr, None)
            self.write(partial=True)

    def _run_one(self, dataset: Dataset, system: System, budget: int | None,
                 train: pd.DataFrame, test_X: pd.DataFrame, y_test: pd.Series) -> None:
        label = f"{dataset.name} {system.name}" + (f" @{budget}s" if budget else "")
        load = load_average()
        # Each system gets its own copy: none can alter what the next one sees.
        try:
            outcome = system.run(dataset, train.copy(), test_X.copy(),
                                 budget or self.budgets[0])
            metrics, notes = score(dataset, y_test, outcome)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - record it, go on
            message = f"{type(error).__name__}: {error}"
            log.error("   %-28s FAILED %s", label, message)
            log.debug("%s", traceback.format_exc())
            extra = {}
            if system.name == "platform" and hasattr(system, "logs"):
                extra["logs"] = system.logs()
            self._record(dataset, system.name, budget, status="error", error=message,
                         details=extra, load_average=load)
            return
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        log.info("   %-28s %s  fit %.1f s, predict %.1f s%s", label, shown,
                 outcome.fit_seconds, outcome.predict_seconds,
                 ("  [" + "; ".join(outcome.notes + notes) + "]") if outcome.notes + notes else "")
        self._record(dataset, system.name, budget, status="ok", metrics=metrics,
                     fit_seconds=outcome.fit_seconds, predict_seconds=outcome.predict_seconds,
                     prepare_seconds=outcome.prepare_seconds, details=outcome.details,
                     notes=outcome.notes + notes, load_average=load)

    def _record(self, dataset: Dataset, system: str, budget: int | None, **fields) -> None:
        row = {"dataset": dataset.name, "task": dataset.task, "system": system,
               "budget": budget, "status": "ok", "error": None, "metrics": {},
               "fit_seconds": None, "predict_seconds": None, "prepare_seconds": None,
               "details": {}, "notes": []}
        row.update(fields)
        for key in ("fit_seconds", "predict_seconds", "prepare_seconds"):
            if row[key] is not None:
                row[key] = round(row[key], 3)
        self.runs.append(row)

    # -- results
    def result(self, partial: bool) -> dict:
        ratios, summary = comparisons(self.runs, self.budgets, self.datasets)
        return {"meta": {**self.meta, "partial": partial,
                         "elapsed_seconds": round(time.time() - self.started, 1),
                         "load_average_at_end": load_average()},
                "datasets": list(self.summaries.values()),
                "runs": self.runs, "ratios": ratios, "summary": summary}

    def write(self, partial: bool) -> dict:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        result = self.result(partial)
        tmp = self.output_dir / "results.json.tmp"
        tmp.write_text(json.dumps(result, indent=1, default=json_default))
        tmp.replace(self.output_dir / "results.json")
        return result


def comparisons(runs: list[dict], budgets: list[int], datasets: list[Dataset]
                ) -> tuple[list[dict], list[dict]]:
    """Per (data set, budget, peer) ratio, and per (peer, budget) median and minimum."""
    def ok(dataset: str, system: str, budget: int | None) -> dict | None:
        for r in runs:
            if (r["dataset"], r["system"], r["status"]) == (dataset, system, "ok") and (
                    r["budget"] == budget or r["budget"] is None):
                return r["metrics"]
        return None

    tasks = {d.name: d.task for d in datasets}
    ratios = []
    for name in dict.fromkeys(r["dataset"] for r in runs):
        for budget in budgets:
            mine = ok(name, "platform", budget)
            for peer in PEERS:
                value = ratio(tasks[name], mine, ok(name, peer, budget))
                if value is not None:
                    ratios.append({"dataset": name, "budget": budget, "peer": peer,
                                   "metric": PRIMARY[tasks[name]], "ratio": value})
    summary = []
    for peer in PEERS:
        for budget in budgets:
            mine = [r for r in ratios if r["peer"] == peer and r["budget"] == budget]
            if not mine:
                continue
            worst = min(mine, key=lambda r: r["ratio"])
            summary.append({"peer": peer, "budget": budget, "n": len(mine),
                            "median": statistics.median(r["ratio"] for r in mine),
                            "min": worst["ratio"], "min_dataset": worst["dataset"],
                            "platform_better": sum(r["ratio"] > 1 for r in mine)})
    return ratios, summary


# ------------------------------------------------------------------ helpers

def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.automl",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)),
                        help="comma-separated time budgets in seconds (default: %(default)s)")
    parser.add_argument("--datasets", default="",
                        help=f"comma-separated data sets (default: all of {','.join(suite.DATASETS)})")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated systems (default: %(default)s)")
    parser.add_argument("--output-dir", default="bench-results", type=pathlib.Path)
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the temporary folder (platform home, logs, H2O logs)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        parser.error("--budgets must be whole seconds, e.g. 10,60")
    if not args.budgets or min(args.budgets) < MIN_BUDGET:
        parser.error(f"every budget must be at least {MIN_BUDGET} s (the platform's minimum)")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or not args.systems:
        parser.error(f"unknown system(s) {unknown}; known: {', '.join(SYSTEMS)}")
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("h2o", "flaml", "flaml.automl", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    datasets = suite.get(args.datasets)
    # SIGTERM stops as Ctrl-C does; SIGINT is set too because a shell starting us in
    # the background would have it ignored.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="nbml-bench-"))
    bench = Bench(datasets, args.budgets, args.systems, args.output_dir, workdir)
    interrupted = False
    failed = False
    try:
        bench.start()
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: stopping and writing what finished")
    except Exception:  # noqa: BLE001
        failed = True
        log.error("the benchmark failed:\n%s", traceback.format_exc())
    finally:
        # Ctrl-C while stopping must not leave children behind: ignore it meanwhile.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            bench.stop()
        finally:
            signal.signal(signal.SIGINT, previous)
    result = bench.write(partial=interrupted or failed)
    text = report.text(result)
    print(text, flush=True)
    (args.output_dir / "results.md").write_text(report.markdown(result))
    try:
        report.plot(result, args.output_dir / "results.png")
    except Exception as error:  # noqa: BLE001 - the numbers matter more than the plot
        log.warning("no plot: %s", error)
    print(f"\nwrote {args.output_dir / 'results.json'}, results.md, results.png "
          f"({result['meta']['elapsed_seconds']:.0f} s)", flush=True)
    if args.keep_workdir or failed:
        print(f"work folder kept: {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
