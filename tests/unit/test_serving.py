"""Serving: prediction row and column checks, value types, the LRU model cache,
prediction shaping, and rows and columns predicting alike."""

import threading

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from nbml_server.domain.automl import (LEARNERS, LearnerContext, build_pipeline, load_model,
                                       save_model, takes_columns, value_problems)
from nbml_server.domain.serving import (MAX_REPORTED_VIOLATIONS, ModelCache, Predictor,
                                        check_columns, check_row_count, check_rows,
                                        check_values, predictions_of)
from nbml_server.errors import FailedPrecondition, InvalidArgument

FEATURES = ["x", "colour"]
TYPES = {"x": "numeric", "colour": "categorical"}


def tiny_frame(n=30):
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "colour": rng.choice(["red", "blue"], n)}), x


def fitted(task):
    X, x = tiny_frame()
    if task == "regression":
        learner, params, y = LEARNERS["ridge"], {"alpha": 1.0}, 3 * x + 1
        ctx = LearnerContext(task=task, n_rows=len(X), n_jobs=1)
    else:
        learner, params = LEARNERS["logistic_regression"], {"C": 1.0, "class_weight": None}
        y = np.where(x > 0, "yes", "no").astype(object)
        ctx = LearnerContext(task=task, n_rows=len(X), n_classes=2, min_class_count=10,
                             n_jobs=1)
    with threadpool_limits(1):
        return build_pipeline(learner, params, ctx, TYPES, TYPES).fit(X, y)


@pytest.fixture(scope="module")
def artifact():
    return save_model(fitted("regression"))


@pytest.fixture(scope="module")
def classifier():
    return fitted("classification")


class FakeRegistry:
    """What ModelCache needs of a ModelRegistry: artifact(record) -> bytes."""

    def __init__(self, data: bytes):
        self.data = data
        self.loads: list[str] = []
        self.lock = threading.Lock()

    def artifact(self, record: dict) -> bytes:
        with self.lock:
            self.loads.append(record["model_id"])
        return self.data


def NO_COMPILE(work):  # noqa: N802 - a constant-like stand-in for the background thread
    """Models stay as loaded (the eviction tests compare identities)."""


def model(model_id):
    return {"model_id": model_id, "artifact_key": f"users/u/models/{model_id}/model.skops",
            "task": "regression"}


def invalid_rows(rows, columns=FEATURES) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as e:
        check_rows(rows, columns)
    return e.value


# -- check_rows ------------------------------------------------------------------------

def test_good_rows_pass():
    check_rows([{"x": 1, "colour": "red"}, {"colour": None, "x": "2"}], FEATURES)


def test_no_rows():
    error = invalid_rows([])
    assert error.reason == "NO_ROWS"
    assert [v.field for v in error.violations] == ["rows"]


def test_too_many_rows():
    check_row_count(50, 50, "rows")
    with pytest.raises(InvalidArgument) as caught:
        check_row_count(51, 50, "columns")
    assert caught.value.reason == "TOO_MANY_ROWS"
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("columns", "51 rows, at most 50 per request")]


def test_missing_column():
    error = invalid_rows([{"x": 1, "colour": "red"}, {"x": 2}])
    assert error.reason == "PREDICTION_COLUMNS_MISMATCH"
    assert [(v.field, v.description) for v in error.violations] == [
        ("rows[1].colour", "missing column 'colour'")]
    assert error.message == "1 problem(s) with the rows, first: rows[1].colour: missing column 'colour'"


def test_extra_column_lists_the_expected_ones():
    error = invalid_rows([{"x": 1, "colour": "red", "size": 3}])
    assert error.reason == "PREDICTION_COLUMNS_MISMATCH"
    [violation] = error.violations
    assert violation.field == "rows[0].size"
    assert violation.description == "unknown column 'size'; expected: x, colour"


def test_missing_and_extra_in_one_row_missing_first_then_sorted():
    error = invalid_rows([{"b_extra": 1, "a_extra": 2}], ["z", "y"])
    assert [v.field for v in error.violations] == [
        "rows[0].y", "rows[0].z", "rows[0].a_extra", "rows[0].b_extra"]


