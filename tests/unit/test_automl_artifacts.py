"""AutoML: skops artifacts round trip, and refusal of types outside the allowlist."""

import builtins
import io
import json
import operator
import os
import pathlib
import pickle
import zipfile

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from nbml_server.domain.automl import (ALLOWED_TYPES, LearnerContext, load_model,
                                       rows_to_frame, save_model)
from nbml_server.domain.automl.packed_trees import PackedTrees
from nbml_server.errors import FailedPrecondition
from tests.unit.pipeline_helpers import default_pipelines

TYPES = {"n": "numeric", "c": "categorical", "b": "boolean", "d": "datetime", "t": "text"}


def frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "n": rng.normal(size=n),
        "c": rng.choice(["u", "v", "w", None], n),
        "b": rng.choice([True, False], n),
        "d": pd.date_range("2023-01-01 08:00", periods=n, freq="7h").strftime("%Y-%m-%d %H:%M"),
        "t": [f"free text {i} " * (i % 4 + 1) for i in range(n)],
    })


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_every_family_round_trips(task):
    X = frame()
    rng = np.random.default_rng(1)
    y = (rng.choice(["p", "q", "r"], len(X)).astype(object) if task == "classification"
         else X["n"].to_numpy() * 2 + rng.normal(size=len(X)))
    ctx = LearnerContext(task=task, n_rows=len(X), n_classes=3, min_class_count=10, n_jobs=1)
    new_rows = rows_to_frame([{"n": "0.5", "c": "unseen", "b": "false", "d": "2023-02-01"}],
                             list(TYPES))
    for name, pipe in default_pipelines(ctx, X, y, TYPES):
        restored = load_model(save_model(pipe))  # every type it holds is allowed
        method = "predict_proba" if task == "classification" else "predict"
        np.testing.assert_allclose(getattr(restored, method)(new_rows),
                                   getattr(pipe, method)(new_rows), err_msg=name)


