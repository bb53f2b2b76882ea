"""The AutoML search: validate the request, split off a holdout, cross-validate a
portfolio of default configurations and then Optuna (TPE) suggestions within the
time budget, and refit the best configuration of the best families.

Class labels: the target is turned into strings (`columns.to_label`: 1.0 -> "1",
True -> "True") before anything is fit, so every fitted classifier's `classes_`
are strings, sorted, and `SearchResult.classes` lists them in `predict_proba`
column order.

Trials: the search is the coordinator. It asks Optuna for configurations (ask/tell,
several in flight when the executor runs trials in parallel) and hands them to a
`trials.TrialExecutor`: in this thread by default, or child processes / other
workers (see `trials`). On large data, configurations climb rungs of growing
subsamples and Optuna's successive-halving pruner stops the weak ones early.

Time: everything is measured with one monotonic clock (injectable for tests). The
search ends at the budget. A trial is started only when the time left covers its
expected cost (estimated from the same family's earlier trials, or from other
families scaled by their relative cost, and by the rung's share of the rows);
between folds a trial is abandoned when its remaining folds would overrun. On
small data the first trial always runs to the end (possibly on fewer folds) so
there is a model; on large data, when no configuration reached the full rung in
time, the best one on a subsample stands in. Then the final refit, timed and reported on its own: the best model is
always refit; further ones, and the ensemble, only while they are expected to end
within REFIT_SHARE of the budget (+ REFIT_SLACK_SECONDS) after the search.

Ensemble: the out-of-fold predictions of the best complete trials are kept (at
most ENSEMBLE_CANDIDATES of them, within OOF_MEMORY_BYTES). After the refits, when
time is left, greedy ensemble selection (`ensemble.greedy_selection`) blends
them; members not refit yet are refit only when their estimated refit time fits,
otherwise the candidates are restricted to the models already refit. The
ensemble is offered (first in `SearchResult.models`, family "ensemble",
trial_number -1) only when its cross-validated score beats the best single trial.

Order: best cross-validated score first, except that the best simple model (ridge,
logistic regression, LDA, QDA) goes first when the winner's lead over it on the
out-of-fold rows is not clear (`simplicity`; its FittedModel.ranking_note says so).
Each simple family's best out-of-fold predictions are kept for that comparison even
when other trials crowd them out of the ensemble's candidates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from nbml_server.errors import FieldViolation, InvalidArgument

from .calibration import fit_temperature, scale
from .deadline import Clock, Deadline
from .ensemble import ENSEMBLE_FAMILY, WeightedEnsemble, greedy_selection
from .estimators import TemperatureScaled
from .learners import LEARNERS, Learner, LearnerContext
from .preparation import DATASET_FIELD, SearchRequest, prepare
from .preprocessing import build_preprocessor
from .simplicity import LEAD_IN_STANDARD_ERRORS, SIMPLE_FAMILIES, lead_in_standard_errors
from .tasks import better, greater_is_better, sort_key
from .transformers import SchemaCoercer
from .trials import (InlineExecutor, TrialData, TrialExecutor, TrialOutcome, TrialSpec,
                     error_text)

log = logging.getLogger(__name__)

__all__ = ["DATASET_FIELD", "SearchRequest"]  # re-exported: they used to live here

BUDGET_FIELD = "training_job.budget_seconds"
INITIAL_PARAMS_FIELD = "training_job.initial_params"
FAMILIES_FIELD = "training_job.families"
MAX_BUDGET_SECONDS = 86_400
MAX_REFIT_MODELS = 5
# Optional refits (and the ensemble) start only while they are expected to end
# within budget * REFIT_SHARE + REFIT_SLACK_SECONDS after the search.
REFIT_SHARE = 0.25
REFIT_SLACK_SECONDS = 1.0
MAX_CONSECUTIVE_SKIPS = 25
MAX_CONSECUTIVE_FAILURES = 20  # every configuration fails: the data is the problem
ENSEMBLE_CANDIDATES = 30  # trials whose out-of-fold predictions are kept
OOF_MEMORY_BYTES = 200 * 2**20  # bound on the kept out-of-fold predictions
# A trial given out is declared lost when no outcome came this long after its
# max_seconds (a worker died under it); the search goes on without it.
LOST_TRIAL_GRACE_SECONDS = 2.0
# The search waits for trials still out until budget * DRAIN_SHARE (the promise is
# budget + 10 %; the rest is for storing the models and the job record).
DRAIN_SHARE = 1.05
COLLECT_SECONDS = 0.2  # how long one wait for outcomes lasts, between checks

STAGE_SEARCHING = "searching"
STAGE_REFITTING = "refitting"
STAGE_DONE = "done"

STOP_DEADLINE = "deadline"
STOP_CANCELLED = "cancelled"
STOP_MAX_TRIALS = "max_trials"
STOP_FAILING = "failing"

ExecutorFactory = Callable[[TrialData, Callable[[], bool]], TrialExecutor]


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
    pruned: bool = False  # stopped by successive halving on a subsample (error says why)
    worker: str = ""  # who ran its last rung (TrialOutcome.worker); "" when lost
    temperature: float = 1.0  # log loss: the probabilities' scaling (TrialOutcome.temperature)


@dataclass
class FittedModel:
    family: str  # "ensemble" for the WeightedEnsemble
    # ensemble: {"members": [{"family", "trial_number", "weight"}, ...]}; a model whose
    # probabilities are temperature-scaled has its "temperature" here too
    params: dict[str, Any]
    cv_score: float
    cv_score_std: float | None
    pipeline: Pipeline | WeightedEnsemble
    trial_number: int  # -1 for the ensemble
    # Why the model ranks above one with a better cv_score; empty when it does not.
    ranking_note: str = ""


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
    elapsed_seconds: float = 0.0  # search and refit
    search_seconds: float = 0.0  # the search alone (the budget bounds this)
    refit_seconds: float = 0.0  # the final refits and the ensemble, after the search

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


@dataclass
class _InFlight:
    """A configuration given out to the executor, at its current rung."""
    ask: optuna.Trial
    spec: TrialSpec
    submitted: float  # clock time
    spent: float = 0.0  # fit seconds of its earlier rungs


# --------------------------------------------------------------------------- search

class _Search:
    def __init__(self, request: SearchRequest, data: TrialData, deadline: Deadline,
                 clock: Clock, on_trial, on_progress, should_stop):
        self.request = request
        self.data = data
        self.prep = data.prep
        self.learners = data.learners
        self.deadline = deadline
        self.clock = clock
        self.on_trial = on_trial
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.metric = data.metric
        self.k = data.k
        self.ctx = data.ctx
        # Checked before anything runs: a bad entry fails the request at once.
        self.initial = initial_configurations(request.initial_params, self.learners, self.ctx)
        self.top_rung = len(data.rungs) - 1
        self.trials: list[TrialResult] = []
        self.unit_fold_seconds: dict[str, list[float]] = {}
        # The fit seconds of the cheapest first rung run so far: with less time left,
        # asking Optuna for more (tens of milliseconds each) only eats into the budget.
        self.cheapest_start: float | None = None
        self.best_by_family: dict[str, TrialResult] = {}
        self.in_flight: dict[int, _InFlight] = {}
        # Pruned trials: trial number -> (rung, score on that rung's subsample).
        self.partial_scores: dict[int, tuple[int, float]] = {}
        self.closing = False  # the search has ended: no configuration climbs further
        self.cancelled = False
        self.stop_reason = STOP_DEADLINE
        self.search_seconds = 0.0
        self.refit_seconds = 0.0
        # Out-of-fold predictions (classification: probabilities in classes order) of
        # the best complete trials, by trial number.
        per_trial = len(data.y) * max(1, len(data.classes)) * 8
        capacity = min(ENSEMBLE_CANDIDATES, OOF_MEMORY_BYTES // per_trial)
        self.oof_capacity = capacity if request.ensemble and capacity >= 2 else 0
        self.oof: dict[int, np.ndarray] = {}
        # The best trial of each simple family, kept beside `oof` when crowded out of it
        # (`simple_first` compares the winner with it): family -> (trial number, oof).
        self.simple_oof: dict[str, tuple[int, np.ndarray]] = {}
        # Ensemble members refit that are not their family's best trial (see `refit`).
        self.member_pipelines: dict[int, Pipeline] = {}
        # (candidates, counts) of the greedy selection, once made (`ensemble_plan`).
        self.plan: tuple[list[int], np.ndarray] | None = None
        # The offered ensemble's out-of-fold predictions (scaled like its output).
        self.ensemble_oof: np.ndarray | None = None

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
        """Seconds to fit the trial's configuration on all search rows: from the
        family's measured cost per fold row (so a stand-in scored on a subsample is
        not taken for cheap), else from the trial's own folds."""
        per_fold = self.estimate(self.learners[trial.family], trial.params, self.top_rung) / self.k
        if per_fold <= 0:
            per_fold = trial.fit_seconds / max(1, trial.folds)
        return per_fold * self.k / max(1, self.k - 1) * 1.5

    def search_time_left(self) -> float:
        return self.deadline.remaining()

    def estimate(self, learner: Learner, params: Mapping[str, Any], rung: int) -> float:
        """Expected seconds for this configuration at this rung."""
        factor = learner.cost_factor(params) * self.data.row_fraction(rung)
        own = self.unit_fold_seconds.get(learner.name)
        if own:
            per_fold = statistics.median(own) * factor
        elif self.unit_fold_seconds:
            base = min(statistics.median(v) / self.learners[name].relative_cost
                       for name, v in self.unit_fold_seconds.items() if name in self.learners)
            per_fold = base * learner.relative_cost * factor
        else:
            return 0.0
        return per_fold * self.data.rungs[rung].folds

    def note_cost(self, outcome: TrialOutcome) -> None:
        if outcome.rung == 0 and outcome.error is None:
            self.cheapest_start = min(self.cheapest_start or math.inf, outcome.fit_seconds)
        if outcome.scores:
            learner = self.learners[outcome.family]
            unit = (outcome.fit_seconds / len(outcome.scores)
                    / max(1e-9, learner.cost_factor(outcome.params))
                    / self.data.row_fraction(outcome.rung))
            self.unit_fold_seconds.setdefault(learner.name, []).append(unit)

    # -- trials

    def keep_oof(self, trial: TrialResult, oof: np.ndarray | None) -> None:
        """Keeps the out-of-fold predictions of a complete trial among the best
        `oof_capacity` ones."""
        if oof is None or not self.oof_capacity or trial.cv_score is None or trial.folds < self.k:
            return
        if trial.family in SIMPLE_FAMILIES:
            kept = self.simple_oof.get(trial.family)
            if kept is None or better(trial.cv_score, self.trials[kept[0]].cv_score, self.metric):
                self.simple_oof[trial.family] = (trial.number, oof)
        self.oof[trial.number] = oof
        if len(self.oof) > self.oof_capacity:
            scores = {t.number: t.cv_score for t in self.trials if t.number in self.oof}
            scores[trial.number] = trial.cv_score
            worst = max(self.oof, key=lambda n: (sort_key(scores[n], self.metric), n))
            del self.oof[worst]

    def record(self, family: str, params: dict, fit_seconds: float, *, scores=(),
               error: str | None = None, pruned: bool = False,
               oof: np.ndarray | None = None, worker: str = "",
               temperature: float = 1.0) -> TrialResult:
        finite = [s for s in scores if math.isfinite(s)]
        cv_score = cv_std = None
        if error is None and finite:
            cv_score = float(np.mean(finite))
            cv_std = float(np.std(finite)) if len(finite) > 1 else 0.0
        trial = TrialResult(number=len(self.trials), family=family, params=dict(params),
                            cv_score=cv_score, cv_score_std=cv_std, fit_seconds=fit_seconds,
                            error=error, folds=len(scores), pruned=pruned, worker=worker,
                            temperature=temperature)
        self.keep_oof(trial, oof)
        self.trials.append(trial)
        if trial.cv_score is not None:
            current = self.best_by_family.get(trial.family)
            if current is None or better(trial.cv_score, current.cv_score, self.metric):
                self.best_by_family[trial.family] = trial
        if self.on_trial is not None:
            self.on_trial(trial)
        self.progress(STAGE_SEARCHING)
        return trial

    def first_pending(self) -> bool:
        """No complete trial yet and none given out that must finish."""
        return not self.best_by_family and not any(f.spec.must_finish
                                                   for f in self.in_flight.values())

    def fall_back_to_partial_scores(self) -> None:
        """A family none of whose configurations completed the full rung in time (large
        or wide data, short budget) stands in with its best partial score: a score on
        fewer rows or on one fold. More rows rarely make a score worse, so a better
        score on fewer rows is the better bet; ties go to the higher rung."""
        standing_in: dict[str, tuple[tuple, int, float]] = {}
        for number, (rung, score) in self.partial_scores.items():
            family = self.trials[number].family
            if family in self.best_by_family:
                continue
            rank = (sort_key(score, self.metric), -rung, number)
            if family not in standing_in or rank < standing_in[family][0]:
                standing_in[family] = (rank, number, score)
        for family, (_, number, score) in standing_in.items():
            self.best_by_family[family] = dataclasses.replace(
                self.trials[number], cv_score=score, cv_score_std=0.0)

    def submit(self, executor: TrialExecutor, ask: optuna.Trial, family: str, params: dict,
               rung: int, spent: float = 0.0) -> None:
        must_finish = self.first_pending()
        spec = TrialSpec(key=ask.number, family=family, params=dict(params), rung=rung,
                         max_seconds=self.search_time_left(), must_finish=must_finish,
                         keep_oof=bool(self.oof_capacity) and rung == self.top_rung)
        self.in_flight[spec.key] = _InFlight(ask, spec, self.clock(), spent)
        executor.submit(spec)

    def worth_asking(self) -> bool:
        """Whether the time left could fit another configuration's first rung."""
        return self.cheapest_start is None or self.search_time_left() >= self.cheapest_start

    def ask_and_submit(self, study: optuna.Study, executor: TrialExecutor,
                       families: list[str]) -> bool:
        """Gives out the next configuration; False when it was skipped for time."""
        ask = study.ask()
        family = ask.suggest_categorical("family", families)
        learner = self.learners[family]
        try:
            params = learner.space(_OptunaParams(ask, f"{family}."), self.ctx)
        except Exception as exc:  # noqa: BLE001 - a broken space fails its trial
            study.tell(ask, state=optuna.trial.TrialState.FAIL)
            self.record(family, {}, 0.0, error=error_text(exc))
            return True
        if self.first_pending() and self.top_rung == 0:
            # The first configuration runs whatever the time: a model, soon.
            self.submit(executor, ask, family, params, 0)
            return True
        if self.estimate(learner, params, 0) > self.search_time_left():
            study.tell(ask, state=optuna.trial.TrialState.FAIL)
            return False
        self.submit(executor, ask, family, params, 0)
        return True

    def handle(self, study: optuna.Study, executor: TrialExecutor,
               outcome: TrialOutcome) -> None:
        flight = self.in_flight.pop(outcome.key, None)
        if flight is None or flight.spec.rung != outcome.rung:
            return  # declared lost already
        self.note_cost(outcome)
        spent = flight.spent + outcome.fit_seconds
        if outcome.error is None and outcome.rung < self.top_rung:
            score = float(np.mean([s for s in outcome.scores if math.isfinite(s)]))
            flight.ask.report(score, step=outcome.rung + 1)
            rows = self.data.rungs[outcome.rung].rows
            where = f"{rows} rows of one fold" if rows is not None else "one fold"
            why = None
            if flight.ask.should_prune():
                why = f"pruned: scored {score:.6g} on {where}, behind the best there"
            elif self.closing:
                why = f"pruned: the search ended after it scored {score:.6g} on {where}"
            elif self.estimate(self.learners[outcome.family], outcome.params,
                               outcome.rung + 1) > self.search_time_left():
                why = (f"pruned: no time left to score it beyond {where} "
                       f"(it scored {score:.6g})")
            if why is None:
                self.submit(executor, flight.ask, outcome.family, outcome.params,
                            outcome.rung + 1, spent)
            else:
                study.tell(flight.ask, state=optuna.trial.TrialState.PRUNED)
                trial = self.record(outcome.family, outcome.params, spent, error=why,
                                    pruned=True, worker=outcome.worker,
                                    temperature=outcome.temperature)
                if math.isfinite(score):
                    self.partial_scores[trial.number] = (outcome.rung, score)
            return
        trial = self.record(outcome.family, outcome.params, spent, scores=outcome.scores,
                            error=outcome.error, oof=outcome.oof, worker=outcome.worker,
                            temperature=outcome.temperature)
        if trial.cv_score is not None:
            study.tell(flight.ask, trial.cv_score)
        else:
            study.tell(flight.ask, state=optuna.trial.TrialState.FAIL)

    def give_up_on(self, study: optuna.Study, key: int, why: str) -> None:
        flight = self.in_flight.pop(key)
        study.tell(flight.ask, state=optuna.trial.TrialState.FAIL)
        self.record(flight.spec.family, flight.spec.params, flight.spent, error=why)

    def expire_lost(self, study: optuna.Study) -> None:
        now = self.clock()
        for key, flight in list(self.in_flight.items()):
            grace = LOST_TRIAL_GRACE_SECONDS + (self.deadline.seconds if flight.spec.must_finish
                                                else 0.0)
            if now - flight.submitted > flight.spec.max_seconds + grace:
                self.give_up_on(study, key, "lost: no outcome came from the worker running "
                                            "it (it may have stopped)")

    # -- the loop

    def portfolio(self) -> list[tuple[str, dict]]:
        """Default configurations, cheapest family first, first defaults of every
        family before second ones; the request's initial parameters in the first."""
        per_family = []
        for learner in sorted(self.learners.values(), key=lambda l: l.relative_cost):
            defaults = learner.defaults(self.ctx)
            if learner.name in self.initial:
                defaults[0] = self.initial[learner.name]
            per_family.append((learner.name, defaults))
        out = []
        for rank in range(max(len(d) for _, d in per_family)):
            out += [(name, d[rank]) for name, d in per_family if rank < len(d)]
        return out

    def failing(self) -> bool:
        recent = [t for t in self.trials if not t.pruned][-MAX_CONSECUTIVE_FAILURES:]
        return len(recent) == MAX_CONSECUTIVE_FAILURES and all(t.error for t in recent)

    def run(self, executor: TrialExecutor) -> None:
        gib = greater_is_better(self.metric)
        sampler = optuna.samplers.TPESampler(seed=self.request.seed, multivariate=True, group=True,
                                             constant_liar=executor.capacity > 1)
        pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
                  if self.top_rung > 0 else optuna.pruners.NopPruner())
        study = optuna.create_study(direction="maximize" if gib else "minimize",
                                    sampler=sampler, pruner=pruner)
        for name, params in self.portfolio():
            study.enqueue_trial(_flat_params(name, params), skip_if_exists=True)
        families = list(self.learners)
        max_trials = self.request.max_trials
        skips = 0
        self.progress(STAGE_SEARCHING)
        try:
            while True:
                if self.stop_requested():
                    self.stop_reason = STOP_CANCELLED
                    break
                if max_trials is not None and len(self.trials) >= max_trials:
                    self.stop_reason = STOP_MAX_TRIALS
                    break
                if self.failing():
                    self.stop_reason = STOP_FAILING
                    break
                started_any = bool(self.trials or self.in_flight)
                if started_any and self.search_time_left() <= 0:
                    break
                while (len(self.in_flight) < executor.capacity and skips < MAX_CONSECUTIVE_SKIPS
                       and self.worth_asking()
                       and (max_trials is None
                            or len(self.trials) + len(self.in_flight) < max_trials)):
                    skips = 0 if self.ask_and_submit(study, executor, families) else skips + 1
                if not self.in_flight:
                    break  # nothing fits in the time left
                for outcome in executor.collect(COLLECT_SECONDS):
                    self.handle(study, executor, outcome)
                self.expire_lost(study)
            self.drain(study, executor)
            self.fall_back_to_partial_scores()
        finally:
            executor.close()
            self.search_seconds = self.deadline.elapsed()

    def drain(self, study: optuna.Study, executor: TrialExecutor) -> None:
        """Waits for the trials still out (they end by the budget, or must finish),
        at most until budget * DRAIN_SHARE; cancellation does not wait."""
        self.closing = True
        limit = self.deadline.seconds * DRAIN_SHARE
        while self.in_flight and not self.stop_requested():
            if (self.deadline.elapsed() > limit
                    and not any(f.spec.must_finish for f in self.in_flight.values())):
                break
            for outcome in executor.collect(COLLECT_SECONDS):
                self.handle(study, executor, outcome)
            self.expire_lost(study)
        for key in list(self.in_flight):
            self.give_up_on(study, key, "stopped: the search ended before it did"
                            if not self.cancelled else "stopped: the search was cancelled")

    # -- refits

    def hard_limit(self) -> float:
        return (self.search_seconds + self.deadline.seconds * REFIT_SHARE
                + REFIT_SLACK_SECONDS)

    def refit_trial(self, trial: TrialResult) -> Pipeline | None:
        """The trial's configuration fit on all search rows; None when that fails."""
        prep = self.prep
        try:
            pipeline = build_pipeline(self.learners[trial.family], trial.params, self.ctx,
                                      prep.feature_types, prep.active_types,
                                      trial.temperature)
            pipeline.fit(prep.raw_X, prep.y)
        except Exception:  # noqa: BLE001 - keep the models that did refit
            log.warning("refit of trial %d (%s) failed", trial.number, trial.family,
                        exc_info=True)
            return None
        return pipeline

    def refit(self) -> list[FittedModel]:
        """The best trial of each family (the MAX_REFIT_MODELS best families) refit on
        all rows, in rank order. The best always; then, while time allows, the members
        of the planned ensemble before the other families - the ensemble is often the
        best model, and it is lost when a member misses the time. Members that are not
        their family's best are kept apart (`member_pipelines`), not returned. A
        cancelled search refits its best trial alone: the user asked it to stop."""
        hard_limit = self.hard_limit()
        ranked = self.ranked_families()[:1 if self.cancelled else MAX_REFIT_MODELS]
        trials = {t.number: t for t in self.trials}
        order = ranked[:1] + [trials[n] for n in self.planned_members()] + ranked[1:]
        family_bests = {t.number for t in ranked}
        fitted: dict[int, Pipeline] = {}
        for trial in order:
            if trial.number in fitted:
                continue
            if fitted and self.deadline.elapsed() + self.refit_estimate(trial) > hard_limit:
                continue
            pipeline = self.refit_trial(trial)
            if pipeline is not None:
                fitted[trial.number] = pipeline
        self.member_pipelines = {n: p for n, p in fitted.items() if n not in family_bests}
        return [FittedModel(t.family, model_params(t), t.cv_score, t.cv_score_std,
                            fitted[t.number], t.number) for t in ranked if t.number in fitted]

    # -- ensemble

    def ensemble_candidates(self) -> list[int]:
        """Trials with kept out-of-fold predictions, best first."""
        trials = {t.number: t for t in self.trials}
        return sorted(self.oof, key=lambda n: (sort_key(trials[n].cv_score, self.metric), n))

    def ensemble_plan(self) -> tuple[list[int], np.ndarray]:
        """(candidates, greedy selection counts) over all kept out-of-fold
        predictions, computed once: `refit` plans with it, `ensemble` builds from it."""
        if self.plan is None:
            candidates = self.ensemble_candidates()
            self.plan = (candidates, self.select(
                candidates, lambda: self.deadline.elapsed() > self.hard_limit()))
        return self.plan

    def planned_members(self) -> list[int]:
        """The trials the ensemble plan picks, the heaviest first; empty when no
        ensemble is possible."""
        if self.cancelled or len(self.oof) < 2:
            return []
        # Heaviest first; equal weights in candidate order (best first).
        chosen = sorted((-c, i, n) for i, (n, c) in enumerate(zip(*self.ensemble_plan())) if c)
        return [n for _, _, n in chosen] if len(chosen) >= 2 else []

    def select(self, candidates: list[int], out_of_time) -> np.ndarray:
        """Greedy selection counts over `candidates` (trial numbers, best first),
        on the metric of the pooled out-of-fold predictions."""
        return greedy_selection([self.oof[n] for n in candidates], self.data.scorer,
                                greater_is_better(self.metric), start=0,
                                out_of_time=out_of_time)[0]

    def fold_scores(self, blend: np.ndarray) -> tuple[float | None, float]:
        """Mean and std over the folds, as a trial's cv_score is computed."""
        scores = [score(blend[valid])
                  for score, (_, valid) in zip(self.data.fold_scorers, self.prep.folds)]
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
        fitted = {**self.member_pipelines, **{m.trial_number: m.pipeline for m in models}}
        candidates, counts = self.ensemble_plan()
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
        # Averaging calibrated members makes the blend timid again: it gets its own
        # temperature.
        temperature = (fit_temperature(blend, self.data.codes) if self.data.calibrates
                       else 1.0)
        blend = scale(blend, temperature)
        cv_score, cv_std = self.fold_scores(blend)
        if cv_score is None or not better(cv_score, best_single, self.metric):
            return None
        self.ensemble_oof = blend
        order = sorted(range(len(chosen)), key=lambda i: (-weights[i], chosen[i][0]))
        members = [{"family": trials[chosen[i][0]].family, "trial_number": int(chosen[i][0]),
                    "weight": round(float(weights[i]), 6)} for i in order]
        params = _with_temperature({"members": members}, temperature)
        pipeline = WeightedEnsemble([fitted[chosen[i][0]] for i in order],
                                    [float(weights[i]) for i in order], task=self.prep.task,
                                    temperature=temperature)
        return FittedModel(ENSEMBLE_FAMILY, params, cv_score, cv_std, pipeline, -1)

    # -- order

    def simple_first(self, models: list[FittedModel]) -> list[FittedModel]:
        """`models` (best cv_score first), with the best simple one moved first when
        the winner's lead over it on the out-of-fold rows is less than
        LEAD_IN_STANDARD_ERRORS standard errors (`simplicity`). Unchanged when
        either's out-of-fold predictions were not kept."""
        winner = models[0] if models else None
        simple = next((m for m in models if m.family in SIMPLE_FAMILIES), None)
        if winner is None or simple is None or simple is winner:
            return models
        winner_oof = (self.ensemble_oof if winner.family == ENSEMBLE_FAMILY
                      else self.oof.get(winner.trial_number))
        kept_number, kept_oof = self.simple_oof.get(simple.family, (None, None))
        simple_oof = kept_oof if kept_number == simple.trial_number else None
        if winner_oof is None or simple_oof is None:
            return models
        lead = lead_in_standard_errors(
            self.metric, self.data.y, self.data.classes, winner_oof, simple_oof,
            seed=self.request.seed)
        if not lead < LEAD_IN_STANDARD_ERRORS:  # nan: the metric is undefined; keep
            return models
        note = (f"ranked first, as the simplest model that is not clearly worse: "
                f"{winner.family}'s lead over it on the out-of-fold rows is "
                f"{max(lead, 0.0):.1f} standard errors, less than "
                f"{LEAD_IN_STANDARD_ERRORS:g}")
        return ([dataclasses.replace(simple, ranking_note=note)]
                + [m for m in models if m is not simple])