def test_column_names_are_case_sensitive():
    error = invalid_rows([{"X": 1, "colour": "red"}])
    assert [v.field for v in error.violations] == ["rows[0].x", "rows[0].X"]


def test_violations_are_capped():
    rows = [{} for _ in range(50)]  # two missing columns per row: 100 problems
    error = invalid_rows(rows)
    assert MAX_REPORTED_VIOLATIONS == 20
    assert len(error.violations) == MAX_REPORTED_VIOLATIONS
    assert error.violations[0].field == "rows[0].colour"
    assert error.violations[-1].field == "rows[9].x"
    assert error.message.startswith("20 problem(s) with the rows, first: rows[0].colour")


def test_cap_applies_within_one_wide_row():
    columns = [f"c{i:02d}" for i in range(30)]
    error = invalid_rows([{}], columns)
    assert len(error.violations) == MAX_REPORTED_VIOLATIONS
    assert [v.field for v in error.violations] == [f"rows[0].c{i:02d}" for i in range(20)]


def test_good_rows_before_a_bad_one_are_not_reported():
    rows = [{"x": 1, "colour": "red"}] * 5 + [{"x": 1}]
    assert [v.field for v in invalid_rows(rows).violations] == ["rows[5].colour"]


# -- ModelCache ------------------------------------------------------------------------

def test_a_cached_model_is_not_reloaded_and_is_compiled_after_its_first_use(artifact):
    registry, later = FakeRegistry(artifact), []
    cache = ModelCache(registry, capacity=2, run_later=later.append)
    first = cache.pipeline(model("mdl_a"))
    assert cache.pipeline(model("mdl_a")) is first and not takes_columns(first)
    assert registry.loads == ["mdl_a"]
    [compile_it] = later
    compile_it()
    compiled = cache.pipeline(model("mdl_a"))
    assert takes_columns(compiled) and registry.loads == ["mdl_a"]
    rows = pd.DataFrame({"x": [1.0], "colour": ["red"]})
    np.testing.assert_allclose(compiled.predict(rows), first.predict(rows))


def test_least_recently_used_is_evicted(artifact):
    registry = FakeRegistry(artifact)
    cache = ModelCache(registry, capacity=2, run_later=NO_COMPILE)
    a = cache.pipeline(model("mdl_a"))
    cache.pipeline(model("mdl_b"))
    assert cache.pipeline(model("mdl_a")) is a   # a is now the most recently used
    cache.pipeline(model("mdl_c"))               # evicts b, not a
    assert registry.loads == ["mdl_a", "mdl_b", "mdl_c"]
    assert cache.pipeline(model("mdl_a")) is a
    assert registry.loads == ["mdl_a", "mdl_b", "mdl_c"]
    cache.pipeline(model("mdl_b"))               # reloaded; evicts c (a was used later)
    assert registry.loads == ["mdl_a", "mdl_b", "mdl_c", "mdl_b"]
    cache.pipeline(model("mdl_a"))
    cache.pipeline(model("mdl_c"))
    assert registry.loads == ["mdl_a", "mdl_b", "mdl_c", "mdl_b", "mdl_c"]


def test_cache_never_holds_more_than_capacity(artifact):
    registry = FakeRegistry(artifact)
    cache = ModelCache(registry, capacity=1, run_later=NO_COMPILE)
    for _ in range(2):
        cache.pipeline(model("mdl_a"))
        cache.pipeline(model("mdl_b"))
    assert registry.loads == ["mdl_a", "mdl_b", "mdl_a", "mdl_b"]
    assert len(cache._loaded) == 1


def test_bad_artifact_is_refused_and_not_cached():
    registry = FakeRegistry(b"not a model")
    cache = ModelCache(registry, capacity=2)
    for _ in range(2):
        with pytest.raises(FailedPrecondition) as e:
            cache.pipeline(model("mdl_bad"))
        assert e.value.reason == "INVALID_ARTIFACT"
    assert registry.loads == ["mdl_bad", "mdl_bad"]


