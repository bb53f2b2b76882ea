"""Reading uploaded CSV and Parquet files: values, dtypes and precise errors."""

import datetime as dt
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nbml_server.domain.datasets import (
    MAX_COLUMNS,
    guess_format,
    read_canonical,
    read_table,
    to_csv_bytes,
    write_canonical,
)
from nbml_server.errors import InvalidArgument


def fails(data: bytes, fmt: str | None = None) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        read_table(data, fmt)
    err = caught.value
    assert err.violations, "every error names at least one violation"
    return err


def descriptions(err: InvalidArgument) -> str:
    return " | ".join(v.description for v in err.violations)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


# --------------------------------------------------------------------------- CSV values


def test_csv_values_dtypes_and_missing_cells():
    data = (b" id , name ,price,when\n"
            b"1, Alice ,3.5,2024-01-31\n"
            b"2,Bob,,2024-02-01\n"
            b"3,,NA,2024-02-02\n")
    frame = read_table(data, "csv")
    assert list(frame.columns) == ["id", "name", "price", "when"]
    assert frame["id"].dtype == np.int64
    assert frame["price"].dtype == np.float64
    assert frame["name"].dtype == "str"
    assert frame["when"].dtype == "str"  # dates stay text; profiling says "datetime"
    assert frame["id"].tolist() == [1, 2, 3]
    assert frame["name"].iloc[0] == "Alice"  # cells are stripped
    assert pd.isna(frame["name"].iloc[2])
    assert frame["price"].iloc[0] == 3.5
    assert frame["price"].isna().tolist() == [False, True, True]  # empty and NA are missing
    assert isinstance(frame.index, pd.RangeIndex)


def test_integers_with_missing_values_become_float():
    frame = read_table(b"a,b\n1,x\n,y\n3,z\n")
    assert frame["a"].dtype == np.float64
    assert frame["a"].isna().tolist() == [False, True, False]


def test_missing_markers_stay_text_in_text_columns():
    frame = read_table(b"country,n\nNA,1\nFR,2\n")
    assert frame["country"].tolist() == ["NA", "FR"]  # Namibia, not missing


def test_utf8_bom_is_removed():
    frame = read_table(b"\xef\xbb\xbfname,age\nAnn,3\n")
    assert list(frame.columns) == ["name", "age"]
    assert frame["age"].tolist() == [3]


def test_a_repeated_utf8_bom_is_removed():
    assert list(read_table(b"\xef\xbb\xbf\xef\xbb\xbfname,age\nAnn,3\n").columns) == [
        "name", "age"]


def test_quoted_fields_with_commas_quotes_and_newlines():
    data = (b'id,comment,n\n'
            b'1,"Hello, world",10\n'
            b'2,"She said ""hi""",20\n'
            b'3,"line one\nline two",30\n')
    frame = read_table(data)
    assert frame["comment"].tolist() == ["Hello, world", 'She said "hi"', "line one\nline two"]
    assert frame["n"].tolist() == [10, 20, 30]


def test_a_quote_inside_an_unquoted_value_is_kept():
    frame = read_table(b'item,price\n15" screen,99\nmouse,5\n')
    assert frame["item"].tolist() == ['15" screen', "mouse"]


def test_crlf_and_cr_line_endings_and_blank_lines():
    assert read_table(b"a,b\r\n1,2\r\n\r\n3,4\r\n")["b"].tolist() == [2, 4]
    assert read_table(b"a,b\r1,2\r3,4")["a"].tolist() == [1, 3]
    assert read_table(b"\n\na,b\n1,2\n   \n3,4\n\n")["a"].tolist() == [1, 3]


def test_leading_zeros_and_huge_integers_stay_text():
    frame = read_table(b"zip,account,n\n01234,123456789012345678901234,1\n75001,2,2\n")
    assert frame["zip"].tolist() == ["01234", "75001"]
    assert frame["account"].dtype == "str"
    assert frame["n"].dtype == np.int64


def test_semicolon_delimiter_with_decimal_comma_and_tabs():
    frame = read_table("name;price\nTée;3,5\nPain;1,25\n".encode())
    assert list(frame.columns) == ["name", "price"]
    assert frame["price"].tolist() == [3.5, 1.25]
    frame = read_table(b"a\tb\n1\tx y\n")
    assert frame["b"].tolist() == ["x y"]