def _with_temperature(params: dict[str, Any], temperature: float) -> dict[str, Any]:
    """`params`, and the model's temperature when its probabilities are scaled."""
    return params if temperature == 1.0 else {**params, "temperature": round(temperature, 6)}


def model_params(trial: TrialResult) -> dict[str, Any]:
    """The trial's configuration, and its temperature when it has one."""
    return _with_temperature(dict(trial.params), trial.temperature)


def _initial_value(text: str, default: Any) -> Any:
    """A parameter's value as text (as the leaderboard shows it: JSON, or a bare string)
    in the type of its default; ValueError when it is not."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
    elif isinstance(default, int):
        if not (number and math.isfinite(value) and float(value).is_integer()):
            raise ValueError("expected a whole number")
        value = int(value)
    elif isinstance(default, float):
        if not (number and math.isfinite(value)):
            raise ValueError("expected a number")
        value = float(value)
    return value


def initial_configurations(initial_params: Mapping[str, str], learners: Mapping[str, Learner],
                           ctx: LearnerContext) -> dict[str, dict[str, Any]]:
    """Family -> its first default configuration with the request's initial parameters
    ("{family}.{parameter}" -> text) applied. Raises InvalidArgument naming the entry
    whose family is not in the search, parameter unknown or value of the wrong type."""
    out: dict[str, dict[str, Any]] = {}
    violations = []
    for key in sorted(initial_params):
        family, _, name = key.partition(".")
        where = f"{INITIAL_PARAMS_FIELD}[{key}]"
        if family not in learners:
            violations.append(FieldViolation(where, f"family {family!r} is not in this search "
                                             f"(families: {', '.join(learners)})"))
            continue
        config = out.setdefault(family, dict(learners[family].defaults(ctx)[0]))
        if name not in config:
            violations.append(FieldViolation(where, f"{family} has no parameter {name!r}; "
                                             f"parameters: {', '.join(config)}"))
            continue
        try:
            config[name] = _initial_value(initial_params[key], config[name])
        except ValueError as exc:
            violations.append(FieldViolation(where, f"{exc}, got {initial_params[key]!r}"))
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}",
                              violations, reason="INVALID_INITIAL_PARAM")
    return out


def build_pipeline(learner: Learner, params: Mapping[str, Any], ctx: LearnerContext,
                   feature_types: Mapping[str, str], active_types: Mapping[str, str],
                   temperature: float = 1.0) -> Pipeline:
    """The deployable pipeline: schema coercion, preprocessing, model (unfitted); the
    model's probabilities temperature-scaled when `temperature` is not 1."""
    model = learner.build(params, ctx)
    if temperature != 1.0:
        model = TemperatureScaled(model, temperature)
    return Pipeline([
        ("coerce", SchemaCoercer(dict(feature_types))),
        ("preprocess", build_preprocessor(dict(active_types), learner.preprocessing,
                                         ctx.task)),
        ("model", model),
    ])