# -- predictions_of --------------------------------------------------------------------

def test_regression_predictions(artifact):
    pipeline = load_model(artifact)
    frame = pd.DataFrame({"colour": ["red", "blue"], "x": [0.0, 1.0], "ignored": [1, 2]})
    predictions = predictions_of(pipeline, {"feature_columns": FEATURES, "task": "regression"},
                                 frame)
    assert [p.label for p in predictions] == ["", ""]
    assert [p.probabilities for p in predictions] == [{}, {}]
    assert predictions[1].value > predictions[0].value  # y = 3x + 1
    assert all(isinstance(p.value, float) for p in predictions)


def test_classification_predictions(classifier):
    frame = pd.DataFrame({"x": [-2.0, 2.0], "colour": ["red", "blue"]})
    predictions = predictions_of(classifier,
                                 {"feature_columns": FEATURES, "task": "classification"}, frame)
    assert [p.label for p in predictions] == ["no", "yes"]
    for p in predictions:
        assert set(p.probabilities) == {"no", "yes"}
        assert sum(p.probabilities.values()) == pytest.approx(1.0)
        assert p.value == max(p.probabilities.values()) == p.probabilities[p.label]


# -- check_columns ---------------------------------------------------------------------

def invalid_columns(columns, features=FEATURES) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as e:
        check_columns(columns, features)
    return e.value


def test_good_columns_give_the_number_of_rows():
    assert check_columns({"colour": ["red", None], "x": np.array([1.0, np.nan])}, FEATURES) == 2


def test_missing_and_unknown_columns():
    error = invalid_columns({"x": [1.0], "size": [3.0]})
    assert error.reason == "PREDICTION_COLUMNS_MISMATCH"
    assert [(v.field, v.description) for v in error.violations] == [
        ("columns.colour", "missing column 'colour'"),
        ("columns.size", "unknown column 'size'; expected: x, colour")]


def test_columns_of_different_lengths_name_the_odd_ones_out():
    error = invalid_columns({"a": [1.0], "b": [1.0, 2.0], "c": [1.0, 2.0]}, ["a", "b", "c"])
    assert error.reason == "COLUMN_LENGTHS_DIFFER"
    assert [(v.field, v.description) for v in error.violations] == [
        ("columns.a", "1 value(s), where columns.b has 2")]
    tie = invalid_columns({"x": [1.0, 2.0, 3.0], "colour": ["red"]})
    assert [(v.field, v.description) for v in tie.violations] == [
        ("columns.colour", "1 value(s), where columns.x has 3")]


def test_empty_columns():
    assert invalid_columns({"x": [], "colour": []}).reason == "NO_ROWS"


# -- value types -------------------------------------------------------------------------

@pytest.mark.parametrize("column_type, fitting, refused", [
    ("numeric", [1, -2.5, float("nan"), None, "3.5", " 4 ", "+1e3", ".5", "inf", "", "NA",
                 "null", "?"],
     [True, False, "abc", "3,5", "0x1f", "1_000", [1], {"a": 1}]),
    ("boolean", [True, False, None, 0, 1, 0.0, float("nan"), "yes", "No", "t", "F", "1", "0",
                 "", "NA"],
     [2, -1, 0.5, "maybe", "2", [True]]),
    ("categorical", ["red", "", 3, 2.5, True, None], [["red"], {"a": 1}]),
    ("text", ["some words", 3, None], [["words"]]),
    ("datetime", ["2024-01-05", "not a date", 3, None], [{"y": 2024}]),
])
def test_what_each_column_type_takes(column_type, fitting, refused):
    values = fitting + refused
    problems = list(value_problems(values, column_type))
    assert [row for row, _ in problems] == list(range(len(fitting), len(values)))
    assert list(value_problems(np.array(values, dtype=object), column_type)) == problems


