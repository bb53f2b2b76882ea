"""A user's validation rules: every violation reported at once, with rows and columns."""

import numpy as np
import pandas as pd
import pytest

from nbml_server.domain.datasets import (
    ColumnRule,
    ValidationRules,
    check_rules,
    profile,
    read_table,
)
from nbml_server.errors import InvalidArgument

CSV = (
    b"id,age,price,country,member,signup\n"   # line 1
    b"1,34,10.5,US,yes,2024-01-03\n"          # line 2
    b"2,-4,12,FR,no,2024-01-04\n"             # line 3
    b"3,51,,US,yes,2024-01-05\n"              # line 4
    b"4,29,8,xyz,no,not a date\n"             # line 5
    b"5,130,9.5,FR,yes,2024-01-07\n"          # line 6
)


@pytest.fixture()
def frame() -> pd.DataFrame:
    return read_table(CSV)


@pytest.fixture()
def types(frame) -> dict[str, str]:
    return profile(frame).column_types


def violations(frame, types, rules: ValidationRules) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        check_rules(frame, rules, types)
    assert caught.value.reason == "RULES_VIOLATED"
    found = {v.field: v.description for v in caught.value.violations}
    assert len(found) == len(caught.value.violations), "one violation per field"
    return found


def test_no_rules_and_satisfied_rules_pass(frame, types):
    assert check_rules(frame, ValidationRules(), types) is None
    rules = ValidationRules(
        required_columns=("id", "age"),
        column_types={"age": "numeric", "member": "boolean", "country": "categorical"},
        column_rules=(ColumnRule("id", min=1, max=5, not_null=True),
                      ColumnRule("member", allowed_values=("yes", "no"))),
    )
    assert check_rules(frame, rules, types) is None


def test_missing_required_columns(frame, types):
    found = violations(frame, types, ValidationRules(required_columns=("age", "salary", "ID")))
    assert found == {
        "rules.required_columns[1]": "column 'salary' is missing",
        "rules.required_columns[2]": "column 'ID' is missing (there is a column 'id')",
    }


def test_numeric_type_names_the_first_bad_value(frame, types):
    found = violations(frame, types, ValidationRules(column_types={"country": "numeric"}))
    text = found["rules.column_types[country]"]
    assert "column 'country' must be numeric" in text
    assert "5 values are not a number" in text
    assert "first at row 2: 'US'" in text


def test_datetime_type_names_the_bad_row(frame, types):
    found = violations(frame, types, ValidationRules(column_types={"signup": "datetime"}))
    text = found["rules.column_types[signup]"]
    assert "1 value is not a date" in text
    assert "row 5: 'not a date'" in text


def test_boolean_type(frame, types):
    found = violations(frame, types, ValidationRules(column_types={"country": "boolean"}))
    assert "must be boolean" in found["rules.column_types[country]"]
    mixed = pd.DataFrame({"flag": pd.Series(["yes", "false", "no"], dtype="str")})
    found = violations(mixed, {"flag": "categorical"},
                       ValidationRules(column_types={"flag": "boolean"}))
    assert "mixes spellings" in found["rules.column_types[flag]"]


def test_categorical_and_text_accept_any_column(frame, types):
    rules = ValidationRules(column_types={"age": "categorical", "country": "text"})
    assert check_rules(frame, rules, types) is None


def test_unknown_columns_and_types_are_violations(frame, types):
    rules = ValidationRules(column_types={"nope": "numeric", "age": "money"},
                            column_rules=(ColumnRule("ghost", not_null=True),))
    found = violations(frame, types, rules)
    assert found["rules.column_types[nope]"] == "column 'nope' is not in the data set"
    assert "'money' is not a column type" in found["rules.column_types[age]"]
    assert found["rules.column_rules[0].column"] == "column 'ghost' is not in the data set"


