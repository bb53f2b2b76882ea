"""Per-user limits over the real SQLite table store and folder blob store: running jobs,
storage (while an upload streams in, and when a data set is added), including creations
racing past the first check; and batch predictions in slices of the row limit."""

import itertools

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from nbml_server.adapters.local_blob_store import LocalBlobStore
from nbml_server.adapters.sqlite_table_store import SqliteTableStore
from nbml_server.domain.automl import LEARNERS, LearnerContext, build_pipeline, save_model
from nbml_server.domain.dataset_catalog import DatasetCatalog, StorageLimits
from nbml_server.domain.jobs import Jobs
from nbml_server.domain.serving import ModelCache, Predictor, predictions_of
from nbml_server.errors import InvalidArgument, ResourceExhausted


@pytest.fixture
def blobs(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


def create_job(jobs: Jobs, user: str = "usr_a") -> dict:
    return jobs.create(user_id=user, dataset_id="ds_1", target_column="y", task="auto",
                       metric="", budget_seconds=30)


# -- running jobs --------------------------------------------------------------------------

def test_the_job_over_the_limit_is_refused_saying_how_many_run(store):
    jobs = Jobs(store, max_running_per_user=2)
    create_job(jobs), create_job(jobs)
    with pytest.raises(ResourceExhausted) as caught:
        create_job(jobs)
    assert caught.value.reason == "TOO_MANY_RUNNING_JOBS"
    assert "2 of your training jobs are queued or running and at most 2" in caught.value.message
    assert len(store.scan("jobs_by_user", "usr_a", limit=10)) == 2
    create_job(jobs, user="usr_b")  # another user's jobs do not count


def test_ended_and_cancelled_jobs_make_room(store):
    jobs = Jobs(store, max_running_per_user=2)
    running, pending = create_job(jobs), create_job(jobs)
    jobs.update(running["job_id"], lambda job: job.update(state="running"))
    jobs.request_cancel("usr_a", running["job_id"])  # still running until its worker stops
    jobs.update(pending["job_id"], lambda job: job.update(state="succeeded"))
    create_job(jobs), create_job(jobs)
    with pytest.raises(ResourceExhausted):
        create_job(jobs)


def test_the_limit_is_counted_from_the_store_not_one_process(store):
    first, second = Jobs(store, max_running_per_user=2), Jobs(store, max_running_per_user=2)
    create_job(first), create_job(second)
    with pytest.raises(ResourceExhausted):
        create_job(first)


class JobWrittenMeanwhile(SqliteTableStore):
    """Another process writes a job of the user just after this one counted (its first
    check passed) and before it writes its own."""

    def put(self, table, partition, key, row):
        if table == "jobs_by_id" and not getattr(self, "raced", False):
            self.raced = True
            create_job(Jobs(self))
        super().put(table, partition, key, row)


def test_of_two_racing_creations_none_passes_the_limit(tmp_path):
    store = JobWrittenMeanwhile(tmp_path / "store.db")
    jobs = Jobs(store, max_running_per_user=1)
    with pytest.raises(ResourceExhausted):
        create_job(jobs)
    [left] = jobs.running("usr_a")  # the other process's; this one was taken back
    assert store.scan("jobs_by_user", "usr_a", limit=10) == [(left["job_id"], left)]
    store.close()


# -- storage -------------------------------------------------------------------------------

def csv_bytes(rows: int) -> bytes:
    return pd.DataFrame({"x": range(rows), "y": ["a", "b"] * (rows // 2)}).to_csv(
        index=False).encode()


def upload(catalog: DatasetCatalog, data: bytes, user: str = "usr_a") -> dict:
    chunks = (data[i:i + 100] for i in range(0, len(data), 100))
    return catalog.upload(user, catalog.receive(user, chunks), display_name="d", format="csv",
                          rules=None)


def endless_chunks(consumed: list):
    for number in itertools.count():
        consumed.append(number)
        yield b"x" * 100


def test_an_upload_over_the_file_limit_is_refused_while_it_streams(store, blobs):
    catalog = DatasetCatalog(store, blobs, StorageLimits(file_bytes=1000, user_bytes=10_000))
    consumed = []
    with pytest.raises(InvalidArgument) as caught:
        catalog.receive("usr_a", endless_chunks(consumed))
    assert (caught.value.reason, caught.value.violations[0].field) == ("FILE_TOO_LARGE", "chunk")
    assert len(consumed) == 11  # the chunk that passed 1000 bytes, not one more


def test_an_upload_over_the_storage_left_is_refused_while_it_streams(store, blobs):
    catalog = DatasetCatalog(store, blobs, StorageLimits(file_bytes=10_000, user_bytes=1500))
    used = upload(catalog, csv_bytes(100))["size_bytes"]
    consumed = []
    with pytest.raises(ResourceExhausted) as caught:
        catalog.receive("usr_a", endless_chunks(consumed))
    assert caught.value.reason == "STORAGE_QUOTA_EXCEEDED"
    assert (f"your data sets take {used} of your 1500 bytes and this upload is larger than "
            f"the {1500 - used} bytes left") in caught.value.message
    assert len(consumed) == (1500 - used) // 100 + 1  # up to the chunk that passed it
    upload(catalog, csv_bytes(100), user="usr_b")  # another user's storage is their own


def test_deleting_a_data_set_makes_room(store, blobs):
    data = csv_bytes(100)
    catalog = DatasetCatalog(store, blobs, StorageLimits(file_bytes=10_000,
                                                         user_bytes=2 * len(data)))
    first = upload(catalog, data)
    upload(catalog, data)
    with pytest.raises(ResourceExhausted):
        upload(catalog, data)
    catalog.delete("usr_a", first["dataset_id"])
    upload(catalog, data)
    assert catalog.storage_used("usr_a") == 2 * len(data)


def test_an_added_data_set_counts_its_parquet_file_and_is_refused_when_it_does_not_fit(
        store, blobs, tmp_path):
    rng = np.random.default_rng(0)  # random floats: about 8 bytes each in Parquet
    catalog = DatasetCatalog(store, blobs, StorageLimits(file_bytes=10_000, user_bytes=30_000))
    added = catalog.add("usr_a", pd.DataFrame({"x": rng.normal(size=1000)}),
                        display_name="out", format="parquet")
    assert added["size_bytes"] == len(blobs.get(added["blob_key"]))
    with pytest.raises(ResourceExhausted) as caught:
        catalog.add("usr_a", pd.DataFrame({"x": rng.normal(size=5000)}), display_name="big",
                    format="parquet")
    assert "this data set needs" in caught.value.message
    assert [r["dataset_id"] for _, r in store.scan("datasets_by_user", "usr_a", limit=10)] == [
        added["dataset_id"]]
    assert sorted(p.name for p in (tmp_path / "blobs").rglob("*.parquet")) == ["data.parquet"]


class DatasetAddedMeanwhile(SqliteTableStore):
    """Another process adds a data set of the user just after this one checked the
    storage left and before it writes its record."""

    def __init__(self, path, other: DatasetCatalog | None = None):
        super().__init__(path)
        self.other = other

    def put(self, table, partition, key, row):
        other, self.other = self.other, None
        if table == "datasets_by_user" and other is not None:
            other.add(partition, pd.DataFrame({"x": [1.0]}), display_name="other",
                      format="csv", size_bytes=600)
        super().put(table, partition, key, row)


def test_of_two_racing_additions_none_passes_the_limit(tmp_path, blobs):
    limits = StorageLimits(file_bytes=10_000, user_bytes=1000)
    store = DatasetAddedMeanwhile(tmp_path / "store.db")
    store.other = DatasetCatalog(SqliteTableStore(tmp_path / "store.db"), blobs, limits)
    catalog = DatasetCatalog(store, blobs, limits)
    with pytest.raises(ResourceExhausted):
        catalog.add("usr_a", pd.DataFrame({"x": [2.0]}), display_name="mine", format="csv",
                    size_bytes=600)
    assert [r["display_name"] for _, r in store.scan("datasets_by_user", "usr_a", limit=10)] == [
        "other"]
    assert len(list((tmp_path / "blobs").rglob("*.parquet"))) == 1
    store.close()


# -- batch predictions in slices -----------------------------------------------------------

class Records:
    """What the Predictor reads of Endpoints, ModelRegistry and DatasetCatalog."""

    def __init__(self, record: dict, frame: pd.DataFrame | None = None):
        self.record, self.frame = record, frame

    def get(self, user_id: str, record_id: str) -> dict:
        return self.record

    def load_frame(self, record: dict) -> pd.DataFrame:
        return self.frame

    def add(self, user_id: str, frame: pd.DataFrame, **fields) -> dict:
        return {"frame": frame, **fields}


class Artifact:
    def __init__(self, data: bytes):
        self.data = data

    def artifact(self, record: dict) -> bytes:
        return self.data


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_batch_prediction_in_slices_predicts_what_one_call_does(task):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=30), "colour": rng.choice(["red", "blue"], 30)})
    types = {"x": "numeric", "colour": "categorical"}
    if task == "classification":
        learner, params = LEARNERS["logistic_regression"], {"C": 1.0, "class_weight": None}
        y = np.where(frame["x"] > 0, "yes", "no").astype(object)
        context = LearnerContext(task=task, n_rows=30, n_classes=2, min_class_count=10,
                                 n_jobs=1)
    else:
        learner, params, y = LEARNERS["ridge"], {"alpha": 1.0}, 3 * frame["x"] + 1
        context = LearnerContext(task=task, n_rows=30, n_jobs=1)
    with threadpool_limits(1):
        pipeline = build_pipeline(learner, params, context, types, types).fit(frame, y)
    model = {"model_id": "mdl_1", "task": task, "feature_columns": ["x", "colour"],
             "classes": ["no", "yes"] if task == "classification" else []}
    predictor = Predictor(Records({"model_id": "mdl_1"}), Records(model),
                          Records({"display_name": "d"}, frame.assign(id=range(30))),
                          ModelCache(Artifact(save_model(pipeline)), capacity=1,
                                     run_later=lambda work: None), max_rows=7)
    output = predictor.batch_predict("usr_a", "ep_1", "ds_1")["frame"]
    expected = predictions_of(pipeline, model, frame)
    assert list(output["id"]) == list(range(30))
    if task == "classification":
        assert list(output["prediction"]) == [p.label for p in expected]
        np.testing.assert_allclose(output["probability_yes"],
                                   [p.probabilities["yes"] for p in expected])
    else:
        np.testing.assert_allclose(output["prediction"], [p.value for p in expected])