def test_numbers_in_scientific_and_signed_notation():
    frame = read_table(b"v\n+5\n-2.5\n1e3\n.5\n")
    assert frame["v"].tolist() == [5.0, -2.5, 1000.0, 0.5]


def test_single_column_file():
    frame = read_table(b"label\ncat\ndog\n")
    assert frame["label"].tolist() == ["cat", "dog"]


def test_guess_format():
    assert guess_format(b"PAR1....") == "parquet"
    assert guess_format(b"a,b\n") == "csv"


# --------------------------------------------------------------------------- CSV errors


@pytest.mark.parametrize("data", [b"", b"   \n\n\t\n"])
def test_empty_file(data):
    err = fails(data)
    assert err.reason == "EMPTY_FILE"
    assert err.violations[0].field == "file"


def test_bom_only_is_empty():
    assert fails(b"\xef\xbb\xbf \n").reason == "EMPTY_FILE"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_is_refused_with_advice(encoding):
    data = "a,b\n1,2\n".encode(encoding)
    if encoding != "utf-16":
        data = ("\ufeff" + "a,b\n1,2\n").encode(encoding)  # with its byte order mark
    err = fails(data)
    assert err.reason == "UNSUPPORTED_ENCODING"
    assert "UTF-16 is not supported, save as UTF-8" in descriptions(err)


def test_utf16_without_bom_is_refused():
    err = fails("a,b\n1,2\n".encode("utf-16-le"))
    assert err.reason == "UNSUPPORTED_ENCODING"
    assert "NUL byte" in descriptions(err)


def test_invalid_utf8_names_offset_line_and_column():
    data = "name,city\nAnn,Paris\nBob,Z\xfcrich\n".encode("latin-1")
    err = fails(data)
    assert err.reason == "UNSUPPORTED_ENCODING"
    text = descriptions(err)
    assert "byte offset 25" in text  # the 0xFC byte
    assert data[25] == 0xFC
    assert "line 3" in text
    assert "'city'" in text
    assert "save as UTF-8" in text


def test_invalid_utf8_offset_counts_the_bom():
    err = fails(b"\xef\xbb\xbfa\n\xff\n")
    assert "byte offset 5" in descriptions(err)
    assert "line 2" in descriptions(err)


def test_missing_header_cell_names_its_position():
    err = fails(b"a,,c\n1,2,3\n")
    assert err.reason == "MISSING_HEADER"
    assert "column 2" in descriptions(err)


def test_header_that_looks_like_data_is_missing_header():
    err = fails(b"1,2.5,3\n4,5,6\n")
    assert err.reason == "MISSING_HEADER"
    assert "looks like data" in descriptions(err)


def test_duplicate_header_names_the_column_and_both_positions():
    err = fails(b"id,price,name,price\n1,2,x,3\n")
    assert err.reason == "DUPLICATE_HEADER"
    text = descriptions(err)
    assert "'price'" in text and "positions 2 and 4" in text


def test_duplicate_after_stripping_spaces():
    err = fails(b"a, a\n1,2\n")
    assert err.reason == "DUPLICATE_HEADER"
    assert "positions 1 and 2" in descriptions(err)


@pytest.mark.parametrize("data", [b"a,b\n", b"a,b", b"a,b\n\n\n"])
def test_header_only_is_no_rows(data):
    err = fails(data)
    assert err.reason == "NO_ROWS"
    assert "no data rows" in descriptions(err)


def test_ragged_row_names_the_line_and_field_counts():
    data = b"a,b,c,d\n" + b"1,2,3,4\n" * 5 + b"1,2,3,4,5\n1,2,3,4\n"
    err = fails(data)
    assert err.reason == "CSV_PARSE_ERROR"
    assert len(err.violations) == 1
    assert err.violations[0].field == "file"
    assert err.violations[0].description.startswith(
        "row at line 7 has 5 fields, the header has 4")


def test_every_ragged_row_is_listed():
    err = fails(b"a,b,c\n1,2,3\n1,2\n1,2,3\n1,2,3,4,5\n")
    assert err.reason == "CSV_PARSE_ERROR"
    assert [v.description.split(" has ")[0] for v in err.violations] == [
        "row at line 3", "row at line 5"]
    assert "2 fields, the header has 3" in err.violations[0].description
    assert "5 fields, the header has 3" in err.violations[1].description


