"""The AutoML search: validate the request, split off a holdout, cross-validate a
portfolio of default configurations and then Optuna (TPE) suggestions within the
time budget, and refit the best configuration of the best families.

Class labels: the target is turned into strings (`columns.to_label`: 1.0 -> "1",
True -> "True") before anything is fit, so every fitted classifier's `classes_`
are strings, sorted, and `SearchResult.classes` lists them in `predict_proba`
column order.

Time: everything is measured with one monotonic clock (injectable for tests). A
trial is started only when the time left for searching covers its expected cost
(estimated from the same family's earlier trials, or from other families scaled by
their relative cost); between folds a trial is abandoned when its remaining folds
would overrun. Time for the refits is reserved from the estimated fit times. The
first trial always runs to the end (possibly on fewer folds) so there is a model.

Ensemble: the out-of-fold predictions of the best complete trials are kept (at
most ENSEMBLE_CANDIDATES of them, within OOF_MEMORY_BYTES). After the refits, when
time is left, greedy ensemble selection (`ensemble.greedy_selection`) blends
them; members not refit yet are refit only when their estimated refit time fits,
otherwise the candidates are restricted to the models already refit. The
ensemble is offered (first in `SearchResult.models`, family "ensemble",
trial_number -1) only when its cross-validated score beats the best single trial.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from nbml_server.errors import InvalidArgument

from .columns import coerce_numeric, labels_of, resolve_column_types
from .deadline import Clock, Deadline
from .ensemble import ENSEMBLE_FAMILY, WeightedEnsemble, greedy_selection
from .learners import LEARNERS, N_JOBS, Learner, LearnerContext
from .preprocessing import build_preprocessor
from .tasks import (CLASSIFICATION, TARGET_FIELD, align_proba, better,
                    classification_score, greater_is_better, regression_score,
                    resolve_metric, resolve_task, sort_key)
from .transformers import SchemaCoercer

log = logging.getLogger(__name__)

BUDGET_FIELD = "training_job.budget_seconds"
DATASET_FIELD = "training_job.dataset"
MAX_BUDGET_SECONDS = 86_400
MIN_ROWS = 10
LARGE_DATA_ROWS = 20_000  # above this, 3 folds
PARALLEL_ROWS = 5_000  # from this many rows, models may use 2 cores
MAX_REFIT_MODELS = 5
# Refits start only while they are expected to end before budget * 1.05 + 1 s.
REFIT_SLACK_FRACTION = 0.05
REFIT_SLACK_SECONDS = 1.0
MAX_CONSECUTIVE_SKIPS = 25
MAX_CONSECUTIVE_FAILURES = 20  # every configuration fails: the data is the problem
FOLD_CACHE_BYTES = 256 * 2**20
ENSEMBLE_CANDIDATES = 30  # trials whose out-of-fold predictions are kept
OOF_MEMORY_BYTES = 200 * 2**20  # bound on the kept out-of-fold predictions

STAGE_SEARCHING = "searching"
STAGE_REFITTING = "refitting"
STAGE_DONE = "done"

STOP_DEADLINE = "deadline"
STOP_CANCELLED = "cancelled"
STOP_MAX_TRIALS = "max_trials"
STOP_FAILING = "failing"


@dataclass
class SearchRequest:
    frame: pd.DataFrame
    target: str
    task: str = "auto"
    metric: str | None = None
    budget_seconds: float = 60.0
    column_types: dict[str, str] | None = None
    seed: int = 0
    cv_folds: int = 5
    holdout_fraction: float = 0.2
    # Restrict the search to these families (registry names); None: all that fit.
    families: Sequence[str] | None = None
    # Stop after this many trials (mostly for tests); None: until the budget is spent.
    max_trials: int | None = None
    # Offer a greedy ensemble of the best trials when it beats the best single one.
    ensemble: bool = True


@dataclass(frozen=True)
class TrialResult:
    number: int  # position in the order trials finished, from 0
    family: str
    params: dict[str, Any]
    cv_score: float | None  # mean over the folds, in the metric's natural units
    cv_score_std: float | None
    fit_seconds: float  # fitting and scoring, summed over the folds
    error: str | None = None
    folds: int = 0  # folds completed


@dataclass
class FittedModel:
    family: str  # "ensemble" for the WeightedEnsemble
    # ensemble: {"members": [{"family", "trial_number", "weight"}, ...]}
    params: dict[str, Any]
    cv_score: float
    cv_score_std: float | None
    pipeline: Pipeline | WeightedEnsemble
    trial_number: int  # -1 for the ensemble


@dataclass
class SearchResult:
    task: str
    metric: str
    greater_is_better: bool
    classes: list[str]  # classification: predict_proba column order; else []
    feature_columns: list[str]  # input columns, in training order
    column_types: dict[str, str]
    trials: list[TrialResult]
    # Best first (the ensemble first when offered); empty when no trial succeeded.
    models: list[FittedModel]
    holdout_frame: pd.DataFrame  # holdout rows as given, target column included
    train_rows: int  # rows the models were refit on
    stopped_early: bool  # should_stop() asked the search to stop
    # "deadline", "cancelled", "max_trials" or "failing" (too many failures in a row)
    stop_reason: str = STOP_DEADLINE
    ignored_columns: list[str] = field(default_factory=list)  # missing in every row
    cv_folds: int = 0
    elapsed_seconds: float = 0.0

    @property
    def best(self) -> FittedModel | None:
        return self.models[0] if self.models else None


def validate_budget(budget_seconds: float) -> float:
    try:
        budget = float(budget_seconds)
    except (TypeError, ValueError):
        budget = math.nan
    if not (0 < budget <= MAX_BUDGET_SECONDS):
        raise InvalidArgument.of(BUDGET_FIELD, f"must be more than 0 and at most "
                                 f"{MAX_BUDGET_SECONDS} seconds, got {budget_seconds}",
                                 reason="INVALID_BUDGET")
    return budget


# ---------------------------------------------------------------------- preparation

@dataclass
class _Prepared:
    task: str
    metric: str
    classes: list[str]
    feature_types: dict[str, str]
    active_types: dict[str, str]
    raw_X: pd.DataFrame  # search rows, raw
    X: pd.DataFrame  # search rows, coerced to the schema
    y: np.ndarray  # strings (classification) or floats
    holdout: pd.DataFrame
    folds: list[tuple[np.ndarray, np.ndarray]]
    min_class_count: int


def _preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in list(names)[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _prepare(request: SearchRequest) -> _Prepared:
    frame = request.frame
    if not all(isinstance(c, str) for c in frame.columns):
        frame = frame.rename(columns=str)
    duplicated = sorted(set(frame.columns[frame.columns.duplicated()]))
    if duplicated:
        raise InvalidArgument.of(DATASET_FIELD, f"column names must be unique; repeated: "
                                 f"{_preview(duplicated)}", reason="DUPLICATE_COLUMNS")
    if request.target not in frame.columns:
        raise InvalidArgument.of(
            TARGET_FIELD, f"column '{request.target}' is not in the data set; available: "
            f"{_preview(list(frame.columns))}", reason="UNKNOWN_TARGET_COLUMN")
    features = [c for c in frame.columns if c != request.target]
    if not features:
        raise InvalidArgument.of(TARGET_FIELD, "the data set has no column besides the target "
                                 "to learn from", reason="NO_FEATURE_COLUMNS")
    if not 0 <= request.holdout_fraction < 0.9:
        raise ValueError(f"holdout_fraction must be in [0, 0.9), got {request.holdout_fraction}")
    if request.cv_folds < 2:
        raise ValueError(f"cv_folds must be at least 2, got {request.cv_folds}")

    y_raw = frame[request.target]
    task = resolve_task(y_raw, request.task)
    data = frame[y_raw.notna()]
    if task == CLASSIFICATION:
        y_all = labels_of(data[request.target])
        classes = sorted(set(y_all))
    else:
        y_all = coerce_numeric(data[request.target]).to_numpy()  # inf becomes NaN
        finite = np.isfinite(y_all)
        data, y_all = data[finite], y_all[finite]
        classes = []
    metric = resolve_metric(task, len(classes), request.metric)
    n = len(data)
    if n < MIN_ROWS:
        raise InvalidArgument.of(DATASET_FIELD, f"only {n} rows have a value in target column "
                                 f"'{request.target}'; at least {MIN_ROWS} are needed",
                                 reason="TOO_FEW_ROWS")

    # Holdout split, stratified by class or by quantile bin of a regression target.
    positions = np.arange(n)
    n_hold = int(round(request.holdout_fraction * n))
    if request.holdout_fraction > 0:
        n_hold = min(max(1, n_hold), n - MIN_ROWS // 2)
    if n_hold > 0:
        stratify = None
        if task == CLASSIFICATION:
            if n_hold >= len(classes) and n - n_hold >= len(classes):
                stratify = y_all
        else:
            stratify = _quantile_bins(y_all, min(10, n_hold, n - n_hold))
        search_pos, hold_pos = train_test_split(positions, test_size=n_hold, stratify=stratify,
                                                random_state=request.seed)
        search_pos, hold_pos = np.sort(search_pos), np.sort(hold_pos)
    else:
        search_pos, hold_pos = positions, positions[:0]
    holdout = data.iloc[hold_pos]
    raw_X = data.iloc[search_pos][features]
    y = y_all[search_pos]

    feature_types = resolve_column_types(raw_X, request.column_types, features)
    X = SchemaCoercer(feature_types).fit(raw_X).transform(raw_X)
    active_types = {c: t for c, t in feature_types.items() if X[c].notna().any()}
    if not active_types:
        raise InvalidArgument.of(DATASET_FIELD, "every feature column is empty in the training "
                                 "rows", reason="NO_USABLE_FEATURES")

    n_search = len(search_pos)
    k = min(request.cv_folds, 3) if n_search >= LARGE_DATA_ROWS else request.cv_folds
    k = min(k, n_search // 2)
    min_class_count = 0
    if task == CLASSIFICATION:
        counts = pd.Series(y).value_counts()
        min_class_count = int(counts.min())
        k = max(2, min(k, min_class_count))
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=request.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a class smaller than k
            folds = list(splitter.split(np.zeros(n_search), y))
    else:
        k = max(2, k)
        bins = _quantile_bins(y, min(10, n_search // k))
        if bins is None:
            folds = list(KFold(n_splits=k, shuffle=True, random_state=request.seed)
                         .split(np.zeros(n_search)))
        else:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=request.seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                folds = list(splitter.split(np.zeros(n_search), bins))
    return _Prepared(task, metric, classes, feature_types, active_types, raw_X, X, y, holdout,
                     folds, min_class_count)


def _quantile_bins(y: np.ndarray, n_bins: int) -> np.ndarray | None:
    """Quantile bin of each regression target value, to stratify splits on (holdout
    and folds then each span the range of the target; on small data this makes the
    holdout score much less of a lottery). None when there is no room for it."""
    if n_bins < 2:
        return None
    bins = pd.qcut(pd.Series(y).rank(method="first"), n_bins, labels=False)
    bins = np.asarray(bins, dtype=np.int64)
    if np.bincount(bins).min() < 2:
        return None
    return bins


class _FoldCache:
    """Preprocessed fold matrices per preprocessing kind, computed once when they fit
    in memory (preprocessing does not depend on the model's hyperparameters)."""

    def __init__(self, X: pd.DataFrame, folds, active_types: Mapping[str, str]):
        self.X = X
        self.folds = folds
        self.active_types = dict(active_types)
        self.store: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self.enabled: dict[str, bool] = {}

    def caching(self, kind: str) -> bool:
        return self.enabled.get(kind, True)

    def get(self, kind: str, i: int) -> tuple[Any, Any]:
        hit = self.store.get((kind, i))
        if hit is not None:
            return hit
        train, valid = self.folds[i]
        pre = build_preprocessor(self.active_types, kind)
        Xtr = pre.fit_transform(self.X.iloc[train])
        Xva = pre.transform(self.X.iloc[valid])
        if kind not in self.enabled:
            size = (Xtr.nbytes + Xva.nbytes) * len(self.folds)
            self.enabled[kind] = size <= FOLD_CACHE_BYTES
        if self.enabled[kind]:
            self.store[(kind, i)] = (Xtr, Xva)
        return Xtr, Xva


class _OptunaParams:
    """`learners.ParamSampler` over an Optuna trial, names prefixed by family."""

    def __init__(self, trial: optuna.Trial, prefix: str):
        self.trial = trial
        self.prefix = prefix

    def float(self, name, low, high, *, log=False):
        return float(self.trial.suggest_float(self.prefix + name, low, high, log=log))

    def int(self, name, low, high, *, log=False):
        return int(self.trial.suggest_int(self.prefix + name, low, high, log=log))

    def categorical(self, name, choices):
        return self.trial.suggest_categorical(self.prefix + name, list(choices))


def _flat_params(family: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"family": family, **{f"{family}.{k}": v for k, v in params.items()}}


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


# --------------------------------------------------------------------------- search

class _Search:
    def __init__(self, request: SearchRequest, prep: _Prepared, learners: list[Learner],
                 deadline: Deadline, clock: Clock, on_trial, on_progress, should_stop):
        self.request = request
        self.prep = prep
        self.learners = {l.name: l for l in learners}
        self.deadline = deadline
        self.clock = clock
        self.on_trial = on_trial
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.metric = prep.metric
        self.k = len(prep.folds)
        fold_rows = min(len(train) for train, _ in prep.folds)
        self.ctx = LearnerContext(task=prep.task, n_rows=fold_rows, n_classes=len(prep.classes),
                                  min_class_count=prep.min_class_count, seed=request.seed,
                                  n_jobs=_cores(fold_rows))
        self.cache = _FoldCache(prep.X, prep.folds, prep.active_types)
        self.trials: list[TrialResult] = []
        self.unit_fold_seconds: dict[str, list[float]] = {}
        self.best_by_family: dict[str, TrialResult] = {}
        self.cancelled = False
        self.stop_reason = STOP_DEADLINE
        # Out-of-fold predictions (classification: probabilities in prep.classes
        # order) of the best complete trials, by trial number.
        per_trial = len(prep.y) * max(1, len(prep.classes)) * 8
        capacity = min(ENSEMBLE_CANDIDATES, OOF_MEMORY_BYTES // per_trial)
        self.oof_capacity = capacity if request.ensemble and capacity >= 2 else 0
        self.oof: dict[int, np.ndarray] = {}

    # -- bookkeeping

    def best_score(self) -> float | None:
        ranked = self.ranked_families()
        return ranked[0].cv_score if ranked else None

    def ranked_families(self) -> list[TrialResult]:
        return sorted(self.best_by_family.values(),
                      key=lambda t: (sort_key(t.cv_score, self.metric), t.number))

    def progress(self, stage: str) -> None:
        if self.on_progress is not None:
            self.on_progress(len(self.trials), self.best_score(), stage)

    def stop_requested(self) -> bool:
        if not self.cancelled and self.should_stop is not None and self.should_stop():
            self.cancelled = True
        return self.cancelled

    # -- time

    def refit_estimate(self, trial: TrialResult) -> float:
        per_fold = trial.fit_seconds / max(1, trial.folds)
        return per_fold * self.k / max(1, self.k - 1) * 1.5

    def reserve(self) -> float:
        return sum(self.refit_estimate(t) for t in self.ranked_families()[:MAX_REFIT_MODELS])

    def search_time_left(self) -> float:
        return self.deadline.remaining() - self.reserve()

    def estimate(self, learner: Learner, params: Mapping[str, Any]) -> float:
        """Expected seconds for the cross-validation of this configuration."""
        factor = learner.cost_factor(params)
        own = self.unit_fold_seconds.get(learner.name)
        if own:
            per_fold = statistics.median(own) * factor
        elif self.unit_fold_seconds:
            base = min(statistics.median(v) / self.learners[name].relative_cost
                       for name, v in self.unit_fold_seconds.items() if name in self.learners)
            per_fold = base * learner.relative_cost * factor
        else:
            return 0.0
        return per_fold * self.k

    # -- one trial

    def predict(self, model, X) -> np.ndarray:
        """Probabilities in prep.classes order (classification), else predictions."""
        if self.prep.task == CLASSIFICATION:
            return align_proba(np.asarray(model.predict_proba(X), dtype=np.float64),
                               model.classes_, self.prep.classes)
        return np.asarray(model.predict(X), dtype=np.float64).reshape(-1)

    def score_predictions(self, y, predictions: np.ndarray) -> float:
        if self.prep.task == CLASSIFICATION:
            return classification_score(self.metric, y, predictions, self.prep.classes)
        return regression_score(self.metric, y, predictions)

    def score(self, model, X, y) -> float:
        return self.score_predictions(y, self.predict(model, X))

    def cross_validate(self, learner: Learner, params: dict
                       ) -> tuple[TrialResult, np.ndarray | None]:
        """The trial, and its out-of-fold predictions when they are being kept."""
        scores: list[float] = []
        oof = None
        if self.oof_capacity:
            n = len(self.prep.y)
            oof = np.zeros((n, len(self.prep.classes)) if self.prep.task == CLASSIFICATION
                           else n, dtype=np.float64)
        spent = 0.0
        error = None
        must_finish = not self.best_by_family
        try:
            template = learner.build(params, self.ctx)
        except Exception as exc:  # noqa: BLE001 - a bad configuration is a failed trial
            template, error = None, _error_text(exc)
        y = self.prep.y
        for i, (train, valid) in enumerate(self.prep.folds if template is not None else []):
            if i > 0:
                if self.stop_requested():
                    error = "stopped: the search was cancelled"
                    break
                if spent / i * (self.k - i) > self.search_time_left():
                    if not must_finish:
                        error = "stopped: the remaining folds would overrun the time budget"
                    break  # the first trial keeps the folds it has
            started = self.clock()
            try:
                Xtr, Xva = self.cache.get(learner.preprocessing, i)
                if self.cache.caching(learner.preprocessing):
                    started = self.clock()  # preprocessing is shared, not this trial's cost
                model = clone(template)
                model.fit(Xtr, y[train])
                predictions = self.predict(model, Xva)
                fold_score = self.score_predictions(y[valid], predictions)
                if oof is not None:
                    oof[valid] = predictions
            except Exception as exc:  # noqa: BLE001
                spent += self.clock() - started
                error = _error_text(exc)
                break
            spent += self.clock() - started
            scores.append(fold_score)

        finite = [s for s in scores if math.isfinite(s)]
        cv_score = cv_std = None
        if error is None:
            if finite:
                cv_score = float(np.mean(finite))
                cv_std = float(np.std(finite)) if len(finite) > 1 else 0.0
            elif scores:
                error = f"the metric {self.metric} is undefined on every fold"
            else:
                error = "stopped before the first fold"
        if scores:
            unit = spent / len(scores) / max(1e-9, learner.cost_factor(params))
            self.unit_fold_seconds.setdefault(learner.name, []).append(unit)
        trial = TrialResult(number=len(self.trials), family=learner.name, params=dict(params),
                            cv_score=cv_score, cv_score_std=cv_std, fit_seconds=spent,
                            error=error, folds=len(scores))
        return trial, oof

    def keep_oof(self, trial: TrialResult, oof: np.ndarray | None) -> None:
        """Keeps the out-of-fold predictions of a complete trial among the best
        `oof_capacity` ones."""
        if (oof is None or trial.cv_score is None or trial.folds < self.k
                or not np.all(np.isfinite(oof))):
            return
        self.oof[trial.number] = oof
        if len(self.oof) > self.oof_capacity:
            scores = {t.number: t.cv_score for t in self.trials if t.number in self.oof}
            scores[trial.number] = trial.cv_score
            worst = max(self.oof, key=lambda n: (sort_key(scores[n], self.metric), n))
            del self.oof[worst]

    def record(self, trial: TrialResult) -> None:
        self.trials.append(trial)
        if trial.cv_score is not None:
            current = self.best_by_family.get(trial.family)
            if current is None or better(trial.cv_score, current.cv_score, self.metric):
                self.best_by_family[trial.family] = trial
        if self.on_trial is not None:
            self.on_trial(trial)
        self.progress(STAGE_SEARCHING)

    # -- the loop

    def portfolio(self) -> list[tuple[str, dict]]:
        """Default configurations, cheapest family first, first defaults of every
        family before second ones."""
        per_family = [(l.name, l.defaults(self.ctx))
                      for l in sorted(self.learners.values(), key=lambda l: l.relative_cost)]
        out = []
        for rank in range(max(len(d) for _, d in per_family)):
            out += [(name, d[rank]) for name, d in per_family if rank < len(d)]
        return out

    def run(self) -> None:
        gib = greater_is_better(self.metric)
        sampler = optuna.samplers.TPESampler(seed=self.request.seed, multivariate=True, group=True)
        study = optuna.create_study(direction="maximize" if gib else "minimize", sampler=sampler)
        for name, params in self.portfolio():
            study.enqueue_trial(_flat_params(name, params), skip_if_exists=True)
        families = list(self.learners)
        skips = 0
        self.progress(STAGE_SEARCHING)
        while True:
            if self.stop_requested():
                self.stop_reason = STOP_CANCELLED
                return
            if self.request.max_trials is not None and len(self.trials) >= self.request.max_trials:
                self.stop_reason = STOP_MAX_TRIALS
                return
            started_any = bool(self.trials)
            if started_any and self.search_time_left() <= 0:
                return
            if skips >= MAX_CONSECUTIVE_SKIPS:
                return
            recent = self.trials[-MAX_CONSECUTIVE_FAILURES:]
            if len(recent) == MAX_CONSECUTIVE_FAILURES and all(t.error for t in recent):
                self.stop_reason = STOP_FAILING
                return
            ask = study.ask()
            family = ask.suggest_categorical("family", families)
            learner = self.learners[family]
            try:
                params = learner.space(_OptunaParams(ask, f"{family}."), self.ctx)
            except Exception as exc:  # noqa: BLE001 - a broken space fails its trial
                study.tell(ask, state=optuna.trial.TrialState.FAIL)
                self.record(TrialResult(len(self.trials), family, {}, None, None, 0.0,
                                        _error_text(exc)))
                continue
            if started_any and self.estimate(learner, params) > self.search_time_left():
                study.tell(ask, state=optuna.trial.TrialState.FAIL)
                skips += 1
                continue
            skips = 0
            trial, oof = self.cross_validate(learner, params)
            if trial.cv_score is not None:
                study.tell(ask, trial.cv_score)
            else:
                study.tell(ask, state=optuna.trial.TrialState.FAIL)
            self.keep_oof(trial, oof)
            self.record(trial)

    # -- refits

    def hard_limit(self) -> float:
        return self.deadline.seconds * (1 + REFIT_SLACK_FRACTION) + REFIT_SLACK_SECONDS

    def refit_trial(self, trial: TrialResult) -> Pipeline | None:
        """The trial's configuration fit on all search rows; None when that fails."""
        prep = self.prep
        try:
            pipeline = build_pipeline(self.learners[trial.family], trial.params, self.ctx,
                                      prep.feature_types, prep.active_types)
            pipeline.fit(prep.raw_X, prep.y)
        except Exception:  # noqa: BLE001 - keep the models that did refit
            log.warning("refit of trial %d (%s) failed", trial.number, trial.family,
                        exc_info=True)
            return None
        return pipeline

    def refit(self) -> list[FittedModel]:
        hard_limit = self.hard_limit()
        models: list[FittedModel] = []
        for trial in self.ranked_families()[:MAX_REFIT_MODELS]:
            if models and self.deadline.elapsed() + self.refit_estimate(trial) > hard_limit:
                continue
            pipeline = self.refit_trial(trial)
            if pipeline is not None:
                models.append(FittedModel(trial.family, dict(trial.params), trial.cv_score,
                                          trial.cv_score_std, pipeline, trial.number))
        return models

    # -- ensemble

    def select(self, candidates: list[int], out_of_time) -> np.ndarray:
        """Greedy selection counts over `candidates` (trial numbers, best first),
        on the metric of the pooled out-of-fold predictions."""
        y = self.prep.y
        return greedy_selection([self.oof[n] for n in candidates],
                                lambda blend: self.score_predictions(y, blend),
                                greater_is_better(self.metric), start=0,
                                out_of_time=out_of_time)[0]

    def fold_scores(self, blend: np.ndarray) -> tuple[float | None, float]:
        """Mean and std over the folds, as a trial's cv_score is computed."""
        y = self.prep.y
        scores = [self.score_predictions(y[valid], blend[valid]) for _, valid in self.prep.folds]
        finite = [s for s in scores if math.isfinite(s)]
        if not finite:
            return None, 0.0
        return float(np.mean(finite)), float(np.std(finite)) if len(finite) > 1 else 0.0

    def ensemble(self, models: list[FittedModel]) -> FittedModel | None:
        """The greedy ensemble of the kept trials, when time allows and it beats
        the best single trial's cv_score; else None."""
        best_single = self.best_score()
        if self.cancelled or len(self.oof) < 2 or not models or best_single is None:
            return None
        hard_limit = self.hard_limit()
        if self.deadline.elapsed() >= hard_limit:
            return None

        def out_of_time() -> bool:
            return self.deadline.elapsed() > hard_limit

        trials = {t.number: t for t in self.trials}
        candidates = sorted(self.oof, key=lambda n: (sort_key(trials[n].cv_score, self.metric), n))
        fitted = {m.trial_number: m.pipeline for m in models}
        counts = self.select(candidates, out_of_time)
        missing = [n for n, c in zip(candidates, counts) if c and n not in fitted]
        if missing:
            cost = sum(self.refit_estimate(trials[n]) for n in missing)
            if self.deadline.elapsed() + cost <= hard_limit:
                for n in missing:
                    pipeline = self.refit_trial(trials[n])
                    if pipeline is None:
                        break
                    fitted[n] = pipeline
            if any(c and n not in fitted for n, c in zip(candidates, counts)):
                candidates = [n for n in candidates if n in fitted]
                if len(candidates) < 2 or out_of_time():
                    return None
                counts = self.select(candidates, out_of_time)
        chosen = [(n, int(c)) for n, c in zip(candidates, counts) if c]
        if len(chosen) < 2:
            return None  # one member: that trial's own model
        total = sum(c for _, c in chosen)
        weights = [c / total for _, c in chosen]
        blend = sum(w * self.oof[n] for (n, _), w in zip(chosen, weights))
        cv_score, cv_std = self.fold_scores(blend)
        if cv_score is None or not better(cv_score, best_single, self.metric):
            return None
        order = sorted(range(len(chosen)), key=lambda i: (-weights[i], chosen[i][0]))
        members = [{"family": trials[chosen[i][0]].family, "trial_number": int(chosen[i][0]),
                    "weight": round(float(weights[i]), 6)} for i in order]
        pipeline = WeightedEnsemble([fitted[chosen[i][0]] for i in order],
                                    [float(weights[i]) for i in order], task=self.prep.task)
        return FittedModel(ENSEMBLE_FAMILY, {"members": members}, cv_score, cv_std, pipeline, -1)


def _cores(n_rows: int) -> int:
    # On small data, threads cost more than they bring (and OpenMP spinning on a
    # busy 2-core machine can make a fit ten times slower).
    return N_JOBS if n_rows >= PARALLEL_ROWS else 1


def build_pipeline(learner: Learner, params: Mapping[str, Any], ctx: LearnerContext,
                   feature_types: Mapping[str, str], active_types: Mapping[str, str]) -> Pipeline:
    """The deployable pipeline: schema coercion, preprocessing, model (unfitted)."""
    return Pipeline([
        ("coerce", SchemaCoercer(dict(feature_types))),
        ("preprocess", build_preprocessor(dict(active_types), learner.preprocessing)),
        ("model", learner.build(params, ctx)),
    ])


def _select_learners(request: SearchRequest, task: str, n_rows: int,
                     registry: Mapping[str, Learner]) -> list[Learner]:
    if request.families is not None:
        unknown = [f for f in request.families if f not in registry]
        if unknown:
            raise ValueError(f"unknown model families: {', '.join(unknown)}; known: "
                             f"{', '.join(registry)}")
    chosen = [l for l in registry.values()
              if l.supports(task, n_rows) and (request.families is None or l.name in request.families)]
    if not chosen:
        raise ValueError(f"no model family can handle {task} on {n_rows} rows "
                         f"(families: {request.families})")
    return chosen


def run_search(request: SearchRequest, *,
               on_trial: Callable[[TrialResult], None] | None = None,
               on_progress: Callable[[int, float | None, str], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               clock: Clock | None = None,
               learners: Mapping[str, Learner] | None = None) -> SearchResult:
    """Runs the AutoML search described by `request` within its time budget.

    on_trial(trial) is called as each trial finishes; on_progress(trials_completed,
    best_score, stage) at stage changes and after each trial; should_stop() is
    polled between folds and trials (True: stop searching, refit what was found).
    Exceptions from the callbacks propagate. Raises InvalidArgument for a bad
    request. `clock` (default time.monotonic) and `learners` (default
    `learners.LEARNERS`) are for tests."""
    clock = clock or time.monotonic
    deadline = Deadline(validate_budget(request.budget_seconds), clock=clock)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        for category in (ConvergenceWarning, UserWarning, FutureWarning, RuntimeWarning,
                         optuna.exceptions.ExperimentalWarning):
            warnings.simplefilter("ignore", category)
        prep = _prepare(request)
        chosen = _select_learners(request, prep.task, len(prep.y), learners or LEARNERS)
        search = _Search(request, prep, chosen, deadline, clock, on_trial, on_progress,
                         should_stop)
        # BLAS and OpenMP (gradient boosting) thread pools follow the same rule as
        # n_jobs. threadpoolctl (a scikit-learn dependency) sets them process-wide.
        with threadpool_limits(limits=search.ctx.n_jobs):
            search.run()
            search.progress(STAGE_REFITTING)
            models = search.refit()
            try:
                ensemble = search.ensemble(models)
            except Exception:  # noqa: BLE001 - the single models stand on their own
                log.warning("ensemble selection failed", exc_info=True)
                ensemble = None
            if ensemble is not None:
                models.insert(0, ensemble)
            search.oof.clear()
    search.progress(STAGE_DONE)
    return SearchResult(
        task=prep.task, metric=prep.metric, greater_is_better=greater_is_better(prep.metric),
        classes=list(prep.classes), feature_columns=list(prep.feature_types),
        column_types=dict(prep.feature_types), trials=list(search.trials), models=models,
        holdout_frame=prep.holdout, train_rows=len(prep.y), stopped_early=search.cancelled,
        stop_reason=search.stop_reason,
        ignored_columns=[c for c in prep.feature_types if c not in prep.active_types],
        cv_folds=search.k, elapsed_seconds=deadline.elapsed())
