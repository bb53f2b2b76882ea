"""Training jobs: request checks against the data set's profile, and the job record's
state machine over the real SQLite table store."""

import pytest

from nbml_server.domain.automl import LEARNERS
from nbml_server.domain.automl.preparation import MIN_ROWS
from nbml_server.domain.jobs import (CANCELLED, DEFAULT_BUDGET_SECONDS,
                                     DEFAULT_HOLDOUT_FRACTION, FAILED, MAX_BUDGET_SECONDS,
                                     MAX_HOLDOUT_FRACTION, MAX_TRIALS, MIN_BUDGET_SECONDS,
                                     MIN_TRAINING_ROWS, MODEL_FAMILIES, PENDING, RUNNING,
                                     SUCCEEDED, Jobs, check_job_request, holdout_fraction_of,
                                     raise_violations)
from nbml_server.errors import FailedPrecondition, InvalidArgument, NotFound

COLUMNS = {
    "age": {"distinct_count": 40},
    "city": {"distinct_count": 3},
    "churned": {"distinct_count": 2},
    "constant": {"distinct_count": 1},
    "empty": {"distinct_count": 0},
    "unprofiled": {},
}


def check(**overrides):
    request = {"target_column": "churned", "task": "auto", "metric": "", "budget_seconds": 0,
               "columns": COLUMNS, **overrides}
    return check_job_request(**request)


def reasons(violations):
    return [reason for _, _, reason in violations]


# -- check_job_request -----------------------------------------------------------------

def test_a_good_request_has_no_violations():
    assert check() == []
    assert check(task="classification", metric="roc_auc", budget_seconds=60) == []
    assert check(target_column="age", task="regression", metric="rmse") == []


def test_the_job_s_family_names_are_the_search_s():
    assert set(LEARNERS) <= set(MODEL_FAMILIES)
    assert set(MODEL_FAMILIES) - set(LEARNERS) <= {"lightgbm", "xgboost"}  # optional ones


def test_search_options_name_known_families_and_parameters_of_them():
    assert check(families=["random_forest", "knn"], max_trials=MAX_TRIALS,
                 initial_params={"random_forest.n_estimators": "300"}) == []
    assert check(families=["knn", "boosted_magic"]) == [(
        "training_job.families[1]",
        f"unknown model family 'boosted_magic'; one of {', '.join(MODEL_FAMILIES)}",
        "UNKNOWN_MODEL_FAMILY")]
    assert reasons(check(max_trials=-1)) == reasons(check(max_trials=MAX_TRIALS + 1)) == [
        "MAX_TRIALS_OUT_OF_RANGE"]
    violations = check(families=["knn"], initial_params={
        "n_estimators": "3", "magic.depth": "2", "random_forest.n_estimators": "3"})
    assert [field for field, _, _ in violations] == [
        "training_job.initial_params[magic.depth]",
        "training_job.initial_params[n_estimators]",
        "training_job.initial_params[random_forest.n_estimators]"]
    assert "not among the job's families" in violations[2][1]


def test_target_column_required():
    assert check(target_column="") == [
        ("training_job.target_column", "required", "TARGET_COLUMN_MISSING")]


def test_unknown_target_column_lists_the_columns():
    [(field, description, reason)] = check(target_column="nope")
    assert (field, reason) == ("training_job.target_column", "UNKNOWN_TARGET_COLUMN")
    assert "'nope'" in description
    assert "age, city, churned" in description


def test_unknown_target_column_shows_at_most_20_columns():
    columns = {f"c{i:02d}": {"distinct_count": 5} for i in range(30)}
    [(_, description, _)] = check(target_column="nope", columns=columns)
    assert "c19" in description and "c20" not in description


@pytest.mark.parametrize("target, reason", [("constant", "TARGET_SINGLE_CLASS"),
                                            ("unprofiled", "TARGET_SINGLE_CLASS"),
                                            ("empty", "TARGET_ALL_MISSING")])
def test_target_with_fewer_than_two_values(target, reason):
    [(field, description, found)] = check(target_column=target)
    assert (field, found) == ("training_job.target_column", reason)
    assert repr(target) in description


def test_a_numeric_target_without_finite_values_is_all_missing():
    columns = {**COLUMNS, "infinite": {"type": "numeric", "distinct_count": 2,
                                       "numeric_stats": None}}
    [(_, description, reason)] = check(target_column="infinite", columns=columns)
    assert reason == "TARGET_ALL_MISSING"
    assert "no finite numbers" in description


