"""Training jobs: the record, its state machine, and its storage.

A job lives in `jobs_by_user` (listing) and `jobs_by_id` (workers find it by id alone);
both copies are written on every change. How many jobs a user has queued or running is
counted from `jobs_by_user` whenever a job is created, so the limit holds whichever
trainer process creates it.
"""

import math
import time
from collections.abc import Callable, Mapping, Sequence

from nbml_server.domain.paging import Page, all_rows, list_page
from nbml_server.errors import (FailedPrecondition, FieldViolation, InvalidArgument, NotFound,
                                ResourceExhausted)
from nbml_server.ids import new_id
from nbml_server.ports.table_store import TableStore

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "pending", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({PENDING, RUNNING})
TASKS = ("auto", "classification", "regression")
CLASSIFICATION_METRICS = ("roc_auc", "log_loss", "accuracy", "f1")
REGRESSION_METRICS = ("rmse", "mae", "r2")
MIN_BUDGET_SECONDS, MAX_BUDGET_SECONDS, DEFAULT_BUDGET_SECONDS = 5, 86400, 60
# Share of the rows kept out of training to measure the models on. 0 trains on every
# row (the leaderboard then has cross-validated scores only); more than half would
# leave too little to learn from.
MAX_HOLDOUT_FRACTION, DEFAULT_HOLDOUT_FRACTION = 0.5, 0.2
MAX_TRIALS = 10_000
# Fewer rows with a target value than this cannot be cross-validated (the search's
# `automl.preparation.MIN_ROWS`; a unit test keeps the two in step).
MIN_TRAINING_ROWS = 10
# The model families a job may name (`automl.LEARNERS`; lightgbm and xgboost only where
# their library is installed). Kept here so the trainer checks requests without
# importing scikit-learn; a unit test keeps the two in step.
MODEL_FAMILIES = ("logistic_regression", "ridge", "lda", "qda", "knn", "lightgbm",
                  "hist_gradient_boosting", "xgboost", "extra_trees", "random_forest", "svm",
                  "mlp")


def holdout_fraction_of(job: dict) -> float:
    """The job's holdout fraction; jobs recorded before it was an option used 0.2."""
    return float(job.get("holdout_fraction", DEFAULT_HOLDOUT_FRACTION))


def check_job_request(*, target_column: str, task: str, metric: str, budget_seconds: int,
                      columns: dict[str, dict], holdout_fraction: float | None = None,
                      families: Sequence[str] = (), max_trials: int = 0,
                      initial_params: Mapping[str, str] | None = None,
                      row_count: int | None = None) -> list:
    """(field, description, reason) for each problem of a job request, checked against
    the data set's profile (column name -> column profile dict) and its `row_count`
    (None: not checked). A `holdout_fraction` of None means the request left it unset.
    Initial parameters are checked here for their family; their names and values,
    against the family's defaults, by the search."""
    violations = _search_space_violations(families, max_trials, initial_params or {})
    if not target_column:
        violations.append(("training_job.target_column", "required", "TARGET_COLUMN_MISSING"))
    elif target_column not in columns:
        shown = ", ".join(list(columns)[:20])
        violations.append(("training_job.target_column",
                           f"no column {target_column!r} in the data set; columns: {shown}",
                           "UNKNOWN_TARGET_COLUMN"))
    else:
        problem = _target_problem(target_column, columns, task, row_count)
        if problem:
            violations.append(problem)
    if task not in TASKS:
        violations.append(("training_job.task", f"must be one of {', '.join(TASKS)}",
                           "UNKNOWN_TASK"))
    allowed = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS}.get(
        task, CLASSIFICATION_METRICS + REGRESSION_METRICS)
    if metric and metric not in allowed:
        violations.append(("training_job.metric",
                           f"unknown metric {metric!r} for task {task}; one of {', '.join(allowed)}",
                           "UNKNOWN_METRIC"))
    if budget_seconds != 0 and not MIN_BUDGET_SECONDS <= budget_seconds <= MAX_BUDGET_SECONDS:
        violations.append(("training_job.budget_seconds",
                           f"must be {MIN_BUDGET_SECONDS} to {MAX_BUDGET_SECONDS} seconds "
                           f"(0 means {DEFAULT_BUDGET_SECONDS}), got {budget_seconds}",
                           "BUDGET_OUT_OF_RANGE"))
    if holdout_fraction is not None and not (
            math.isfinite(holdout_fraction) and 0 <= holdout_fraction <= MAX_HOLDOUT_FRACTION):
        violations.append(("training_job.holdout_fraction",
                           f"must be 0 to {MAX_HOLDOUT_FRACTION} (unset means "
                           f"{DEFAULT_HOLDOUT_FRACTION}), got {holdout_fraction}",
                           "HOLDOUT_FRACTION_OUT_OF_RANGE"))
    return violations


