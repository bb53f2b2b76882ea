"""Compiled inference: every family's pipeline, both preprocessing kinds, every column
type, unseen and missing values - the compiled model predicts what the pipeline does."""

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

from nbml_server.domain.automl import (LEARNERS, LearnerContext, WeightedEnsemble,
                                       build_pipeline)
from nbml_server.domain.automl import compiled as compiled_module
from nbml_server.domain.automl.compiled import CHECK_TOLERANCE, compile_model
from tests.unit.pipeline_helpers import default_pipelines

TYPES = {"n": "numeric", "m": "numeric", "c": "categorical", "r": "categorical",
         "b": "boolean", "d": "datetime", "t": "text"}


def frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=n)
    m[rng.random(n) < 0.2] = np.nan
    rare = rng.choice([f"r{i}" for i in range(40)], n).astype(object)  # many rare levels
    rare[::7] = None
    return pd.DataFrame({
        "n": rng.normal(size=n), "m": m,
        "c": rng.choice(["u", "v", "w", None], n), "r": rare,
        "b": rng.choice([True, False, None], n),
        "d": pd.date_range("2023-01-01 08:00", periods=n, freq="7h").strftime("%Y-%m-%d %H:%M"),
        "t": [f"free text {i} " * (i % 4 + 1) for i in range(n)],
    })


def target(X, task, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    score = X["n"].to_numpy() + (X["c"] == "u") + rng.normal(scale=0.5, size=len(X))
    if task == "regression":
        return score
    return np.asarray([f"k{int(v)}" for v in np.digitize(score, np.linspace(-1, 1, classes - 1))],
                      dtype=object)


def unseen_rows():
    return pd.DataFrame({"n": [1e6, None, "3.5"], "m": [None, 0.0, "x"],
                         "c": ["never seen", None, "u"], "r": ["r999", "r3", None],
                         "b": ["maybe", None, 1], "d": ["bad", None, "2024-02-29"],
                         "t": [None, "", "x y z"]})


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("task, classes", [("classification", 2), ("classification", 3),
                                           ("regression", 0)])
def test_every_family_compiles_to_the_same_predictions(task, classes):
    X = frame()
    y = target(X, task, classes)
    ctx = LearnerContext(task=task, n_rows=len(X), n_classes=classes, min_class_count=20,
                         n_jobs=1)
    rows = pd.concat([frame(40, seed=5), unseen_rows()], ignore_index=True)
    method = "predict_proba" if task == "classification" else "predict"
    for name, pipeline in default_pipelines(ctx, X, y, TYPES):
        compiled = compile_model(pipeline, task)
        assert compiled is not None, name
        np.testing.assert_allclose(getattr(compiled, method)(rows),
                                   getattr(pipeline, method)(rows),
                                   rtol=0, atol=CHECK_TOLERANCE, err_msg=name)


def test_a_compiled_model_takes_columns_as_lists_without_a_frame():
    X = frame()
    ctx = LearnerContext(task="classification", n_rows=len(X), n_classes=3, min_class_count=20)
    pipeline = build_pipeline(LEARNERS["logistic_regression"], {"C": 1.0, "class_weight": None},
                              ctx, TYPES, TYPES).fit(X, target(X, "classification"))
    compiled = compile_model(pipeline, "classification")
    rows = unseen_rows()
    columns = {c: rows[c].tolist() for c in rows.columns if c != "t"}  # "t" left out: missing
    expected = pipeline.predict_proba(rows.assign(t=None))
    np.testing.assert_allclose(compiled.predict_proba(columns), expected, atol=CHECK_TOLERANCE)


def test_an_ensemble_compiles_member_by_member():
    X = frame()
    y = target(X, "classification")
    ctx = LearnerContext(task="classification", n_rows=len(X), n_classes=3, min_class_count=20,
                         n_jobs=1)
    members = [build_pipeline(LEARNERS[name], LEARNERS[name].defaults(ctx)[0], ctx, TYPES,
                              TYPES).fit(X, y) for name in ("logistic_regression", "knn")]
    ensemble = WeightedEnsemble(members, [2, 1], temperature=0.7)
    compiled = compile_model(ensemble, "classification")
    rows = unseen_rows()
    np.testing.assert_allclose(compiled.predict_proba(rows), ensemble.predict_proba(rows),
                               atol=CHECK_TOLERANCE)
    assert list(compiled.predict(rows)) == list(ensemble.predict(rows))


def test_a_pipeline_it_cannot_reproduce_or_does_not_know_is_not_compiled(monkeypatch):
    X = frame()
    y = target(X, "classification")
    ctx = LearnerContext(task="classification", n_rows=len(X), n_classes=3, min_class_count=20)
    pipeline = build_pipeline(LEARNERS["logistic_regression"], {"C": 1.0, "class_weight": None},
                              ctx, TYPES, TYPES).fit(X, y)
    assert compile_model(pipeline, "classification") is not None
    assert compile_model(pipeline[:2], "classification") is None  # no model step
    # A compiled step that is wrong (no scaling) fails the check against the pipeline.
    monkeypatch.setitem(compiled_module.STEPS, StandardScaler, lambda step: lambda X: X)
    assert compile_model(pipeline, "classification") is None
