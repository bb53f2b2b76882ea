"""TrainerService: create/get/list/cancel/watch training jobs, list their trials."""

from nbml.v1 import common_pb2, trainer_service_pb2 as pb, trainer_service_pb2_grpc
from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.jobs import (TERMINAL, Jobs, check_job_request, holdout_fraction_of,
                                     raise_violations)
from nbml_server.domain.names import parse_name
from nbml_server.domain.paging import list_page
from nbml_server.platform.convert import text_params, timestamp
from nbml_server.platform.events import JobEventPublisher
from nbml_server.platform.interceptors import current_caller
from nbml_server.platform.job_watch import JobChangeNotifier

TASK_NAMES = {common_pb2.TASK_UNSPECIFIED: "auto", common_pb2.TASK_AUTO: "auto",
              common_pb2.TASK_CLASSIFICATION: "classification",
              common_pb2.TASK_REGRESSION: "regression"}
TASK_ENUMS = {"auto": common_pb2.TASK_AUTO, "classification": common_pb2.TASK_CLASSIFICATION,
              "regression": common_pb2.TASK_REGRESSION, "": common_pb2.TASK_UNSPECIFIED}
STATE_ENUMS = {"pending": pb.JOB_STATE_PENDING, "running": pb.JOB_STATE_RUNNING,
               "succeeded": pb.JOB_STATE_SUCCEEDED, "failed": pb.JOB_STATE_FAILED,
               "cancelled": pb.JOB_STATE_CANCELLED}
# Events wake a watch at once; without one (bus down) it re-reads this often.
WATCH_FALLBACK_SECONDS = 5.0


def job_message(job: dict) -> pb.TrainingJob:
    progress = job["progress"]
    return pb.TrainingJob(
        name=f"trainingJobs/{job['job_id']}", dataset=f"datasets/{job['dataset_id']}",
        target_column=job["target_column"], task=TASK_ENUMS[job["task"]], metric=job["metric"],
        budget_seconds=job["budget_seconds"], holdout_fraction=holdout_fraction_of(job),
        state=STATE_ENUMS[job["state"]],
        resolved_task=TASK_ENUMS[job["resolved_task"]], resolved_metric=job["resolved_metric"],
        progress=pb.JobProgress(trials_completed=progress["trials_completed"],
                                best_score=progress["best_score"],
                                elapsed_seconds=progress["elapsed_seconds"],
                                stage=progress["stage"]),
        error=job["error"], best_model=f"models/{job['best_model']}" if job["best_model"] else "",
        create_time=timestamp(job["create_time"]), update_time=timestamp(job["update_time"]),
        # Jobs recorded before these options existed have none.
        families=job.get("families", []), max_trials=job.get("max_trials", 0),
        initial_params=job.get("initial_params", {}))


def trial_message(job_id: str, trial: dict) -> pb.Trial:
    return pb.Trial(name=f"trainingJobs/{job_id}/trials/{trial['number']}",
                    number=trial["number"], family=trial["family"],
                    params=text_params(trial["params"]),
                    cv_score=trial["cv_score"] if trial["cv_score"] is not None else 0.0,
                    cv_score_std=trial.get("cv_score_std") or 0.0,
                    fit_seconds=trial["fit_seconds"], error=trial.get("error") or "",
                    finish_time=timestamp(trial.get("finish_time")))


class TrainerServicer(trainer_service_pb2_grpc.TrainerServiceServicer):
    def __init__(self, jobs: Jobs, datasets: DatasetCatalog, events: JobEventPublisher,
                 changes: JobChangeNotifier):
        self.jobs = jobs
        self.datasets = datasets
        self.events = events
        self.changes = changes

    def CreateTrainingJob(self, request, context):
        caller = current_caller()
        spec = request.training_job
        dataset_id = parse_name(spec.dataset, "datasets", "training_job.dataset")
        dataset = self.datasets.get(caller.user_id, dataset_id)
        task = TASK_NAMES.get(spec.task, "?")
        holdout = spec.holdout_fraction if spec.HasField("holdout_fraction") else None
        search_space = {"families": list(spec.families), "max_trials": spec.max_trials,
                        "initial_params": dict(spec.initial_params)}
        raise_violations(check_job_request(
            target_column=spec.target_column, task=task, metric=spec.metric,
            budget_seconds=spec.budget_seconds, holdout_fraction=holdout,
            columns=self.datasets.column_profiles(dataset), row_count=dataset["row_count"],
            **search_space))
        job = self.jobs.create(user_id=caller.user_id, dataset_id=dataset_id,
                               target_column=spec.target_column, task=task, metric=spec.metric,
                               budget_seconds=spec.budget_seconds, holdout_fraction=holdout,
                               **search_space)
        try:
            self.events.requested(job)
        except Exception:
            # No worker will ever hear of it: take the record back, leave nothing behind.
            self.jobs.discard(job)
            raise
        return job_message(job)

    def GetTrainingJob(self, request, context):
        return job_message(self._get(request.name))

    def ListTrainingJobs(self, request, context):
        page = self.jobs.list(current_caller().user_id, request.page_size, request.page_token)
        return pb.ListTrainingJobsResponse(training_jobs=[job_message(j) for j in page.rows],
                                           next_page_token=page.next_page_token)

    def CancelTrainingJob(self, request, context):
        job_id = parse_name(request.name, "trainingJobs", "name")
        job = self.jobs.request_cancel(current_caller().user_id, job_id)
        self.events.cancelled(job)
        return job_message(job)

    def WatchTrainingJob(self, request, context):
        job = self._get(request.name)
        seen = self.changes.version(job["job_id"])
        last_update = None
        while context.is_active():
            if job["update_time"] != last_update:
                last_update = job["update_time"]
                yield job_message(job)
            if job["state"] in TERMINAL:
                return
            seen = self.changes.wait_for_change(job["job_id"], seen, WATCH_FALLBACK_SECONDS)
            job = self.jobs.get(job["user_id"], job["job_id"])

    def ListTrials(self, request, context):
        job = self._get(request.parent, field="parent")
        page = list_page(self.jobs.store, "trials_by_job", job["job_id"],
                         page_size=request.page_size, page_token=request.page_token,
                         descending=False, default_page_size=100)
        return pb.ListTrialsResponse(trials=[trial_message(job["job_id"], t) for t in page.rows],
                                     next_page_token=page.next_page_token)

    def _get(self, name: str, field: str = "name") -> dict:
        return self.jobs.get(current_caller().user_id, parse_name(name, "trainingJobs", field))