def _select_learners(request: SearchRequest, task: str, n_rows: int, n_classes: int,
                     registry: Mapping[str, Learner]) -> list[Learner]:
    if request.families is not None:
        unknown = [f for f in request.families if f not in registry]
        if unknown:  # e.g. lightgbm on a worker without it
            raise InvalidArgument.of(FAMILIES_FIELD, f"unknown model families: "
                                     f"{', '.join(unknown)}; known here: {', '.join(registry)}",
                                     reason="UNKNOWN_MODEL_FAMILY")
    if request.families is None:
        chosen = [l for l in registry.values() if l.supports(task, n_rows)
                  and (l.default_for_binary or n_classes != 2)]
    else:
        chosen = [l for l in registry.values()
                  if l.supports(task, n_rows) and l.name in request.families]
    if not chosen:
        families = ", ".join(request.families or registry)
        raise InvalidArgument.of(FAMILIES_FIELD, f"no model family can handle {task} on "
                                 f"{n_rows} rows (families: {families})", reason="NO_MODEL_FAMILY")
    return chosen


def prepare_trials(request: SearchRequest,
                   learners: Mapping[str, Learner] | None = None) -> TrialData:
    """The rows, folds and model families every trial of this request runs on. The
    same request gives the same TrialData on any worker."""
    prep = prepare(request)
    chosen = _select_learners(request, prep.task, len(prep.y), len(prep.classes),
                              learners or LEARNERS)
    return TrialData(prep, {l.name: l for l in chosen}, request.seed)