def _target_problem(name: str, columns: dict[str, dict], task: str,
                    row_count: int | None) -> tuple[str, str, str] | None:
    """What makes column `name` useless as the target, judged from its profile (the
    search would fail on it later, or learn nothing)."""
    field = "training_job.target_column"
    column = columns[name]
    distinct = column.get("distinct_count", 0)
    numeric = column.get("type") == "numeric"
    if column.get("distinct_count") == 0:
        return (field, f"column {name!r} has no values (every cell is empty or a missing "
                       "marker); there is nothing to learn", "TARGET_ALL_MISSING")
    if numeric and not column.get("numeric_stats"):
        return (field, f"column {name!r} has no finite numbers (only NaN, inf or -inf); "
                       "there is nothing to learn", "TARGET_ALL_MISSING")
    if distinct < 2:
        tops = column.get("top_values") or ()
        value = f" ({tops[0]['value']!r})" if tops else ""
        return (field, f"column {name!r} has a single value{value}; there is nothing to "
                       "learn", "TARGET_SINGLE_CLASS")
    if len(columns) < 2:
        return (field, "the data set has no column besides the target to learn from",
                "NO_FEATURE_COLUMNS")
    if column.get("id_like") and not (numeric and task == "regression"):
        hint = "; to train on it anyway, ask for task regression" if numeric else ""
        return (field, f"column {name!r} looks like an identifier (every row has a value of "
                       f"its own), so a model cannot learn to predict it{hint}",
                "TARGET_IS_IDENTIFIER")
    if row_count is not None:
        labelled = row_count - round(row_count * column.get("missing_rate", 0.0))
        if labelled < MIN_TRAINING_ROWS:
            return ("training_job.dataset", f"only {labelled} rows have a value in target "
                    f"column {name!r}; at least {MIN_TRAINING_ROWS} are needed", "TOO_FEW_ROWS")
    return None


def _search_space_violations(families: Sequence[str], max_trials: int,
                             initial_params: Mapping[str, str]) -> list:
    violations = []
    known = ", ".join(MODEL_FAMILIES)
    for index, family in enumerate(families):
        if family not in MODEL_FAMILIES:
            violations.append((f"training_job.families[{index}]",
                               f"unknown model family {family!r}; one of {known}",
                               "UNKNOWN_MODEL_FAMILY"))
    if not 0 <= max_trials <= MAX_TRIALS:
        violations.append(("training_job.max_trials",
                           f"must be 0 to {MAX_TRIALS} (0 means until the budget is spent), "
                           f"got {max_trials}", "MAX_TRIALS_OUT_OF_RANGE"))
    for key in sorted(initial_params):
        family, _, param = key.partition(".")
        problem = None
        if not param:
            problem = f"must be named {{family}}.{{parameter}}, got {key!r}"
        elif family not in MODEL_FAMILIES:
            problem = f"unknown model family {family!r}; one of {known}"
        elif families and family not in families:
            problem = f"family {family!r} is not among the job's families"
        if problem:
            violations.append((f"training_job.initial_params[{key}]", problem,
                               "INVALID_INITIAL_PARAM"))
    return violations


