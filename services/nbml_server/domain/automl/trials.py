"""One trial: a configuration cross-validated on the prepared rows.

The search (the coordinator) decides which configuration to try next and hands a
`TrialSpec` to a `TrialExecutor`; whoever runs it builds the same `TrialData` from
the same request (`preparation.prepare` is deterministic) and returns a
`TrialOutcome`. `InlineExecutor` runs trials in the coordinator's own thread;
other executors run them in child processes or on other workers.

Rungs (successive halving when one fold is costly): the first rungs run on the first
fold only - on large data on a subsample of its training rows (scored on that fold's
full validation rows), then, when a fold has many cells (rows x columns), on all of
its rows; the last rung is the full k-fold cross-validation, the only one whose
scores count as a trial's cv_score and whose out-of-fold predictions are kept.

Log loss: a trial's probabilities are temperature-scaled (`calibration`) before they
are scored, at every rung, with one temperature fitted on the predictions of all its
completed folds; the temperature is part of the trial's outcome and of its model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.base import clone

from .calibration import fit_temperature, scale
from .deadline import Clock
from .learners import N_JOBS, Learner, LearnerContext
from .preparation import Prepared
from .preprocessing import build_preprocessor
from .tasks import CLASSIFICATION, align_proba, fixed_target_scorer

# From this many cells (rows x columns) per fold, models may use 2 cores.
PARALLEL_CELLS = 100_000
FOLD_CACHE_BYTES = 256 * 2**20
# Successive halving: from this many training rows per fold, new configurations are
# first scored on 1/9 and 1/3 of them (each rung at least HALVING_MIN_ROWS rows).
HALVING_FROM_ROWS = 18_000
HALVING_MIN_ROWS = 2_000
HALVING_FACTOR = 3
# From this many cells (training rows x columns) per fold, a configuration is scored on
# the first fold before it runs on all k (wide or mid-size data: on the benchmark's
# 1,200 x 400 set one default boosting fit takes 2-5 s on 2 cores).
FOLD_RUNG_FROM_CELLS = 100_000


@dataclass(frozen=True)
class Rung:
    rows: int | None  # training rows per fold; None: all
    folds: int  # folds to run


@dataclass(frozen=True)
class TrialSpec:
    key: int  # the coordinator's id of the configuration (its Optuna trial number)
    family: str
    params: dict[str, Any]
    rung: int  # index into TrialData.rungs
    # No further fold starts when the folds so far say the rest would end later
    # than this many seconds after the trial started...
    max_seconds: float
    # ...unless the trial must finish (the search has no complete trial yet).
    must_finish: bool = False
    keep_oof: bool = False


@dataclass
class TrialOutcome:
    key: int
    rung: int
    family: str
    params: dict[str, Any]
    scores: list[float]  # one per completed fold
    fit_seconds: float  # fitting and scoring, summed over the folds
    error: str | None = None
    oof: np.ndarray | None = None  # out-of-fold predictions, when asked and complete
    worker: str = ""  # who ran it, for throughput reports
    temperature: float = 1.0  # log loss: the probabilities' scaling (1.0: none)


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


def cores(n_rows: int, columns: int) -> int:
    # On small data, threads cost more than they bring (and OpenMP spinning on a
    # busy 2-core machine can make a fit ten times slower); on wide data they halve
    # a boosting fit (1,200 x 400: LightGBM 9 s on one core, 4.5 s on two).
    return N_JOBS if n_rows * columns >= PARALLEL_CELLS else 1


def rungs_for(fold_rows: int, k: int, columns: int = 1) -> list[Rung]:
    rungs = [Rung(None, k)]
    if k > 1 and fold_rows * columns >= FOLD_RUNG_FROM_CELLS:
        rungs.insert(0, Rung(None, 1))
    if fold_rows >= HALVING_FROM_ROWS:
        rows = fold_rows // HALVING_FACTOR
        while rows >= HALVING_MIN_ROWS and len(rungs) < 4:
            rungs.insert(0, Rung(rows, 1))
            rows //= HALVING_FACTOR
    return rungs


class _FoldCache:
    """Preprocessed fold matrices per (preprocessing kind, fold, rows), computed once
    when they fit in memory (preprocessing does not depend on the hyperparameters)."""

    def __init__(self, X: pd.DataFrame, y: np.ndarray, folds, active_types: Mapping[str, str],
                 task: str, seed: int):
        self.X = X
        self.y = y
        self.task = task
        self.folds = folds
        self.active_types = dict(active_types)
        self.seed = seed
        self.store: dict[tuple[str, int, int | None], tuple[np.ndarray, np.ndarray]] = {}
        self.enabled: dict[str, bool] = {}

    def caching(self, kind: str) -> bool:
        return self.enabled.get(kind, True)

    def train_rows(self, i: int, rows: int | None) -> np.ndarray:
        train = self.folds[i][0]
        if rows is None or rows >= len(train):
            return train
        # A fixed random subset, the same for every trial at this rung.
        picked = np.random.default_rng(self.seed).permutation(len(train))[:rows]
        return train[np.sort(picked)]

    def get(self, kind: str, i: int, rows: int | None) -> tuple[Any, Any, np.ndarray]:
        train = self.train_rows(i, rows)
        hit = self.store.get((kind, i, rows))
        if hit is not None:
            return hit[0], hit[1], train
        valid = self.folds[i][1]
        pre = build_preprocessor(self.active_types, kind, self.task)
        Xtr = pre.fit_transform(self.X.iloc[train], self.y[train])
        Xva = pre.transform(self.X.iloc[valid])
        if kind not in self.enabled:
            size = (Xtr.nbytes + Xva.nbytes) * len(self.folds) * 2
            self.enabled[kind] = size <= FOLD_CACHE_BYTES
        if self.enabled[kind]:
            self.store[(kind, i, rows)] = (Xtr, Xva)
        return Xtr, Xva, train


class TrialData:
    """The prepared rows and folds of one search, and how to score a configuration
    on them."""

    def __init__(self, prep: Prepared, learners: Mapping[str, Learner], seed: int):
        self.prep = prep
        self.learners = dict(learners)
        self.task = prep.task
        self.metric = prep.metric
        self.classes = prep.classes
        self.y = prep.y
        # Class index of every row, for the temperature fit (log loss only).
        self.codes = (np.searchsorted(np.asarray(prep.classes, dtype=object), prep.y)
                      if prep.task == CLASSIFICATION else None)
        self.folds = prep.folds
        self.k = len(prep.folds)
        fold_rows = min(len(train) for train, _ in prep.folds)
        self.fold_rows = fold_rows
        self.ctx = LearnerContext(task=prep.task, n_rows=fold_rows, n_classes=len(prep.classes),
                                  min_class_count=prep.min_class_count, seed=seed,
                                  n_jobs=cores(fold_rows, prep.X.shape[1]))
        self.rungs = rungs_for(fold_rows, self.k, prep.X.shape[1])
        self.cache = _FoldCache(prep.X, prep.y, prep.folds, prep.active_types, prep.task, seed)

    def row_fraction(self, rung: int) -> float:
        rows = self.rungs[rung].rows
        return 1.0 if rows is None else rows / self.fold_rows

    def oof_shape(self) -> tuple[int, ...]:
        n = len(self.y)
        return (n, len(self.classes)) if self.task == CLASSIFICATION else (n,)

    def predict(self, model, X) -> np.ndarray:
        """Probabilities in `classes` order (classification), else predictions."""
        if self.task == CLASSIFICATION:
            return align_proba(np.asarray(model.predict_proba(X), dtype=np.float64),
                               model.classes_, self.classes)
        return np.asarray(model.predict(X), dtype=np.float64).reshape(-1)

    @cached_property
    def fold_scorers(self) -> list[Callable[[np.ndarray], float]]:
        """The metric on each fold's validation rows, as a function of predictions."""
        return [self._scorer(self.y[valid]) for _, valid in self.folds]

    @cached_property
    def scorer(self) -> Callable[[np.ndarray], float]:
        """The metric on all rows (out-of-fold predictions), as a function of predictions."""
        return self._scorer(self.y)

    @property
    def calibrates(self) -> bool:
        return self.task == CLASSIFICATION and self.metric == "log_loss"

    def _calibrate(self, outcome: TrialOutcome,
                   predicted: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Fits the temperature on the completed folds' (validation rows, probabilities)
        and rescores them with it, in place."""
        rows = np.concatenate([valid for valid, _ in predicted])
        temperature = fit_temperature(np.concatenate([p for _, p in predicted]),
                                      self.codes[rows])
        if temperature == 1.0:
            return
        outcome.temperature = temperature
        for i, (valid, proba) in enumerate(predicted):
            predicted[i] = (valid, scale(proba, temperature))
            outcome.scores[i] = self.fold_scorers[i](predicted[i][1])

    def _scorer(self, y) -> Callable[[np.ndarray], float]:
        return fixed_target_scorer(self.metric, y,
                                   self.classes if self.task == CLASSIFICATION else ())

    def evaluate(self, spec: TrialSpec, should_stop: Callable[[], bool] | None = None,
                 clock: Clock = time.monotonic) -> TrialOutcome:
        """Runs the spec's folds. Stops between folds when `should_stop()` says so or
        when the remaining folds would overrun `spec.max_seconds` (a trial that must
        finish keeps the folds it has instead of failing)."""
        learner = self.learners.get(spec.family)
        outcome = TrialOutcome(spec.key, spec.rung, spec.family, dict(spec.params), [], 0.0)
        if learner is None:
            outcome.error = f"unknown model family {spec.family!r}"
            return outcome
        rung = self.rungs[spec.rung]
        predicted: list[tuple[np.ndarray, np.ndarray]] = []  # (validation rows, predictions)
        try:
            template = learner.build(spec.params, self.ctx)
        except Exception as exc:  # noqa: BLE001 - a bad configuration is a failed trial
            outcome.error = error_text(exc)
            return outcome
        for i in range(rung.folds):
            done = len(outcome.scores)
            if i > 0:
                if should_stop is not None and should_stop():
                    outcome.error = "stopped: the search was cancelled"
                    break
                expected = outcome.fit_seconds / done * (rung.folds - done)
                if outcome.fit_seconds + expected > spec.max_seconds:
                    if not spec.must_finish:
                        outcome.error = ("stopped: the remaining folds would overrun the "
                                         "time budget")
                    break
            started = clock()
            try:
                Xtr, Xva, train = self.cache.get(learner.preprocessing, i, rung.rows)
                if self.cache.caching(learner.preprocessing):
                    started = clock()  # preprocessing is shared, not this trial's cost
                valid = self.folds[i][1]
                model = clone(template)
                model.fit(Xtr, self.y[train])
                predictions = self.predict(model, Xva)
                score = self.fold_scorers[i](predictions)
                predicted.append((valid, predictions))
            except Exception as exc:  # noqa: BLE001
                outcome.fit_seconds += clock() - started
                outcome.error = error_text(exc)
                break
            outcome.fit_seconds += clock() - started
            outcome.scores.append(score)
        if outcome.error is None and predicted and self.calibrates:
            started = clock()
            self._calibrate(outcome, predicted)
            outcome.fit_seconds += clock() - started
        if (spec.keep_oof and rung.rows is None and outcome.error is None
                and len(outcome.scores) == self.k):
            oof = np.zeros(self.oof_shape())
            for valid, predictions in predicted:
                oof[valid] = predictions
            if np.all(np.isfinite(oof)):
                outcome.oof = oof
        if outcome.error is None and not any(math.isfinite(s) for s in outcome.scores):
            outcome.error = (f"the metric {self.metric} is undefined on every fold"
                             if outcome.scores else "stopped before the first fold")
        return outcome


class TrialExecutor(Protocol):
    """Runs trial specs somewhere and hands back their outcomes."""

    capacity: int  # specs it runs at once; the coordinator keeps at most this many out

    def submit(self, spec: TrialSpec) -> None: ...

    def collect(self, timeout_seconds: float) -> list[TrialOutcome]:
        """Outcomes finished since the last call; waits up to `timeout_seconds` for one."""
        ...

    def close(self) -> None: ...


@dataclass
class InlineExecutor:
    """Runs each spec in the calling thread when its outcome is collected."""

    data: TrialData
    should_stop: Callable[[], bool] | None = None
    clock: Clock = time.monotonic
    capacity: int = 1
    pending: list[TrialSpec] = field(default_factory=list)

    def submit(self, spec: TrialSpec) -> None:
        self.pending.append(spec)

    def collect(self, timeout_seconds: float) -> list[TrialOutcome]:
        pending, self.pending = self.pending, []
        return [self.data.evaluate(spec, self.should_stop, self.clock) for spec in pending]

    def close(self) -> None:
        self.pending.clear()