def quiet_warnings() -> None:
    """Silences the warnings fitting many configurations raises by the hundred
    (inside a `warnings.catch_warnings()` block)."""
    for category in (ConvergenceWarning, UserWarning, FutureWarning, RuntimeWarning,
                     optuna.exceptions.ExperimentalWarning):
        warnings.simplefilter("ignore", category)


def run_search(request: SearchRequest, *,
               on_trial: Callable[[TrialResult], None] | None = None,
               on_progress: Callable[[int, float | None, str], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               clock: Clock | None = None,
               learners: Mapping[str, Learner] | None = None,
               executor: ExecutorFactory | None = None) -> SearchResult:
    """Runs the AutoML search described by `request` within its time budget.

    on_trial(trial) is called as each trial finishes; on_progress(trials_completed,
    best_score, stage) at stage changes and after each trial; should_stop() is
    polled between folds and trials (True: stop searching, refit what was found).
    Exceptions from the callbacks propagate. Raises InvalidArgument for a bad
    request. `executor(data, should_stop)` makes the TrialExecutor that runs the
    trials (default: `InlineExecutor`, in this thread). `clock` (default
    time.monotonic) and `learners` (default `learners.LEARNERS`) are for tests."""
    clock = clock or time.monotonic
    deadline = Deadline(validate_budget(request.budget_seconds), clock=clock)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        quiet_warnings()
        data = prepare_trials(request, learners)
        prep = data.prep
        search = _Search(request, data, deadline, clock, on_trial, on_progress, should_stop)
        stop = search.stop_requested
        trial_executor = (executor(data, stop) if executor is not None
                          else InlineExecutor(data, stop, clock))
        # BLAS and OpenMP (gradient boosting) thread pools follow the same rule as
        # n_jobs. threadpoolctl (a scikit-learn dependency) sets them process-wide.
        with threadpool_limits(limits=search.ctx.n_jobs):
            search.run(trial_executor)
            search.progress(STAGE_REFITTING)
            models = search.refit()
            try:
                ensemble = search.ensemble(models)
            except Exception:  # noqa: BLE001 - the single models stand on their own
                log.warning("ensemble selection failed", exc_info=True)
                ensemble = None
            if ensemble is not None:
                models.insert(0, ensemble)
            models = search.simple_first(models)
            search.oof.clear()
            search.simple_oof.clear()
            search.member_pipelines.clear()
            search.refit_seconds = deadline.elapsed() - search.search_seconds
    search.progress(STAGE_DONE)
    return SearchResult(
        task=prep.task, metric=prep.metric, greater_is_better=greater_is_better(prep.metric),
        classes=list(prep.classes), feature_columns=list(prep.feature_types),
        column_types=dict(prep.feature_types), trials=list(search.trials), models=models,
        holdout_frame=prep.holdout, train_rows=len(prep.y), stopped_early=search.cancelled,
        stop_reason=search.stop_reason,
        ignored_columns=[c for c in prep.feature_types if c not in prep.active_types],
        cv_folds=search.k, elapsed_seconds=deadline.elapsed(),
        search_seconds=search.search_seconds, refit_seconds=search.refit_seconds)