def test_ragged_row_line_numbers_count_lines_inside_quoted_cells():
    data = b'a,b\n1,"two\nlines"\n3,4,5\n'
    err = fails(data)
    assert "row at line 4 has 3 fields" in descriptions(err)


def test_many_ragged_rows_are_capped_but_counted():
    data = b"a,b\n" + b"1,2,3\n" * 50
    err = fails(data)
    assert err.reason == "CSV_PARSE_ERROR"
    assert len(err.violations) == 20
    assert "50 rows" in err.message


def test_unterminated_quote_names_the_line_where_it_opens():
    data = b'a,b\n1,x\n2,"never closed\n3,y\n4,z\n'
    err = fails(data)
    assert err.reason == "CSV_PARSE_ERROR"
    assert "starts on line 3 is never closed" in descriptions(err)


def test_unterminated_quote_on_the_last_line_without_newline():
    err = fails(b'a,b\n1,x\n2,"oops')
    assert err.reason == "CSV_PARSE_ERROR"
    assert "line 3" in descriptions(err)


def test_unterminated_quote_in_the_header():
    err = fails(b'a,"b\n1,2\n')
    assert err.reason == "CSV_PARSE_ERROR"
    assert "line 1" in descriptions(err)


@pytest.mark.parametrize("data", [
    b'a,b\n1,"missing its end\n2,"x",3\n',     # odd number of quotes
    b'a,b\n1,"missing its end\n2,"x\n3,y\n',   # even: the next quote closes it
])
def test_a_missing_quote_that_runs_rows_together_names_the_line_where_it_opens(data):
    err = fails(data)
    assert err.reason == "CSV_PARSE_ERROR"
    assert "starts on line 2 ends on line 3 in the middle of a value" in descriptions(err)


@pytest.mark.parametrize("data, kind", [
    (b"<!DOCTYPE html>\n<html><body>Sign in, please</body></html>\n", "an HTML page"),
    (b'[{"a": 1, "b": 2},\n {"a": 3, "b": 4}]\n', "a JSON document"),
])
def test_html_and_json_are_refused_as_what_they_are(data, kind):
    err = fails(data)
    assert err.reason == "UNSUPPORTED_FORMAT"
    assert f"the file is {kind}, not CSV" in descriptions(err)


def test_a_header_in_brackets_is_csv():
    assert list(read_table(b"[id],[name]\n1,Ann\n").columns) == ["[id]", "[name]"]


def test_a_column_name_too_long_is_refused_naming_the_column():
    name = "why " * 300
    for data, fmt in ((f"id,{name}\n1,2\n".encode(), "csv"),
                      (parquet_bytes(pa.table({"id": [1], name: [2]})), "parquet")):
        err = fails(data, fmt)
        assert err.reason == "COLUMN_NAME_TOO_LONG"
        assert "column 2 of the" in descriptions(err)
        assert "name of 1,199 characters (it starts 'why why" in descriptions(err)


def test_too_many_columns():
    header = ",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)).encode()
    err = fails(header + b"\n" + b"1," * MAX_COLUMNS + b"1\n")
    assert err.reason == "TOO_MANY_COLUMNS"
    assert "10,001 columns" in descriptions(err)


def test_parquet_sent_as_csv_and_excel_files_are_named():
    table = pa.table({"a": [1]})
    err = fails(parquet_bytes(table), "csv")
    assert err.reason == "UNSUPPORTED_FORMAT"
    assert "Parquet" in descriptions(err)
    err = fails(b"PK\x03\x04" + b"\x00" * 40)
    assert err.reason == "UNSUPPORTED_FORMAT"
    assert "Excel" in descriptions(err)


def test_unknown_format_argument():
    err = fails(b"a\n1\n", "xlsx")
    assert err.reason == "UNSUPPORTED_FORMAT"
    assert err.violations[0].field == "format"


# --------------------------------------------------------------------------- Parquet


