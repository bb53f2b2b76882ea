"""Stored evaluations of a job's models, including a job that kept no holdout."""

import numpy as np
import pandas as pd

from nbml_server.adapters.local_blob_store import LocalBlobStore
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.domain.automl import LEARNERS, LearnerContext, build_pipeline, save_model
from nbml_server.domain.datasets import write_canonical
from nbml_server.domain.evaluations import Evaluations
from nbml_server.domain.model_registry import ModelRegistry, holdout_key

TYPES = {"x": "numeric"}


def registry_with_model(tmp_path, holdout: pd.DataFrame) -> tuple[ModelRegistry, dict]:
    models = ModelRegistry(SqliteTableStore(tmp_path / "db.sqlite"),
                           LocalBlobStore(tmp_path / "blobs"))
    X = pd.DataFrame({"x": np.random.default_rng(0).normal(size=40)})
    ctx = LearnerContext(task="regression", n_rows=len(X), n_jobs=1)
    pipeline = build_pipeline(LEARNERS["ridge"], {"alpha": 1.0}, ctx, TYPES, TYPES)
    pipeline.fit(X, X["x"] * 2)
    models.blobs.put(holdout_key("usr_1", "job_1"), write_canonical(holdout))
    model = models.add({"model_id": "mdl_1", "user_id": "usr_1", "job_id": "job_1",
                        "task": "regression", "metric": "rmse", "target_column": "y",
                        "holdout_key": holdout_key("usr_1", "job_1")}, save_model(pipeline))
    return models, model


def test_a_job_without_holdout_has_an_empty_evaluation(tmp_path):
    models, model = registry_with_model(tmp_path, pd.DataFrame(
        {"x": pd.Series([], dtype=float), "y": pd.Series([], dtype=float)}))
    evaluation = Evaluations(models).of(model)
    assert evaluation.holdout_rows == 0 and evaluation.metrics == {}
    assert evaluation.confusion_labels == [] and evaluation.confusion_counts == []
    assert evaluation.feature_importances == []
    assert models.evaluation("mdl_1") == evaluation  # stored like any other


def test_a_job_with_holdout_is_measured(tmp_path):
    x = np.linspace(-1, 1, 20)
    models, model = registry_with_model(tmp_path, pd.DataFrame({"x": x, "y": x * 2}))
    evaluation = Evaluations(models).of(model)
    assert evaluation.holdout_rows == 20
    assert set(evaluation.metrics) == {"rmse", "mae", "r2"}
    assert evaluation.metrics["rmse"] < 0.1
