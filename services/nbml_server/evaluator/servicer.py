"""EvaluatorService: leaderboards and model evaluations."""

from google.api import httpbody_pb2

from nbml.v1 import evaluator_service_pb2 as pb, evaluator_service_pb2_grpc
from nbml_server.dataset.servicer import DOWNLOAD_CHUNK_BYTES
from nbml_server.domain.evaluations import Evaluations
from nbml_server.domain.jobs import Jobs
from nbml_server.domain.model_registry import ModelRegistry, StoredEvaluation
from nbml_server.domain.names import parse_name
from nbml_server.domain.paging import list_page
from nbml_server.platform.convert import text_params, timestamp
from nbml_server.platform.interceptors import current_caller
from nbml_server.trainer.servicer import TASK_ENUMS, trial_message


def model_message(model: dict) -> pb.Model:
    return pb.Model(
        name=f"models/{model['model_id']}", training_job=f"trainingJobs/{model['job_id']}",
        family=model["family"], params=text_params(model["params"]),
        task=TASK_ENUMS[model["task"]], metric=model["metric"], cv_score=model["cv_score"],
        feature_columns=model["feature_columns"], target_column=model["target_column"],
        classes=model["classes"], create_time=timestamp(model["create_time"]),
        best=model["best"],
        # Models stored before ranking notes existed have none.
        ranking_note=model.get("ranking_note", ""))


def evaluation_message(model_id: str, evaluation: StoredEvaluation) -> pb.ModelEvaluation:
    return pb.ModelEvaluation(
        name=f"models/{model_id}/evaluation", metrics=evaluation.metrics,
        confusion_matrix=pb.ConfusionMatrix(labels=evaluation.confusion_labels,
                                            counts=evaluation.confusion_counts)
        if evaluation.confusion_labels else None,
        feature_importances=[pb.FeatureImportance(column=c, importance=m, importance_std=s)
                             for c, m, s in evaluation.feature_importances],
        holdout_rows=evaluation.holdout_rows)


class EvaluatorServicer(evaluator_service_pb2_grpc.EvaluatorServiceServicer):
    def __init__(self, jobs: Jobs, models: ModelRegistry, evaluations: Evaluations):
        self.jobs = jobs
        self.models = models
        self.evaluations = evaluations

    def GetLeaderboard(self, request, context):
        caller = current_caller()
        job_id = parse_name(request.name, "trainingJobs", "name", suffix="/leaderboard")
        job = self.jobs.get(caller.user_id, job_id)
        models = sorted(self.models.list_by_job(job_id).rows, key=lambda m: m["rank"])
        trials = list_page(self.jobs.store, "trials_by_job", job_id, page_size=1000,
                           page_token="", descending=False).rows
        return pb.Leaderboard(
            name=f"trainingJobs/{job_id}/leaderboard",
            metric=job["resolved_metric"] or job["metric"],
            entries=[pb.LeaderboardEntry(
                rank=m["rank"], model=model_message(m),
                evaluation=evaluation_message(m["model_id"], self.evaluations.of(m)))
                for m in models],
            best_model=f"models/{job['best_model']}" if job["best_model"] else "",
            trials=[trial_message(job_id, t) for t in trials])

    def GetModel(self, request, context):
        return model_message(self._get(request.name))

    def ListModels(self, request, context):
        caller = current_caller()
        if request.training_job:
            job_id = parse_name(request.training_job, "trainingJobs", "training_job")
            self.jobs.get(caller.user_id, job_id)  # NOT_FOUND for another user's job
            page = self.models.list_by_job(job_id, request.page_size or 50, request.page_token)
        else:
            page = self.models.list(caller.user_id, request.page_size, request.page_token)
        return pb.ListModelsResponse(models=[model_message(m) for m in page.rows],
                                     next_page_token=page.next_page_token)

    def DownloadModel(self, request, context):
        data = self.models.artifact(self._get(request.name))
        for start in range(0, max(len(data), 1), DOWNLOAD_CHUNK_BYTES):
            yield httpbody_pb2.HttpBody(content_type="application/octet-stream",
                                        data=data[start:start + DOWNLOAD_CHUNK_BYTES])

    def GetModelEvaluation(self, request, context):
        model = self._get(request.name, suffix="/evaluation")
        return evaluation_message(model["model_id"], self.evaluations.of(model))

    def _get(self, name: str, suffix: str = "") -> dict:
        return self.models.get(current_caller().user_id,
                               parse_name(name, "models", "name", suffix=suffix))
