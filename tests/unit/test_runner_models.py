"""A job's models are stored once, even when a retried attempt stores them again."""

import types

import numpy as np
import pandas as pd

from nbml_server.adapters.local_blob_store import LocalBlobStore
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.domain.automl import LEARNERS, FittedModel, LearnerContext, build_pipeline
from nbml_server.domain.dataset_catalog import DatasetCatalog
from nbml_server.domain.jobs import Jobs
from nbml_server.domain.model_registry import ModelRegistry
from nbml_server.evaluator.servicer import model_message
from nbml_server.worker.runner import JobRunner

TYPES = {"x": "numeric"}


class NoEvents:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def search_result():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=40)})
    y = X["x"] * 2
    ctx = LearnerContext(task="regression", n_rows=len(X), n_jobs=1)
    pipeline = build_pipeline(LEARNERS["ridge"], {"alpha": 1.0}, ctx, TYPES, TYPES).fit(X, y)
    models = [FittedModel("ridge", {}, 1.0, 0.1, pipeline, 0),
              FittedModel("ridge", {}, 1.1, 0.1, pipeline, 1)]
    return types.SimpleNamespace(task="regression", metric="rmse", greater_is_better=False,
                                 feature_columns=["x"], classes=[],
                                 holdout_frame=X.assign(y=y), models=models)


def test_a_retried_attempt_replaces_the_models_of_the_interrupted_one(tmp_path):
    store, blobs = SqliteTableStore(tmp_path / "db.sqlite"), LocalBlobStore(tmp_path / "blobs")
    models = ModelRegistry(store, blobs)
    runner = JobRunner(Jobs(store), DatasetCatalog(store, blobs), models, NoEvents())
    job = {"user_id": "usr_1", "job_id": "job_1", "target_column": "y"}
    result = search_result()

    first = runner._store_models(job, result)
    second = runner._store_models(job, result)

    stored = [m["model_id"] for m in models.list_by_job("job_1").rows]
    assert sorted(stored) == sorted(second) and not set(first) & set(second)
    assert [m["model_id"] for m in models.list("usr_1", 0, "").rows] == sorted(second, reverse=True)
    artifacts = [k for k in blobs.list("users/usr_1/models/")]
    assert sorted(artifacts) == sorted(f"users/usr_1/models/{m}/model.skops" for m in second)


def test_a_ranking_note_is_stored_with_the_model_and_served(tmp_path):
    store, blobs = SqliteTableStore(tmp_path / "db.sqlite"), LocalBlobStore(tmp_path / "blobs")
    models = ModelRegistry(store, blobs)
    runner = JobRunner(Jobs(store), DatasetCatalog(store, blobs), models, NoEvents())
    result = search_result()
    result.models[0].ranking_note = "ranked first, as the simplest model ..."
    ids = runner._store_models({"user_id": "usr_1", "job_id": "job_1", "target_column": "y"},
                               result)

    first, second = (models.get("usr_1", model_id) for model_id in ids)
    assert model_message(first).ranking_note == "ranked first, as the simplest model ..."
    assert model_message(second).ranking_note == ""
    del first["ranking_note"]  # a model stored before the notes existed
    assert model_message(first).ranking_note == ""
