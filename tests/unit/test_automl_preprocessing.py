"""AutoML: column types, schema coercion, date parts and per-family preprocessing."""

import numpy as np
import pandas as pd
import pytest

from nbml_server.domain.automl import (LEARNERS, DatePartsTransformer, LearnerContext,
                                       SchemaCoercer, build_pipeline, infer_column_type,
                                       predict_frame, resolve_column_types, rows_to_frame)
from nbml_server.errors import InvalidArgument

TYPES = {"age": "numeric", "plan": "categorical", "member": "boolean", "signup": "datetime",
         "note": "text"}


def mixed_frame(n=120, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    age[::7] = np.nan
    plan = rng.choice(["basic", "plus", "pro"], n).astype(object)
    plan[::5] = None
    frame = pd.DataFrame({
        "age": age,
        "plan": pd.Series(plan, dtype="str"),
        "member": rng.choice([True, False], n),
        "signup": (pd.Timestamp("2021-01-01")
                   + pd.to_timedelta(rng.integers(0, 900, n), unit="D")).strftime("%Y-%m-%d"),
        "note": [f"customer note number {i} with a few words" for i in range(n)],
    })
    y = np.where((np.nan_to_num(age, nan=50) > 45) ^ (plan == "pro"), "yes", "no").astype(object)
    return frame, y


def test_infer_column_types():
    frame, _ = mixed_frame()
    frame["count"] = np.arange(len(frame))
    frame["numbers_as_text"] = [str(i * 1.5) for i in range(len(frame))]
    frame["yes_no"] = ["yes", "no"] * (len(frame) // 2)
    frame["empty"] = None
    inferred = resolve_column_types(frame, {"count": "categorical"}, list(frame.columns))
    assert inferred == {"age": "numeric", "plan": "categorical", "member": "boolean",
                        "signup": "datetime", "note": "text", "count": "categorical",
                        # Text that looks numeric stays text (zip codes): the reader, not
                        # inference, turns numeric columns into numbers.
                        "numbers_as_text": "categorical", "yes_no": "boolean",
                        "empty": "categorical"}
    assert infer_column_type(pd.Series(["2020-01-01 10:00", "2021-03-04 11:30", None])) == "datetime"


def test_numbers_that_are_0_or_1_in_training_stay_numbers_for_the_model():
    # The profile calls such a column boolean; the model must still take a 2 later.
    frame = pd.DataFrame({"pixel": [0, 1, 1, 0, 1, 0], "flag": [True, False] * 3,
                          "answer": ["yes", "no"] * 3})
    assert infer_column_type(frame["pixel"]) == "boolean"
    types = resolve_column_types(frame, None, list(frame.columns))
    assert types == {"pixel": "numeric", "flag": "boolean", "answer": "boolean"}
    coercer = SchemaCoercer().fit(frame)
    assert coercer.column_types_ == types
    assert coercer.transform([{"pixel": 2, "flag": True, "answer": "no"}])["pixel"].tolist() == [2.0]


def test_unknown_column_type_rejected():
    frame, _ = mixed_frame(10)
    with pytest.raises(InvalidArgument) as e:
        resolve_column_types(frame, {"age": "money"}, list(frame.columns))
    assert e.value.reason == "UNKNOWN_COLUMN_TYPE"
    assert e.value.violations[0].field == "column_types[age]"


def test_schema_coercer_json_like_rows():
    coercer = SchemaCoercer(TYPES).fit(mixed_frame(20)[0])
    rows = [
        {"age": "42", "plan": "pro", "member": "true", "signup": "2022-02-03", "note": "hi there"},
        {"age": 7, "plan": 3.0, "member": False, "signup": None},  # no "note" key
        {"age": "n/a", "plan": None, "member": "maybe", "signup": "not a date", "note": None},
    ]
    out = coercer.transform(rows)
    assert list(out.columns) == list(TYPES)
    assert out["age"].dtype == np.float64 and out["member"].dtype == np.float64
    assert out["age"].tolist()[:2] == [42.0, 7.0] and np.isnan(out["age"].iloc[2])
    assert out["plan"].dtype == object and out["plan"].tolist()[:2] == ["pro", "3"]
    assert pd.isna(out["plan"].iloc[2])
    assert out["member"].tolist()[:2] == [1.0, 0.0] and np.isnan(out["member"].iloc[2])
    assert out["signup"].iloc[0] == pd.Timestamp("2022-02-03")
    assert out["signup"].iloc[1:].isna().all()
    assert pd.isna(out["note"].iloc[1]) and pd.isna(out["note"].iloc[2])


def test_date_parts_transformer():
    frame = pd.DataFrame({
        "d": ["2024-03-15", "1970-01-02", None],  # date only: no hour
        "t": pd.to_datetime(["2024-03-15 13:45", "2024-03-16 00:00", None]),
    })
    dp = DatePartsTransformer().fit(frame)
    out = dp.transform(frame)
    assert list(dp.get_feature_names_out()) == [
        "d_year", "d_month", "d_day", "d_weekday", "d_days",
        "t_year", "t_month", "t_day", "t_weekday", "t_hour", "t_days"]
    assert out.shape == (3, 11)
    np.testing.assert_allclose(out[0, :4], [2024, 3, 15, 4])  # a Friday
    assert out[1, 4] == pytest.approx(1.0)  # days since epoch
    assert out[0, 9] == 13 and out[0, 10] == pytest.approx(19797 + (13 * 60 + 45) / 1440)
    assert np.isnan(out[2]).all()


@pytest.mark.parametrize("family", ["logistic_regression", "random_forest"])
def test_pipeline_handles_unseen_missing_and_string_numbers(family):
    frame, y = mixed_frame()
    ctx = LearnerContext(task="classification", n_rows=len(frame), n_classes=2,
                         min_class_count=10)
    learner = LEARNERS[family]
    pipe = build_pipeline(learner, learner.defaults(ctx)[0], ctx, TYPES, TYPES)
    pipe.fit(frame, y)
    rows = [
        {"age": "55", "plan": "enterprise", "member": "yes", "signup": "2023-05-01",
         "note": "new"},  # unseen category, numbers as strings
        {"age": None, "plan": None, "member": None, "signup": None, "note": None},
        {"age": 30, "member": True, "signup": "2021-07-07T10:00:00Z"},  # missing keys
    ]
    out = predict_frame(pipe, rows_to_frame(rows, list(TYPES)), "classification")
    assert out["classes"] == ["no", "yes"]
    assert out["probabilities"].shape == (3, 2)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0)
    assert set(out["labels"]) <= {"no", "yes"}


def test_scaled_and_tree_preprocessing_differ():
    frame, y = mixed_frame()
    ctx = LearnerContext(task="classification", n_rows=len(frame), n_classes=2)
    scaled = build_pipeline(LEARNERS["knn"], {"n_neighbors": 5, "weights": "uniform"}, ctx,
                            TYPES, TYPES)[:-1]
    tree = build_pipeline(LEARNERS["extra_trees"], {"n_estimators": 5, "max_features": 1.0,
                                                    "min_samples_leaf": 1}, ctx, TYPES, TYPES)[:-1]
    a = scaled.fit_transform(frame)
    b = tree.fit_transform(frame, y)
    assert not np.isnan(a).any() and not np.isnan(b).any()
    assert a.shape[1] > b.shape[1]  # one-hot vs ordinal codes
    assert abs(a[:, 0].mean()) < 1e-9 and abs(a[:, 0].std() - 1) < 1e-9  # scaled age
    names = list(tree[-1].get_feature_names_out())
    plan = b[:, names.index("categorical__plan")]
    assert set(np.unique(plan)) == {-1.0, 0.0, 1.0, 2.0}  # missing -> -1
