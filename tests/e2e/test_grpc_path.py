"""The user path over native gRPC (the Python client), through Envoy."""

import pytest

from nbml.v1 import trainer_service_pb2

pytestmark = pytest.mark.e2e


def test_sign_up_upload_train_leaderboard_deploy_predict(alice, trained, breast_cancer_features):
    job = trained["final_job"]
    assert job.state == trainer_service_pb2.JOB_STATE_SUCCEEDED
    assert job.resolved_metric == "roc_auc"
    assert job.progress.trials_completed >= 6

    board = alice.leaderboard(trained["job"])
    assert board.best_model == f"models/{trained['model']}"
    assert len(board.entries) >= 2
    best = board.entries[0]
    assert best.model.best and best.rank == 1
    assert best.evaluation.metrics["roc_auc"] >= 0.97
    for name in ("accuracy", "log_loss", "f1"):
        assert name in best.evaluation.metrics
    assert sum(best.evaluation.confusion_matrix.counts) == best.evaluation.holdout_rows
    assert best.evaluation.feature_importances
    families = {t.family for t in board.trials}
    assert len(families) >= 6, families
    assert all(t.fit_seconds >= 0 for t in board.trials)

    predictions = alice.predict(trained["endpoint"], breast_cancer_features.head(50))
    assert len(predictions) == 50
    assert set(predictions["prediction"]) <= {"malignant", "benign"}


def test_columns_predict_what_rows_do(alice, trained, breast_cancer_features):
    import numpy as np

    rows = breast_cancer_features.head(200)
    by_row = alice.predict(trained["endpoint"], rows)
    by_column = alice.predict_columns(trained["endpoint"], rows)
    assert alice.last_model == f"models/{trained['model']}"
    assert list(by_column) == list(by_row.columns)
    assert list(by_column["prediction"]) == list(by_row["prediction"])
    for name in ("probability_benign", "probability_malignant"):
        np.testing.assert_allclose(by_column[name], by_row[name], rtol=0, atol=1e-9)


def test_train_on_every_row_without_holdout(alice):
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=150), "c": rng.choice(["a", "b", "c"], 150)})
    frame["y"] = 3 * frame["x"] + (frame["c"] == "b") + rng.normal(scale=0.1, size=150)
    dataset = alice.upload_dataset(frame, name="no-holdout")
    job = alice.train(dataset.name, "y", budget_seconds=5, holdout_fraction=0)
    assert job.HasField("holdout_fraction") and job.holdout_fraction == 0.0
    final = alice.wait_for_job(job.name)
    assert final.state == trainer_service_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.holdout_fraction == 0.0 and final.best_model
    assert alice.get_job(job.name).holdout_fraction == 0.0

    board = alice.leaderboard(job.name)
    assert board.entries and board.best_model == final.best_model
    for entry in board.entries:
        assert entry.model.cv_score > 0  # rmse, cross-validated
        assert entry.evaluation.holdout_rows == 0 and not entry.evaluation.metrics
        assert not entry.evaluation.HasField("confusion_matrix")
        assert not entry.evaluation.feature_importances
    assert alice.evaluation(final.best_model).holdout_rows == 0
    predicted = alice.predict(alice.deploy(final.best_model).name, frame.drop(columns="y").head(3))
    assert len(predicted) == 3


def test_a_job_limited_to_one_family_started_from_given_params(alice, breast_cancer_features):
    """families / max_trials / initial_params, and the model downloaded as the very
    pipeline the endpoint serves."""
    import numpy as np
    from nbml_server.domain.automl import load_model

    dataset = alice.upload_dataset(breast_cancer_features.assign(
        target=(breast_cancer_features["mean radius"] > 14).map({True: "big", False: "small"})),
        name="one-family")
    job = alice.train(dataset.name, "target", budget_seconds=30, families=["random_forest"],
                      max_trials=1, initial_params={"random_forest.n_estimators": 30,
                                                    "random_forest.min_samples_leaf": 2})
    assert list(job.families) == ["random_forest"] and job.max_trials == 1
    assert dict(job.initial_params) == {"random_forest.n_estimators": "30",
                                        "random_forest.min_samples_leaf": "2"}
    final = alice.wait_for_job(job.name)
    assert final.state == trainer_service_pb2.JOB_STATE_SUCCEEDED, final.error
    board = alice.leaderboard(job.name)
    assert [t.family for t in board.trials] == ["random_forest"]
    assert board.trials[0].params["n_estimators"] == "30"
    assert board.trials[0].params["min_samples_leaf"] == "2"
    [entry] = board.entries
    pipeline = load_model(alice.download_model_bytes(entry.model.name))
    assert len(pipeline.named_steps["model"].estimators_) == 30
    rows = breast_cancer_features.head(20)
    served = alice.predict(alice.deploy(entry.model.name).name, rows)
    np.testing.assert_allclose(served["probability_big"],
                               pipeline.predict_proba(rows)[:, list(pipeline.classes_).index("big")])