class Sneaky(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X


def test_disallowed_type_is_refused():
    data = sio.dumps(Pipeline([("sneaky", Sneaky())]))
    with pytest.raises(FailedPrecondition) as e:
        load_model(data)
    assert e.value.reason == "UNTRUSTED_ARTIFACT"
    assert "Sneaky" in e.value.message


def test_disallowed_function_is_refused():
    data = sio.dumps(Pipeline([("f", FunctionTransformer(func=print))]))
    with pytest.raises(FailedPrecondition) as e:
        load_model(data)
    assert e.value.reason == "UNTRUSTED_ARTIFACT" and "builtins.print" in e.value.message


@pytest.mark.parametrize("func, name", [(os.system, "posix.system"),
                                        (builtins.eval, "builtins.eval"),
                                        (operator.attrgetter("__class__"), "operator.attrgetter")])
def test_skops_files_holding_dangerous_callables_are_refused(func, name):
    data = sio.dumps(Pipeline([("f", FunctionTransformer(func=func))]))
    with pytest.raises(FailedPrecondition) as e:
        load_model(data)
    assert e.value.reason == "UNTRUSTED_ARTIFACT"
    assert e.value.message == f"the model artifact contains a type that is not allowed: {name}"


def test_a_hand_edited_skops_file_naming_os_system_is_refused():
    """A file written by hand, not by skops: its schema calls a step os.system."""
    schema = json.loads(zipfile.ZipFile(io.BytesIO(
        sio.dumps(Pipeline([("s", StandardScaler())])))).read("schema.json"))
    step = schema["content"]["content"]["steps"]["content"][0]["content"][1]
    assert step["__class__"] == "StandardScaler"
    step.update({"__module__": "os", "__class__": "system"})
    crafted = io.BytesIO()
    with zipfile.ZipFile(crafted, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
    with pytest.raises(FailedPrecondition) as e:
        load_model(crafted.getvalue())
    assert e.value.reason == "UNTRUSTED_ARTIFACT" and "os.system" in e.value.message


class _RunsOnUnpickling:
    """Unpickling it creates a file: what a malicious pickle would do, harmlessly."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_pickle_and_joblib_files_are_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    assert not marker.exists()
    joblib_file = io.BytesIO()
    joblib.dump(Pipeline([("s", StandardScaler()), ("run", _RunsOnUnpickling(marker))]),
                joblib_file)
    for data in (pickle.dumps(_RunsOnUnpickling(marker)), joblib_file.getvalue()):
        with pytest.raises(FailedPrecondition) as e:
            load_model(data)
        assert e.value.reason == "INVALID_ARTIFACT"
        assert "not a skops file" in e.value.message and "never pickle" in e.value.message
    assert not marker.exists()
    pickle.loads(pickle.dumps(_RunsOnUnpickling(marker)))  # what loading them would do
    assert marker.exists()


def test_garbage_and_non_pipelines_are_refused():
    with pytest.raises(FailedPrecondition) as e:
        load_model(b"not a zip file")
    assert e.value.reason == "INVALID_ARTIFACT"
    with pytest.raises(FailedPrecondition) as e:
        load_model(sio.dumps({"a": 1}))
    assert e.value.reason == "INVALID_ARTIFACT"


def test_allowlist_is_names_not_the_file_s_word():
    assert "nbml_server.domain.automl.transformers.SchemaCoercer" in ALLOWED_TYPES
    assert not any(name.startswith(("builtins.", "os.", "subprocess.")) for name in ALLOWED_TYPES)


def test_forest_trees_are_stored_packed_and_come_back_as_they_were():
    X = frame()
    y = np.where(X["n"] > 0, "p", "q").astype(object)
    ctx = LearnerContext(task="classification", n_rows=len(X), n_classes=2, min_class_count=20,
                         n_jobs=1)
    pipe = dict(default_pipelines(ctx, X, y, TYPES))["random_forest"]
    trees = pipe.named_steps["model"].estimators_
    data = save_model(pipe)

    def files(artifact: bytes) -> int:
        return len(zipfile.ZipFile(io.BytesIO(artifact)).namelist())
    # One by one, skops stores several arrays per tree; packed, a few for them all.
    assert files(data) < files(sio.dumps(pipe)) - 2 * len(trees)
    assert pipe.named_steps["model"].estimators_ is trees  # the saved model is untouched

    restored = load_model(data).named_steps["model"].estimators_
    assert isinstance(restored, list) and len(restored) == len(trees)
    for before, after in zip(trees, restored):
        assert type(after) is type(before) and after.random_state == before.random_state
        np.testing.assert_array_equal(after.tree_.threshold, before.tree_.threshold)
        np.testing.assert_array_equal(after.tree_.children_left, before.tree_.children_left)
        np.testing.assert_array_equal(after.tree_.value, before.tree_.value)


def test_packed_trees_pointing_outside_their_tree_are_refused():
    X = frame()
    y = np.where(X["n"] > 0, "p", "q").astype(object)
    ctx = LearnerContext(task="classification", n_rows=len(X), n_classes=2, min_class_count=20,
                         n_jobs=1)
    forest = dict(default_pipelines(ctx, X, y, TYPES))["random_forest"].named_steps["model"]
    state = PackedTrees(forest.estimators_).__getstate__()
    PackedTrees([]).__setstate__(state)  # as saved: accepted
    inner = int(np.flatnonzero(state["nodes"]["left_child"] != -1)[1])  # not the root
    for field, node, value in (("left_child", 0, 10**6), ("right_child", 0, -7),
                               ("feature", 0, 999), ("left_child", inner, 0)):  # a loop
        crafted = {**state, "nodes": state["nodes"].copy()}
        crafted["nodes"][field][node] = value
        with pytest.raises(ValueError, match="packed trees"):
            PackedTrees([]).__setstate__(crafted)