def test_float_arrays_fit_numeric_and_categorical_columns_and_only_0_1_fit_boolean():
    values = np.array([0.0, 1.0, np.nan, 2.0, -1.0])
    assert list(value_problems(values, "numeric")) == []
    assert list(value_problems(values, "categorical")) == []
    assert list(value_problems(values, "boolean")) == [
        (3, "2.0 is not a boolean (0 or 1); the column is boolean"),
        (4, "-1.0 is not a boolean (0 or 1); the column is boolean")]


def test_a_bad_value_is_refused_naming_its_row_and_column():
    with pytest.raises(InvalidArgument) as e:
        check_values({"x": [1.0, "3.5", "abc", None], "colour": ["red"] * 4}, TYPES,
                     lambda column, row: f"rows[{row}].{column}")
    assert e.value.reason == "PREDICTION_VALUE_TYPE"
    assert [(v.field, v.description) for v in e.value.violations] == [
        ("rows[2].x", "'abc' is not a number; the column is numeric")]
    assert e.value.message == ("1 problem(s) with the values, first: rows[2].x: "
                               "'abc' is not a number; the column is numeric")


def test_value_problems_are_capped():
    with pytest.raises(InvalidArgument) as e:
        check_values({"x": ["abc"] * 50, "colour": [["red"]] * 50}, TYPES,
                     lambda column, row: f"columns.{column}[{row}]")
    assert [v.field for v in e.value.violations] == [f"columns.x[{i}]" for i in range(20)]


# -- Predictor: rows and columns ---------------------------------------------------------

class FakeRecords:
    """Endpoints and ModelRegistry as the Predictor reads them: get(user, id) -> record."""

    def __init__(self, record: dict):
        self.record = record

    def get(self, user_id: str, record_id: str) -> dict:
        return self.record


CLASSIFIER = {"model_id": "mdl_c", "task": "classification", "feature_columns": FEATURES}


def predictor_serving(model, compiled: bool) -> Predictor:
    cache = ModelCache(FakeRegistry(save_model(model)), capacity=1,
                       run_later=(lambda work: work()) if compiled else NO_COMPILE)
    predictor = Predictor(FakeRecords({"model_id": "mdl_c"}), FakeRecords(CLASSIFIER), None,
                          cache)
    predictor.predict("u", "ep", [{"x": 0.0, "colour": "red"}])  # loads (and compiles)
    assert takes_columns(cache.pipeline(CLASSIFIER)) == compiled
    return predictor


@pytest.mark.parametrize("compiled", [False, True])
def test_columns_predict_what_rows_do(classifier, compiled):
    predictor = predictor_serving(classifier, compiled)
    x = [-2.0, 0.5, None, 3.0]
    colour = ["red", None, "blue", "green"]
    _, by_row = predictor.predict(
        "u", "ep", [{"x": v, "colour": c} for v, c in zip(x, colour)])
    _, by_column = predictor.predict_columns(
        "u", "ep", {"x": np.array(x, dtype=np.float64),
                    "colour": np.array(colour, dtype=object)})
    assert by_column.labels == [p.label for p in by_row]
    assert by_column.classes == ["no", "yes"]
    np.testing.assert_allclose(by_column.values, [p.value for p in by_row], rtol=0, atol=1e-12)
    np.testing.assert_allclose(by_column.probabilities,
                               [[p.probabilities[c] for c in ("no", "yes")] for p in by_row],
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("compiled", [False, True])
def test_both_paths_refuse_a_value_of_the_wrong_type(classifier, compiled):
    predictor = predictor_serving(classifier, compiled)
    with pytest.raises(InvalidArgument) as by_row:
        predictor.predict("u", "ep", [{"x": 1.0, "colour": "red"}, {"x": "lots", "colour": "red"}])
    with pytest.raises(InvalidArgument) as by_column:
        predictor.predict_columns("u", "ep", {"x": np.array(["1", "lots"], dtype=object),
                                              "colour": np.array(["red", "red"], dtype=object)})
    assert [v.field for v in by_row.value.violations] == ["rows[1].x"]
    assert [v.field for v in by_column.value.violations] == ["columns.x[1]"]