def test_the_only_column_cannot_be_the_target():
    assert reasons(check(columns={"churned": COLUMNS["churned"]})) == ["NO_FEATURE_COLUMNS"]


def test_an_identifier_is_not_a_target_unless_a_numeric_one_is_asked_for_as_regression():
    columns = {**COLUMNS,
               "order_id": {"type": "categorical", "distinct_count": 40, "id_like": True},
               "row": {"type": "numeric", "distinct_count": 40, "id_like": True,
                       "numeric_stats": {"min": 1.0, "max": 40.0}}}
    [(_, description, reason)] = check(target_column="order_id", columns=columns)
    assert reason == "TARGET_IS_IDENTIFIER"
    assert "'order_id' looks like an identifier" in description
    assert reasons(check(target_column="order_id", columns=columns, task="regression")) == [
        "TARGET_IS_IDENTIFIER"]
    assert reasons(check(target_column="row", columns=columns)) == ["TARGET_IS_IDENTIFIER"]
    assert check(target_column="row", columns=columns, task="regression") == []


def test_too_few_rows_with_a_target_value():
    columns = {**COLUMNS, "churned": {"distinct_count": 2, "missing_rate": 0.5}}
    assert check(columns=columns, row_count=20) == []
    [(field, description, reason)] = check(columns=columns, row_count=19)
    assert (field, reason) == ("training_job.dataset", "TOO_FEW_ROWS")
    assert description.startswith("only 9 rows have a value in target column 'churned'")


def test_the_trainer_s_minimum_rows_are_the_search_s():
    assert MIN_TRAINING_ROWS == MIN_ROWS


def test_target_column_is_case_sensitive():
    assert reasons(check(target_column="Churned")) == ["UNKNOWN_TARGET_COLUMN"]


@pytest.mark.parametrize("task", ["", "Classification", "clustering", "regresion"])
def test_unknown_task(task):
    [(field, description, reason)] = check(task=task)
    assert (field, reason) == ("training_job.task", "UNKNOWN_TASK")
    assert "auto, classification, regression" in description


@pytest.mark.parametrize("task, metric", [
    ("classification", "rmse"), ("classification", "r2"), ("regression", "roc_auc"),
    ("regression", "accuracy"), ("auto", "precision"), ("auto", "ROC_AUC"),
])
def test_unknown_metric_for_the_task(task, metric):
    [(field, description, reason)] = check(task=task, metric=metric)
    assert (field, reason) == ("training_job.metric", "UNKNOWN_METRIC")
    assert repr(metric) in description and task in description


@pytest.mark.parametrize("task, metric", [
    ("classification", m) for m in ("roc_auc", "log_loss", "accuracy", "f1")] + [
    ("regression", m) for m in ("rmse", "mae", "r2")] + [
    ("auto", m) for m in ("roc_auc", "log_loss", "accuracy", "f1", "rmse", "mae", "r2")] + [
    ("classification", ""), ("regression", ""), ("auto", "")])
def test_known_metrics(task, metric):
    assert check(task=task, metric=metric) == []


def test_unknown_task_allows_any_known_metric():
    assert reasons(check(task="bogus", metric="rmse")) == ["UNKNOWN_TASK"]
    assert reasons(check(task="bogus", metric="nope")) == ["UNKNOWN_TASK", "UNKNOWN_METRIC"]


@pytest.mark.parametrize("budget", [0, MIN_BUDGET_SECONDS, 6, 3600, MAX_BUDGET_SECONDS])
def test_budgets_in_range(budget):
    assert (MIN_BUDGET_SECONDS, MAX_BUDGET_SECONDS) == (5, 86400)
    assert check(budget_seconds=budget) == []


@pytest.mark.parametrize("budget", [-1, 1, 4, MAX_BUDGET_SECONDS + 1, 10**9])
def test_budgets_out_of_range(budget):
    [(field, description, reason)] = check(budget_seconds=budget)
    assert (field, reason) == ("training_job.budget_seconds", "BUDGET_OUT_OF_RANGE")
    assert f"got {budget}" in description and "0 means 60" in description


@pytest.mark.parametrize("fraction", [None, 0.0, -0.0, 0.01, 0.2, 0.5])
def test_holdout_fractions_in_range(fraction):
    assert (DEFAULT_HOLDOUT_FRACTION, MAX_HOLDOUT_FRACTION) == (0.2, 0.5)
    assert check(holdout_fraction=fraction) == []


@pytest.mark.parametrize("fraction", [-0.1, -1e-9, 0.500001, 0.9, 1.0, 20.0,
                                      float("nan"), float("inf"), float("-inf")])