def test_min_and_max_count_values_and_name_the_first_row(frame, types):
    found = violations(frame, types, ValidationRules(
        column_rules=(ColumnRule("age", min=0, max=120),)))
    assert found["rules.column_rules[0].min"] == (
        "column 'age' has 1 value below the minimum 0 (first at row 3: -4)")
    assert found["rules.column_rules[0].max"] == (
        "column 'age' has 1 value above the maximum 120 (first at row 6: 130)")


def test_min_on_a_text_column(frame, types):
    found = violations(frame, types, ValidationRules(
        column_rules=(ColumnRule("country", min=1),)))
    assert "is not numeric" in found["rules.column_rules[0].min"]
    assert "row 2: 'US'" in found["rules.column_rules[0].min"]


def test_min_greater_than_max_and_bad_bounds(frame, types):
    found = violations(frame, types, ValidationRules(column_rules=(
        ColumnRule("age", min=10, max=5), ColumnRule("age", min=float("nan")))))
    assert found["rules.column_rules[0]"] == "min 10 is greater than max 5"
    assert "finite number" in found["rules.column_rules[1].min"]


def test_allowed_values(frame, types):
    found = violations(frame, types, ValidationRules(
        column_rules=(ColumnRule("country", allowed_values=("US", "FR")),)))
    text = found["rules.column_rules[0].allowed_values"]
    assert text.startswith("value 'xyz' at row 5 is not allowed in column 'country'")


def test_allowed_values_counts_every_bad_value(frame, types):
    found = violations(frame, types, ValidationRules(
        column_rules=(ColumnRule("country", allowed_values=("US",)),)))
    text = found["rules.column_rules[0].allowed_values"]
    assert text.startswith("value 'FR' at row 3 is not allowed")
    assert "3 values in all are not allowed: 'FR', 'xyz'" in text


def test_allowed_values_compare_numbers_numerically(frame, types):
    rules = ValidationRules(column_rules=(
        ColumnRule("id", allowed_values=("1", "2.0", "3", "4", "5")),))
    assert check_rules(frame, rules, types) is None
    found = violations(frame, types, ValidationRules(column_rules=(
        ColumnRule("price", allowed_values=("10.5", "12", "8")),)))
    assert "value '9.5' at row 6" in found["rules.column_rules[0].allowed_values"]


def test_not_null(frame, types):
    found = violations(frame, types, ValidationRules(
        column_rules=(ColumnRule("price", not_null=True),)))
    assert found["rules.column_rules[0].not_null"] == (
        "column 'price' has 1 missing value (first at row 4)")


def test_all_violations_come_in_one_error(frame, types):
    rules = ValidationRules(
        required_columns=("salary",),
        column_types={"country": "numeric"},
        column_rules=(ColumnRule("age", min=0), ColumnRule("price", not_null=True),
                      ColumnRule("country", allowed_values=("US", "FR"))),
    )
    with pytest.raises(InvalidArgument) as caught:
        check_rules(frame, rules, types)
    fields = [v.field for v in caught.value.violations]
    assert fields == [
        "rules.required_columns[0]",
        "rules.column_types[country]",
        "rules.column_rules[0].min",
        "rules.column_rules[1].not_null",
        "rules.column_rules[2].allowed_values",
    ]
    assert "5 validation rules" in caught.value.message


def test_row_numbers_are_file_lines_for_parquet_style_frames():
    frame = pd.DataFrame({"x": [1.0, np.nan, -3.0]}, index=[10, 20, 30])  # any index
    found = violations(frame, {"x": "numeric"}, ValidationRules(
        column_rules=(ColumnRule("x", min=0, not_null=True),)))
    assert "first at row 4: -3" in found["rules.column_rules[0].min"]
    assert "first at row 3" in found["rules.column_rules[0].not_null"]


def test_rules_round_trip_through_dicts():
    rules = ValidationRules(required_columns=["a"], column_types={"a": "numeric"},
                            column_rules=[ColumnRule("a", min=0, allowed_values=["1"])])
    assert rules.required_columns == ("a",)
    assert ValidationRules.from_dict(rules.to_dict()) == rules
    assert hash(rules) == hash(ValidationRules.from_dict(rules.to_dict()))