def test_parquet_types_are_normalized():
    table = pa.table({
        "i": pa.array([1, 2, 3], pa.int32()),
        "i_missing": pa.array([1, None, 3], pa.int64()),
        "f": pa.array([1.5, None, 2.0], pa.float32()),
        "flag": pa.array([True, False, True]),
        "flag_missing": pa.array([True, None, False]),
        "s": pa.array([" a ", "", None]),
        "cat": pa.array(["x", "y", "x"]).dictionary_encode(),
        "day": pa.array([dt.date(2024, 1, 1), None, dt.date(2024, 1, 3)]),
        "at": pa.array([dt.datetime(2024, 1, 1, 5), None, None]),
        "amount": pa.array([1, 2, 3], pa.decimal128(10, 2)),
    })
    frame = read_table(parquet_bytes(table))  # guessed from the PAR1 magic
    dtypes = {name: str(dtype) for name, dtype in frame.dtypes.items()}
    assert dtypes["i"] == "int64"
    assert dtypes["i_missing"] == "float64"
    assert dtypes["f"] == "float64"
    assert dtypes["flag"] == "bool"
    assert frame["flag_missing"].tolist()[0::2] == ["true", "false"]
    assert frame["s"].iloc[0] == "a" and frame["s"].isna().tolist() == [False, True, True]
    assert frame["cat"].tolist() == ["x", "y", "x"]
    assert dtypes["day"].startswith("datetime64")
    assert dtypes["at"].startswith("datetime64")
    assert frame["amount"].tolist() == [1.0, 2.0, 3.0]


def test_parquet_index_written_by_pandas():
    sink = io.BytesIO()
    pd.DataFrame({"x": [1, 2]}, index=[7, 8]).to_parquet(sink)
    assert list(read_table(sink.getvalue()).columns) == ["x"]  # unnamed index dropped
    sink = io.BytesIO()
    pd.DataFrame({"x": [1, 2]}, index=pd.Index([7, 8], name="key")).to_parquet(sink)
    assert read_table(sink.getvalue())["key"].tolist() == [7, 8]  # named index kept


def test_corrupt_parquet():
    good = parquet_bytes(pa.table({"a": [1, 2, 3]}))
    err = fails(good[: len(good) // 2])
    assert err.reason == "PARQUET_PARSE_ERROR"
    assert fails(b"PAR1 this is not parquet").reason == "PARQUET_PARSE_ERROR"


def test_csv_sent_as_parquet():
    err = fails(b"a,b\n1,2\n", "parquet")
    assert err.reason == "PARQUET_PARSE_ERROR"
    assert "PAR1" in descriptions(err)


def test_parquet_structural_errors():
    assert fails(parquet_bytes(pa.table({"a": pa.array([], pa.int64())}))).reason == "NO_ROWS"
    err = fails(parquet_bytes(pa.table({"a": [1], "a ": [2]})))
    assert err.reason == "DUPLICATE_HEADER" and "'a'" in descriptions(err)
    err = fails(parquet_bytes(pa.table({"": [1]})))
    assert err.reason == "MISSING_HEADER" and "column 1" in descriptions(err)
    err = fails(parquet_bytes(pa.table({"ok": [1, 2], "tags": pa.array([[1], [2]])})))
    assert err.reason == "UNSUPPORTED_COLUMN_TYPE" and "'tags'" in descriptions(err)


# --------------------------------------------------------------------------- stored form


def test_canonical_round_trip_keeps_values_and_dtypes():
    frame = pd.DataFrame({
        "i": np.array([1, 2, 3], dtype="int64"),
        "f": [1.5, np.nan, 2.0],
        "s": pd.Series(["a", None, "c"], dtype="str"),
        "b": [True, False, True],
        "d": pd.to_datetime(["2024-01-01", None, "2024-01-03"]),
    })
    back = read_canonical(write_canonical(frame))
    pd.testing.assert_frame_equal(back, frame)


def test_csv_round_trip_through_canonical_and_download():
    data = b'id,name,score\n1,"Smith, J",0.5\n2,,\n3,Lee,2\n'
    frame = read_table(data)
    stored = read_canonical(write_canonical(frame))
    pd.testing.assert_frame_equal(stored, frame)
    csv_bytes = to_csv_bytes(stored)
    assert csv_bytes.startswith(b"id,name,score\n1,\"Smith, J\",0.5\n2,,\n")
    pd.testing.assert_frame_equal(read_table(csv_bytes), frame)