def test_holdout_fractions_out_of_range(fraction):
    [(field, description, reason)] = check(holdout_fraction=fraction)
    assert (field, reason) == ("training_job.holdout_fraction", "HOLDOUT_FRACTION_OUT_OF_RANGE")
    assert f"got {fraction}" in description and "unset means 0.2" in description


def test_a_bad_holdout_fraction_is_invalid_argument_naming_the_field():
    with pytest.raises(InvalidArgument) as e:
        raise_violations(check(holdout_fraction=0.75))
    assert e.value.reason == "HOLDOUT_FRACTION_OUT_OF_RANGE"
    assert [v.field for v in e.value.violations] == ["training_job.holdout_fraction"]
    assert e.value.message.startswith("training_job.holdout_fraction: must be 0 to 0.5")


def test_several_violations_at_once_in_field_order():
    violations = check(target_column="nope", task="clustering", metric="nope",
                       budget_seconds=3, holdout_fraction=-1.0)
    assert [f for f, _, _ in violations] == [
        "training_job.target_column", "training_job.task", "training_job.metric",
        "training_job.budget_seconds", "training_job.holdout_fraction"]
    assert reasons(violations) == ["UNKNOWN_TARGET_COLUMN", "UNKNOWN_TASK", "UNKNOWN_METRIC",
                                   "BUDGET_OUT_OF_RANGE", "HOLDOUT_FRACTION_OUT_OF_RANGE"]


# -- raise_violations ------------------------------------------------------------------

def test_raise_violations_without_violations_does_nothing():
    assert raise_violations([]) is None


def test_raise_violations_keeps_every_violation_and_the_first_reason():
    violations = check(target_column="constant", budget_seconds=1)
    with pytest.raises(InvalidArgument) as e:
        raise_violations(violations)
    error = e.value
    assert error.reason == "TARGET_SINGLE_CLASS"
    assert [(v.field, v.description) for v in error.violations] == [
        (f, d) for f, d, _ in violations]
    assert error.message == "; ".join(f"{f}: {d}" for f, d, _ in violations)


# -- Jobs ------------------------------------------------------------------------------

@pytest.fixture
def jobs(store):
    return Jobs(store)


def new_job(jobs, user="usr_a", **kw):
    spec = {"dataset_id": "ds_1", "target_column": "churned", "task": "auto", "metric": "",
            "budget_seconds": 30, **kw}
    return jobs.create(user_id=user, **spec)


def test_create_writes_a_pending_job_to_both_tables(jobs, store):
    job = new_job(jobs)
    assert job["job_id"].startswith("job_")
    assert job["state"] == PENDING
    assert job["cancel_requested"] is False and job["attempt"] == 0
    assert job["progress"]["stage"] == "queued"
    assert job["budget_seconds"] == 30
    assert store.get("jobs_by_id", job["job_id"], "") == job
    assert store.get("jobs_by_user", "usr_a", job["job_id"]) == job
    assert jobs.get("usr_a", job["job_id"]) == job
    assert jobs.get_by_id(job["job_id"]) == job


def test_zero_budget_means_the_default(jobs):
    assert new_job(jobs, budget_seconds=0)["budget_seconds"] == DEFAULT_BUDGET_SECONDS == 60


def test_holdout_fraction_is_stored_and_unset_means_the_default(jobs, store):
    assert new_job(jobs)["holdout_fraction"] == DEFAULT_HOLDOUT_FRACTION
    assert new_job(jobs, holdout_fraction=None)["holdout_fraction"] == DEFAULT_HOLDOUT_FRACTION
    job = new_job(jobs, holdout_fraction=0.0)
    assert store.get("jobs_by_id", job["job_id"], "")["holdout_fraction"] == 0.0
    assert holdout_fraction_of(jobs.get("usr_a", job["job_id"])) == 0.0
    assert holdout_fraction_of(new_job(jobs, holdout_fraction=0.35)) == 0.35


def test_a_job_recorded_before_the_holdout_option_reads_as_the_default(jobs, store):
    job = new_job(jobs)
    old = {k: v for k, v in job.items() if k != "holdout_fraction"}
    store.put("jobs_by_id", job["job_id"], "", old)
    store.put("jobs_by_user", "usr_a", job["job_id"], old)
    assert holdout_fraction_of(jobs.get("usr_a", job["job_id"])) == DEFAULT_HOLDOUT_FRACTION
    assert holdout_fraction_of(jobs.get_by_id(job["job_id"])) == 0.2
    # GetTrainingJob always answers with the resolved value.
    from nbml_server.trainer.servicer import job_message
    message = job_message(jobs.get("usr_a", job["job_id"]))
    assert message.HasField("holdout_fraction") and message.holdout_fraction == 0.2
    assert job_message(new_job(jobs, holdout_fraction=0.0)).HasField("holdout_fraction")