def test_bad_search_options_are_refused_with_the_field(alice, trained):
    from nbml.errors import NbmlError

    cases = [({"families": ["random_forest", "gradient_magic"]}, "training_job.families[1]"),
             ({"max_trials": -1}, "training_job.max_trials"),
             ({"initial_params": {"n_estimators": 5}}, "training_job.initial_params[n_estimators]")]
    for options, field in cases:
        with pytest.raises(NbmlError) as caught:
            alice.train(trained["dataset"], "target", budget_seconds=5, **options)
        assert caught.value.code == "INVALID_ARGUMENT"
        assert field in [v.field for v in caught.value.field_violations], caught.value
    # A parameter the family does not have fails the job, saying which.
    job = alice.train(trained["dataset"], "target", budget_seconds=5, families=["knn"],
                      initial_params={"knn.n_trees": 3})
    final = alice.wait_for_job(job.name)
    assert final.state == trainer_service_pb2.JOB_STATE_FAILED
    assert "knn has no parameter 'n_trees'" in final.error


def test_stream_and_batch_predict(alice, trained, breast_cancer_features):
    frames = [breast_cancer_features.iloc[i:i + 10] for i in range(0, 30, 10)]
    streamed = list(alice.predict_stream(trained["endpoint"], frames))
    assert [len(f) for f in streamed] == [10, 10, 10]

    output = alice.batch_predict(trained["endpoint"], trained["dataset"])
    assert output.row_count == 569
    preview = alice.preview(output.name.split("/")[-1], rows=5)
    assert {"prediction", "probability_benign", "probability_malignant"} <= set(preview.columns)


def test_history_records_every_request(alice, trained):
    activities = alice.activities(limit=200)
    methods = {a.method for a in activities}
    assert "/nbml.v1.DatasetService/UploadDataset" in methods
    assert "/nbml.v1.TrainerService/CreateTrainingJob" in methods
    assert "/nbml.v1.PredictorService/Predict" in methods
    assert all(a.status for a in activities)


def test_api_key_works_for_scripts(platform, alice):
    from nbml.client import Client
    secret = alice.create_api_key("ci script")
    with Client(platform.address, secret) as script:
        assert script.whoami().username == "alice"


def test_cancel_a_running_job(alice, trained):
    job = alice.train(trained["dataset"], "target", budget_seconds=300)
    job_id = job.name.split("/")[-1]
    for update in alice.watch_job(job_id):
        if update.progress.trials_completed >= 2:
            break
    alice.cancel_job(job_id)
    final = alice.wait_for_job(job_id)
    assert final.state == trainer_service_pb2.JOB_STATE_CANCELLED
    assert final.progress.stage == "cancelled"
    # The job keeps its best finished trial as its one model.
    assert final.resolved_metric == "roc_auc"
    best = max((t for t in alice.trials(job_id) if not t.error), key=lambda t: t.cv_score)
    [model] = alice.models(job_id)
    assert (model.family, model.cv_score) == (best.family, best.cv_score)
    assert final.best_model == model.name


def test_parquet_upload_and_profile(alice):
    import pandas as pd
    frame = pd.DataFrame({"when": pd.date_range("2024-01-01", periods=30, freq="D"),
                          "city": ["Paris", "Lyon", None] * 10,
                          "price": [float(i) for i in range(30)]})
    dataset = alice.upload_dataset(frame, name="frame")
    assert dataset.row_count == 30
    types = {c.name: c.type for c in dataset.profile.columns}
    from nbml.v1 import common_pb2
    assert types == {"when": common_pb2.COLUMN_TYPE_DATETIME,
                     "city": common_pb2.COLUMN_TYPE_CATEGORICAL,
                     "price": common_pb2.COLUMN_TYPE_NUMERIC}
    city = next(c for c in dataset.profile.columns if c.name == "city")
    assert abs(city.missing_rate - 1 / 3) < 1e-9
