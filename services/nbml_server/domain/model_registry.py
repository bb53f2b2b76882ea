"""Models a job produced: records in `models_by_user` / `models_by_job`, skops artifacts
under `users/{user}/models/{id}/model.skops`, and holdout evaluations."""

import time
from dataclasses import asdict, dataclass

from nbml_server.domain.paging import Page, list_page
from nbml_server.errors import NotFound
from nbml_server.ports.blob_store import BlobStore
from nbml_server.ports.table_store import TableStore


def artifact_key(user_id: str, model_id: str) -> str:
    return f"users/{user_id}/models/{model_id}/model.skops"


def holdout_key(user_id: str, job_id: str) -> str:
    return f"users/{user_id}/jobs/{job_id}/holdout.parquet"


@dataclass(frozen=True)
class StoredEvaluation:
    metrics: dict[str, float]
    confusion_labels: list[str]
    confusion_counts: list[int]
    # (column, mean importance, std), most important first.
    feature_importances: list[tuple[str, float, float]]
    holdout_rows: int


class ModelRegistry:
    def __init__(self, store: TableStore, blobs: BlobStore):
        self.store = store
        self.blobs = blobs

    def add(self, record: dict, artifact: bytes) -> dict:
        """Stores the artifact, then the record (so no record points at nothing)."""
        key = artifact_key(record["user_id"], record["model_id"])
        self.blobs.put(key, artifact)
        record = {**record, "artifact_key": key, "create_time": time.time()}
        self.store.put("models_by_job", record["job_id"], record["model_id"], record)
        self.store.put("models_by_user", record["user_id"], record["model_id"], record)
        return record

    def remove_job_models(self, user_id: str, job_id: str) -> None:
        """Removes every model a job stored (records first, then artifacts)."""
        for record in self.list_by_job(job_id).rows:
            model_id = record["model_id"]
            self.store.delete("models_by_user", user_id, model_id)
            self.store.delete("models_by_job", job_id, model_id)
            self.store.delete("evaluations_by_model", model_id, "")
            self.blobs.delete_prefix(f"users/{user_id}/models/{model_id}/")

    def get(self, user_id: str, model_id: str) -> dict:
        record = self.store.get("models_by_user", user_id, model_id)
        if record is None:
            raise NotFound(f"models/{model_id} not found", reason="MODEL_NOT_FOUND")
        return record

    def list(self, user_id: str, page_size: int, page_token: str) -> Page:
        return list_page(self.store, "models_by_user", user_id, page_size=page_size,
                         page_token=page_token)

    def list_by_job(self, job_id: str, page_size: int = 1000, page_token: str = "") -> Page:
        return list_page(self.store, "models_by_job", job_id, page_size=page_size,
                         page_token=page_token, descending=False)

    def artifact(self, record: dict) -> bytes:
        return self.blobs.get(record["artifact_key"])

    def evaluation(self, model_id: str) -> StoredEvaluation | None:
        row = self.store.get("evaluations_by_model", model_id, "")
        if row is None:
            return None
        row["feature_importances"] = [tuple(x) for x in row["feature_importances"]]
        return StoredEvaluation(**row)

    def save_evaluation(self, model_id: str, evaluation: StoredEvaluation) -> None:
        self.store.put("evaluations_by_model", model_id, "", asdict(evaluation))
