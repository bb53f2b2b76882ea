"""Runs one training job end to end: data -> search -> models -> job record.

Idempotent per job: a job already ended is skipped, so a redelivered event is harmless;
a job found RUNNING was left by a worker that died, and is run again as a new attempt.
The worker running a job coordinates its search; the trials run where `executor_for`
sends them (every worker's trial runner, over the bus: `trial_fanout`), or in this
thread without it.
"""

import logging
import time
from collections.abc import Callable

from nbml_server.domain import automl
from nbml_server.domain.automl.search import ExecutorFactory
from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.datasets import write_canonical
from nbml_server.domain.jobs import (CANCELLED, FAILED, RUNNING, SUCCEEDED, TERMINAL, Jobs,
                                     holdout_fraction_of)
from nbml_server.domain.model_registry import ModelRegistry, holdout_key
from nbml_server.errors import DomainError, Unavailable
from nbml_server.ids import new_id
from nbml_server.platform.events import JobEventPublisher

log = logging.getLogger("nbml.worker")
MAX_ATTEMPTS = 3
# Checking the job record for cancellation costs a store read; once a second is plenty.
CANCEL_CHECK_SECONDS = 1.0


def search_request(job: dict, datasets: DatasetCatalog) -> automl.SearchRequest:
    """The AutoML search a job record asks for. The coordinator and every trial runner
    build it alike, so `automl.prepare_trials` gives them the same rows and folds."""
    dataset = datasets.get(job["user_id"], job["dataset_id"])
    frame = datasets.load_frame(dataset)
    # The profile's inference, done once at upload, as the model reads it.
    column_types = {c: automl.model_column_type(frame[c], p["type"])
                    for c, p in datasets.column_profiles(dataset).items() if c in frame}
    return automl.SearchRequest(frame=frame, target=job["target_column"], task=job["task"],
                                metric=job["metric"] or None,
                                budget_seconds=float(job["budget_seconds"]),
                                holdout_fraction=holdout_fraction_of(job),
                                column_types=column_types,
                                families=job.get("families") or None,
                                max_trials=job.get("max_trials") or None,
                                initial_params=job.get("initial_params") or {})


class JobRunner:
    def __init__(self, jobs: Jobs, datasets: DatasetCatalog, models: ModelRegistry,
                 events: JobEventPublisher, worker_name: str = "",
                 executor_for: Callable[[dict], ExecutorFactory] | None = None):
        self.worker_name = worker_name  # recorded on the job: which worker runs it
        self.jobs = jobs
        self.datasets = datasets
        self.models = models
        self.events = events
        # job record -> the `executor=` of run_search; None: trials in this thread.
        self.executor_for = executor_for

    def run(self, job_id: str) -> None:
        job = self.jobs.get_by_id(job_id)
        if job is None or job["state"] in TERMINAL:
            return
        if job["attempt"] >= MAX_ATTEMPTS:
            self._fail(job_id, f"the job was interrupted {job['attempt']} times; giving up")
            return
        job = self.jobs.update(job_id, lambda j: j.update(
            state=RUNNING, attempt=j["attempt"] + 1, worker=self.worker_name,
            progress={**j["progress"], "stage": "loading data"}))
        self.events.progressed(job)
        try:
            self._search_and_store(job)
        except Unavailable:
            raise  # a backend hiccup is not the job's fault: it is delivered again
        except DomainError as error:
            self._fail(job_id, error.message)
        except Exception as error:
            log.exception("job %s failed", job_id)
            self._fail(job_id, f"internal error in the worker: {type(error).__name__}")
            raise

    def _search_and_store(self, job: dict) -> None:
        job_id = job["job_id"]
        request = search_request(job, self.datasets)
        started = time.monotonic()

        def on_trial(trial: automl.TrialResult) -> None:
            row = {"number": trial.number, "family": trial.family, "params": trial.params,
                   "cv_score": trial.cv_score, "cv_score_std": trial.cv_score_std,
                   "fit_seconds": trial.fit_seconds, "error": trial.error,
                   "finish_time": time.time(),
                   # Who ran it ("" when lost); trials run in this thread are ours.
                   "worker": trial.worker or ("" if self.executor_for else self.worker_name)}
            self.jobs.store.put("trials_by_job", job_id, f"{trial.number:06d}", row)
            self.events.trial_completed(job, row)

        def on_progress(trials_completed: int, best_score: float | None, stage: str) -> None:
            updated = self.jobs.update(job_id, lambda j: j.update(progress={
                "trials_completed": trials_completed,
                "best_score": best_score if best_score is not None else 0.0,
                "elapsed_seconds": time.monotonic() - started, "stage": stage}))
            self.events.progressed(updated)

        result = automl.run_search(
            request, on_trial=on_trial, on_progress=on_progress,
            should_stop=self._cancel_checker(job_id),
            executor=self.executor_for(job) if self.executor_for is not None else None)
        model_ids = self._store_models(job, result)
        cancelled = self.jobs.get_by_id(job_id)["cancel_requested"]
        best = result.models[0] if result.models else None
        final = self.jobs.update(job_id, lambda j: j.update(
            state=CANCELLED if cancelled else SUCCEEDED,
            resolved_task=result.task, resolved_metric=result.metric,
            best_model=model_ids[0] if model_ids else "",
            progress={"trials_completed": len(result.trials),
                      "best_score": best.cv_score if best else 0.0,
                      "elapsed_seconds": time.monotonic() - started,
                      "stage": "cancelled" if cancelled else "done"}))
        if not cancelled and not model_ids:
            self._fail(job_id, "no trial finished within the budget; try a larger budget")
            return
        self.events.completed(final, model_ids)

    def _store_models(self, job: dict, result) -> list[str]:
        user_id, job_id = job["user_id"], job["job_id"]
        # An attempt interrupted after storing models must not leave them beside ours.
        self.models.remove_job_models(user_id, job_id)
        self.models.blobs.put(holdout_key(user_id, job_id), write_canonical(result.holdout_frame))
        model_ids = []
        for rank, fitted in enumerate(result.models, start=1):
            model_id = new_id("mdl")
            self.models.add({
                "model_id": model_id, "user_id": user_id, "job_id": job_id,
                "family": fitted.family, "params": fitted.params, "task": result.task,
                "metric": result.metric, "greater_is_better": result.greater_is_better,
                "cv_score": fitted.cv_score, "cv_score_std": fitted.cv_score_std,
                "feature_columns": list(result.feature_columns),
                "target_column": job["target_column"], "classes": list(result.classes or []),
                "rank": rank, "best": rank == 1, "ranking_note": fitted.ranking_note,
                "holdout_key": holdout_key(user_id, job_id)},
                automl.save_model(fitted.pipeline))
            model_ids.append(model_id)
        return model_ids

    def _cancel_checker(self, job_id: str):
        last_check, cancelled = 0.0, False

        def should_stop() -> bool:
            nonlocal last_check, cancelled
            if not cancelled and time.monotonic() - last_check >= CANCEL_CHECK_SECONDS:
                last_check = time.monotonic()
                job = self.jobs.get_by_id(job_id)
                cancelled = job is None or bool(job["cancel_requested"])
            return cancelled
        return should_stop

    def _fail(self, job_id: str, message: str) -> None:
        job = self.jobs.update(job_id, lambda j: j.update(
            state=FAILED, error=message, progress={**j["progress"], "stage": "failed"}))
        self.events.failed(job)