def test_another_users_job_is_not_found(jobs):
    job = new_job(jobs, user="usr_a")
    with pytest.raises(NotFound) as e:
        jobs.get("usr_b", job["job_id"])
    assert e.value.reason == "TRAINING_JOB_NOT_FOUND"
    with pytest.raises(NotFound):
        jobs.request_cancel("usr_b", job["job_id"])
    assert jobs.get("usr_a", job["job_id"])["state"] == PENDING


def test_unknown_job(jobs):
    with pytest.raises(NotFound):
        jobs.get("usr_a", "job_missing")
    assert jobs.get_by_id("job_missing") is None
    with pytest.raises(NotFound) as e:
        jobs.update("job_missing", lambda j: None)
    assert e.value.reason == "TRAINING_JOB_NOT_FOUND"


def test_list_is_per_user(jobs):
    mine = [new_job(jobs, user="usr_a")["job_id"] for _ in range(3)]
    new_job(jobs, user="usr_b")
    listed = [j["job_id"] for j in jobs.list("usr_a", 0, "").rows]
    assert sorted(listed) == sorted(mine)


def test_cancelling_a_pending_job_ends_it_at_once(jobs, store):
    job = new_job(jobs)
    cancelled = jobs.request_cancel("usr_a", job["job_id"])
    assert cancelled["state"] == CANCELLED
    assert cancelled["cancel_requested"] is True
    assert cancelled["progress"]["stage"] == "cancelled"
    assert cancelled["progress"]["trials_completed"] == 0  # the rest of progress kept
    assert store.get("jobs_by_id", job["job_id"], "") == cancelled
    assert store.get("jobs_by_user", "usr_a", job["job_id"]) == cancelled


def test_cancelling_a_running_job_only_requests_it(jobs):
    job = new_job(jobs)
    jobs.update(job["job_id"], lambda j: j.update(state=RUNNING, attempt=1))
    after = jobs.request_cancel("usr_a", job["job_id"])
    assert after["state"] == RUNNING
    assert after["cancel_requested"] is True
    assert after["attempt"] == 1
    assert jobs.get("usr_a", job["job_id"]) == after == jobs.get_by_id(job["job_id"])


@pytest.mark.parametrize("state", [SUCCEEDED, FAILED])
def test_cancelling_a_finished_job_fails(jobs, state):
    job = new_job(jobs)
    done = jobs.update(job["job_id"], lambda j: j.update(state=state))
    with pytest.raises(FailedPrecondition) as e:
        jobs.request_cancel("usr_a", job["job_id"])
    assert e.value.reason == "TRAINING_JOB_FINISHED"
    assert state in e.value.message
    assert jobs.get("usr_a", job["job_id"]) == done  # unchanged


def test_cancelling_twice_is_harmless(jobs):
    job = new_job(jobs)
    jobs.request_cancel("usr_a", job["job_id"])
    again = jobs.request_cancel("usr_a", job["job_id"])
    assert again["state"] == CANCELLED and again["cancel_requested"] is True


def test_update_reads_the_freshest_copy_and_writes_both_tables(jobs, store):
    job = new_job(jobs)
    # Someone else changed the job (in the by-id table, as a worker reads it).
    fresh = {**job, "progress": {**job["progress"], "trials_completed": 7}}
    store.put("jobs_by_id", job["job_id"], "", fresh)
    seen = []

    def change(j):
        seen.append(dict(j))
        j["state"] = RUNNING

    updated = jobs.update(job["job_id"], change)
    assert seen[0]["progress"]["trials_completed"] == 7  # read-modify-write, not overwrite
    assert updated["progress"]["trials_completed"] == 7
    assert updated["state"] == RUNNING
    assert updated["update_time"] >= job["update_time"]
    assert updated["create_time"] == job["create_time"]
    assert store.get("jobs_by_id", job["job_id"], "") == updated
    assert store.get("jobs_by_user", "usr_a", job["job_id"]) == updated


def test_an_exception_in_the_change_writes_nothing(jobs, store):
    job = new_job(jobs)

    def change(j):
        j["state"] = RUNNING
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        jobs.update(job["job_id"], change)
    assert store.get("jobs_by_id", job["job_id"], "") == job
    assert store.get("jobs_by_user", "usr_a", job["job_id"]) == job