class Jobs:
    def __init__(self, store: TableStore, max_running_per_user: int | None = None):
        """`max_running_per_user`: jobs one user may have queued or running at once
        (None: no limit, for the processes that only read and update jobs)."""
        self.store = store
        self.max_running_per_user = max_running_per_user

    def create(self, *, user_id: str, dataset_id: str, target_column: str, task: str,
               metric: str, budget_seconds: int, holdout_fraction: float | None = None,
               families: Sequence[str] = (), max_trials: int = 0,
               initial_params: Mapping[str, str] | None = None) -> dict:
        now = time.time()
        job = {"job_id": new_id("job"), "user_id": user_id, "dataset_id": dataset_id,
               "target_column": target_column, "task": task, "metric": metric,
               "budget_seconds": budget_seconds or DEFAULT_BUDGET_SECONDS,
               "holdout_fraction": (DEFAULT_HOLDOUT_FRACTION if holdout_fraction is None
                                    else float(holdout_fraction)),
               "families": list(dict.fromkeys(families)), "max_trials": int(max_trials),
               "initial_params": dict(initial_params or {}),
               "state": PENDING, "resolved_task": "", "resolved_metric": "",
               "progress": {"trials_completed": 0, "best_score": 0.0,
                            "elapsed_seconds": 0.0, "stage": "queued"},
               "error": "", "best_model": "", "cancel_requested": False, "attempt": 0,
               "create_time": now, "update_time": now}
        self._refuse_if_no_room(user_id)
        self._write(job)
        try:
            # Again with the job written: of two creations racing past the first check
            # (threads or processes), neither is accepted over the limit.
            self._refuse_if_no_room(user_id, job["job_id"])
        except ResourceExhausted:
            self.discard(job)
            raise
        return job

    def running(self, user_id: str) -> list[dict]:
        """The user's queued and running jobs, except those being cancelled (they end
        as soon as their worker notices)."""
        return [job for _, job in all_rows(self.store, "jobs_by_user", user_id)
                if job["state"] in ACTIVE and not job.get("cancel_requested")]

    def _refuse_if_no_room(self, user_id: str, new_job_id: str = "") -> None:
        """Refuses a new job (`new_job_id`, once written) if the user's other running
        jobs already fill the limit."""
        if self.max_running_per_user is None:
            return
        others = [j for j in self.running(user_id) if j["job_id"] != new_job_id]
        if len(others) >= self.max_running_per_user:
            raise ResourceExhausted(
                f"{len(others)} of your training jobs are queued or running and at most "
                f"{self.max_running_per_user} may be at once: wait for one to end or "
                "cancel one", reason="TOO_MANY_RUNNING_JOBS")

    def get(self, user_id: str, job_id: str) -> dict:
        job = self.store.get("jobs_by_user", user_id, job_id)
        if job is None:
            raise NotFound(f"trainingJobs/{job_id} not found", reason="TRAINING_JOB_NOT_FOUND")
        return job

    def get_by_id(self, job_id: str) -> dict | None:
        return self.store.get("jobs_by_id", job_id, "")

    def list(self, user_id: str, page_size: int, page_token: str) -> Page:
        return list_page(self.store, "jobs_by_user", user_id, page_size=page_size,
                         page_token=page_token)

    def request_cancel(self, user_id: str, job_id: str) -> dict:
        self.get(user_id, job_id)  # NOT_FOUND for another user's job

        def cancel(job: dict) -> None:
            # Decided on the freshest copy: a worker may have moved the job meanwhile.
            if job["state"] in (SUCCEEDED, FAILED):
                raise FailedPrecondition(f"trainingJobs/{job_id} already {job['state']}",
                                         reason="TRAINING_JOB_FINISHED")
            job["cancel_requested"] = True
            if job["state"] == PENDING:
                # Nobody runs it yet: it ends here; a worker that picks it up skips it.
                job["state"] = CANCELLED
                job["progress"] = {**job["progress"], "stage": "cancelled"}
        return self.update(job_id, cancel)

    def update(self, job_id: str, change: Callable[[dict], None]) -> dict:
        """Applies `change` to the freshest copy and stores it (read-modify-write)."""
        job = self.get_by_id(job_id)
        if job is None:
            raise NotFound(f"trainingJobs/{job_id} not found", reason="TRAINING_JOB_NOT_FOUND")
        change(job)
        job["update_time"] = time.time()
        self._write(job)
        return job

    def discard(self, job: dict) -> None:
        """Removes a job nobody was told about (its creation could not be announced)."""
        self.store.delete("jobs_by_user", job["user_id"], job["job_id"])
        self.store.delete("jobs_by_id", job["job_id"], "")

    def _write(self, job: dict) -> None:
        self.store.put("jobs_by_id", job["job_id"], "", job)
        self.store.put("jobs_by_user", job["user_id"], job["job_id"], job)


def raise_violations(violations: list[tuple[str, str, str]]) -> None:
    if violations:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d, _ in violations),
                              [FieldViolation(f, d) for f, d, _ in violations],
                              reason=violations[0][2])
