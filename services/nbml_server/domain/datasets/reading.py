"""Reading uploaded data set files (CSV or Parquet) into a canonical DataFrame.

Every problem with the file raises `InvalidArgument` with a stable reason and one
`FieldViolation(field="file", description=...)` per problem found; the description
says what is wrong and where (1-based line numbers, as a text editor shows them,
and the column where it applies).

The canonical frame that `read_table` returns:

- column names are strings, stripped of surrounding whitespace, non-empty, unique,
  at most MAX_COLUMN_NAME_CHARS long;
- a default RangeIndex (row i of the frame is data row i of the file);
- numeric columns are `int64` (all values integers, none missing) or `float64`;
- other columns are pandas' `str` dtype (pandas 3's default string dtype), with
  missing values as NaN; Parquet files may also give `bool` and `datetime64`
  columns. CSV never gives bool or datetime columns: "yes"/"no" or "2024-01-31"
  stay strings, and profiling (`infer_column_type`) says what they are;
- cells are stripped of surrounding whitespace; an empty cell is missing. In a
  column whose other values are all numbers, the usual missing markers
  (NA, N/A, NaN, null, None, -, ?, ...) are missing too; in other columns they
  stay text.
- a column of integers where some value has a leading zero ("01234", zip codes,
  codes) or too many digits for int64 stays a string column.

CSV dialect: RFC 4180 quoting with double quotes (a quoted cell may hold the
delimiter, quotes as `""`, and line breaks); the delimiter is a comma unless the
header line has more semicolons, tabs or pipes than commas. Blank lines are
skipped. A UTF-8 byte order mark is accepted and removed (also when repeated). With
`;` as the delimiter, numbers may use a decimal comma (`3,5`). A quoted value that runs
over several lines must end at a delimiter or a line end: text right after its closing
quote means a quote is missing, and the file is refused rather than read with rows
run together. HTML pages and JSON documents are refused as what they are.
"""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ...errors import FieldViolation, InvalidArgument

MAX_COLUMNS = 10_000
# A name is shown in every profile, suggestion and prediction request: a cell of prose or
# a run-away quoted header is no name.
MAX_COLUMN_NAME_CHARS = 1_000
# At most this many violations are listed in one error; the message gives the total.
MAX_VIOLATIONS = 20

FORMAT_CSV = "csv"
FORMAT_PARQUET = "parquet"

PARQUET_MAGIC = b"PAR1"
_UTF8_BOM = b"\xef\xbb\xbf"

# Markers read as "missing" in otherwise numeric columns (compared case-insensitively).
NA_TOKENS = frozenset({
    "na", "n/a", "nan", "null", "none", "nil", "-", "--", "?", "#n/a", "#na", "missing",
    "-nan", "<na>", "nat",
})

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DECIMAL_COMMA = r"^-?\d*,\d+$"


def _bad(reason: str, message: str, descriptions: list[str], total: int | None = None,
         field: str = "file") -> InvalidArgument:
    shown = descriptions[:MAX_VIOLATIONS]
    total = len(descriptions) if total is None else total
    if total > len(shown):
        message = f"{message} (showing the first {len(shown)} of {total})"
    return InvalidArgument(message, [FieldViolation(field, d) for d in shown], reason=reason)


def _one(reason: str, description: str, field: str = "file") -> InvalidArgument:
    return InvalidArgument(f"{field}: {description}", [FieldViolation(field, description)],
                           reason=reason)


# --------------------------------------------------------------------------- entry


def guess_format(data: bytes) -> str:
    """`parquet` when the bytes start with the Parquet magic `PAR1`, else `csv`."""
    return FORMAT_PARQUET if data[:4] == PARQUET_MAGIC else FORMAT_CSV


def read_table(data: bytes, format: str | None = None) -> pd.DataFrame:  # noqa: A002
    """Parse an uploaded file into the canonical frame (see the module docstring).

    `format` is "csv", "parquet" or None / "" (guess from the content). Raises
    InvalidArgument with reason EMPTY_FILE, UNSUPPORTED_FORMAT,
    UNSUPPORTED_ENCODING, MISSING_HEADER, DUPLICATE_HEADER, COLUMN_NAME_TOO_LONG,
    NO_ROWS, TOO_MANY_COLUMNS, CSV_PARSE_ERROR, PARQUET_PARSE_ERROR or
    UNSUPPORTED_COLUMN_TYPE.
    """
    if format:
        fmt = format.strip().lower()
        if fmt not in (FORMAT_CSV, FORMAT_PARQUET):
            raise _one("UNSUPPORTED_FORMAT",
                       f"format {format!r} is not supported; use 'csv' or 'parquet'",
                       field="format")
    else:
        fmt = ""
    if not data or data.isspace():
        raise _one("EMPTY_FILE", "the file is empty" if not data
                   else "the file holds only whitespace")
    if not fmt:
        fmt = guess_format(data)
    if fmt == FORMAT_PARQUET:
        return _read_parquet(data)
    return _read_csv(data)


# --------------------------------------------------------------------------- CSV
#
# How a CSV file is read: decode (UTF-8 only), parse the header record with the csv
# module and check it, then parse the body with pyarrow's CSV reader (fast, strict
# about field counts). When pyarrow refuses the file, or the quotes look unbalanced,
# the whole file is scanned with the csv module, which knows line numbers, to say
# precisely what is wrong; a file the scan accepts (pyarrow is stricter about
# whitespace-only lines) is then parsed with pandas.


def _decode(data: bytes) -> tuple[str, bytes]:
    """(text, the bytes without a UTF-8 BOM)."""
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise _one("UNSUPPORTED_ENCODING",
                   "the file is UTF-32 (it starts with a UTF-32 byte order mark); "
                   "UTF-32 is not supported, save as UTF-8")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _one("UNSUPPORTED_ENCODING",
                   "the file is UTF-16 (it starts with a UTF-16 byte order mark); "
                   "UTF-16 is not supported, save as UTF-8")
    if data.startswith(PARQUET_MAGIC):
        raise _one("UNSUPPORTED_FORMAT",
                   "the file starts with the Parquet magic bytes 'PAR1': it is a Parquet "
                   "file, not CSV; upload it as Parquet")
    if data.startswith(b"PK\x03\x04"):
        raise _one("UNSUPPORTED_FORMAT",
                   "the file is a ZIP archive (an Excel .xlsx workbook is one); "
                   "export the sheet as CSV (UTF-8)")
    if data.startswith(b"\x1f\x8b"):
        raise _one("UNSUPPORTED_FORMAT",
                   "the file is gzip-compressed; upload the uncompressed CSV")
    body = data
    while body.startswith(_UTF8_BOM):  # twice when a tool added one to a file that had one
        body = body[len(_UTF8_BOM):]
    bom = len(data) - len(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _one("UNSUPPORTED_ENCODING", _describe_bad_utf8(body, exc.start, bom)) from None
    nul = text.find("\x00")
    if nul >= 0:
        line = _count_lines(text[:nul])
        offset = bom + len(text[:nul].encode("utf-8"))
        raise _one("UNSUPPORTED_ENCODING",
                   f"the file contains a NUL byte at byte offset {offset} (line {line}); "
                   "it looks like UTF-16 without a byte order mark or a binary file, "
                   "not UTF-8 text; save as UTF-8 CSV")
    return text, body


def _describe_bad_utf8(data: bytes, offset: int, bom: int) -> str:
    prefix = data[:offset].decode("utf-8")  # valid: the error is the first one
    where = f"line {_count_lines(prefix)}"
    column = _column_at(prefix)
    if column is not None:
        where += f", column {column!r}"
    bad = data[offset:offset + 1].hex().upper()
    return (f"byte 0x{bad} at byte offset {offset + bom} ({where}) is not valid UTF-8; "
            "the file seems to use another encoding (such as Latin-1 or Windows-1252); "
            "save as UTF-8")


def _count_lines(text: str) -> int:
    """1-based number of the line the end of `text` is on (\\n, \\r\\n and \\r end lines)."""
    return text.count("\n") + text.count("\r") - text.count("\r\n") + 1


def _column_at(prefix: str) -> str | None:
    """Best effort: the header name of the column the end of `prefix` falls in."""
    lines = re.split(r"\r\n|\r|\n", prefix)
    if len(lines) < 2:
        return None
    header = next((h for h in lines[:-1] if h.strip()), None)
    if header is None:
        return None
    delimiter = _detect_delimiter(header)
    try:
        names = next(csv.reader([header], delimiter=delimiter))
    except (csv.Error, StopIteration):
        return None
    index = _count_outside_quotes(lines[-1], delimiter)
    if index < len(names) and names[index].strip():
        return names[index].strip()
    return None


def _count_outside_quotes(line: str, delimiter: str) -> int:
    count, quoted = 0, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == delimiter and not quoted:
            count += 1
    return count


def _detect_delimiter(header_line: str) -> str:
    """A comma, unless the header line has more semicolons, tabs or pipes."""
    best, best_count = ",", _count_outside_quotes(header_line, ",")
    for candidate in (";", "\t", "|"):
        n = _count_outside_quotes(header_line, candidate)
        if n > best_count:
            best, best_count = candidate, n
    return best


_BLANK_LINES = re.compile(r"(?:[ \t\f\v]*(?:\r\n|\r|\n))*")
_LINE = re.compile(r"[^\r\n]*")


class _Lines:
    """Feeds physical lines to csv.reader, counting them and keeping the raw lines of
    the record being read (to check its quotes)."""

    __slots__ = ("_it", "count", "current")

    def __init__(self, text: str):
        self._it = iter(io.StringIO(text, newline=""))
        self.count = 0
        self.current: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._it)
        self.count += 1
        self.current.append(line)
        return line


def _ensure_field_limit() -> None:
    # A process-wide setting of the csv module, only ever raised: an unterminated
    # quote makes one giant field, to be reported as such rather than as "field
    # larger than field limit".
    limit = 1 << 30
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def _read_header(text: str) -> tuple[list[str], int, str]:
    """(cells of the header record, its line number, the delimiter)."""
    start = _BLANK_LINES.match(text).end()
    line = _count_lines(text[:start]) if start else 1
    delimiter = _detect_delimiter(_LINE.match(text, start).group())
    _ensure_field_limit()
    size = 1 << 20
    while True:
        chunk = text[start:start + size]
        reader = csv.reader(io.StringIO(chunk, newline=""), delimiter=delimiter)
        cells = next(reader, [])
        complete = start + size >= len(text) or next(reader, None) is not None
        if complete:
            return cells, line, delimiter
        size *= 4


def _quote_problem(lines: list[str], first_line: int, delimiter: str) -> str | None:
    """What is wrong with the quotes of the record made of `lines` (csv module
    semantics, non-strict), or None: a quoted value that is never closed, or one that
    runs over several lines and is closed in the middle of a value (a quote is missing
    where it opened, and the rows in between were read as part of it)."""
    state = "start"  # start | unquoted | quoted | quote_in_quoted
    opened = closed = first_line
    for offset, line in enumerate(lines):
        number = first_line + offset
        for ch in line:
            if state == "start":
                if ch == '"':
                    state, opened = "quoted", number
                elif ch != delimiter and ch not in "\r\n":
                    state = "unquoted"
            elif state == "unquoted":
                if ch == delimiter or ch in "\r\n":
                    state = "start"
            elif state == "quoted":
                if ch == '"':
                    state, closed = "quote_in_quoted", number
            elif ch == '"':  # quote_in_quoted: a doubled quote
                state = "quoted"
            elif ch == delimiter or ch in "\r\n":
                state = "start"
            elif closed > opened:
                return (f"the quoted value that starts on line {opened} ends on line {closed} "
                        "in the middle of a value: a closing double quote (\") is missing on "
                        f"line {opened}, or a quote inside a quoted value is not doubled (\"\")")
            else:
                state = "unquoted"
    if state == "quoted":
        return (f"the quoted value that starts on line {opened} is never closed: "
                "a double quote (\") is missing")
    return None


def _scan(text: str, delimiter: str, expected: int, header_line: int) -> int:
    """Walk every record with the csv module; raise CSV_PARSE_ERROR for an
    unterminated quote or rows with the wrong number of fields; return the number of
    data rows."""
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=delimiter, quotechar='"', doublequote=True,
                        strict=False)
    seen_header = False
    data_rows = 0
    ragged: list[str] = []
    ragged_total = 0
    record_start = last_start = 1
    last_lines: list[str] = []
    try:
        for record in reader:
            start, end = record_start, lines.count
            record_start = end + 1
            last_start, last_lines = start, lines.current
            lines.current = []
            if end > start:
                problem = _quote_problem(last_lines, start, delimiter)
                if problem:
                    raise _one("CSV_PARSE_ERROR", problem)
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if not seen_header:
                seen_header = True
                continue
            data_rows += 1
            if len(record) != expected:
                ragged_total += 1
                if len(ragged) < MAX_VIOLATIONS:
                    ragged.append(_ragged(start, end, len(record), expected, header_line,
                                          delimiter))
    except csv.Error as exc:  # pragma: no cover - the non-strict reader hardly complains
        raise _one("CSV_PARSE_ERROR", f"line {lines.count}: {exc}") from None

    problem = _quote_problem(last_lines, last_start, delimiter)
    if problem:
        raise _one("CSV_PARSE_ERROR", problem)
    if ragged:
        rows = "1 row has" if ragged_total == 1 else f"{ragged_total} rows have"
        raise _bad("CSV_PARSE_ERROR", f"{rows} a different number of fields than the header",
                   ragged, ragged_total)
    return data_rows


def _ragged(start: int, end: int, found: int, expected: int, header_line: int,
            delimiter: str) -> str:
    where = f"row at line {start}" if start == end else f"row at lines {start}-{end}"
    header = "the header" if header_line == 1 else f"the header (line {header_line})"
    text = f"{where} has {found} field{'s' if found != 1 else ''}, {header} has {expected}"
    if found > expected:
        shown = "a tab" if delimiter == "\t" else repr(delimiter)
        text += f" (a value containing {shown} must be enclosed in double quotes)"
    return text


def _arrow_csv(body: bytes, delimiter: str, raw_names: list[str]) -> pa.Table | None:
    """The body parsed by pyarrow, every column as text; None when pyarrow refuses it."""
    try:
        return pacsv.read_csv(
            pa.BufferReader(body),
            read_options=pacsv.ReadOptions(use_threads=True),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"',
                                             double_quote=True, escape_char=False,
                                             newlines_in_values=True,
                                             ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.large_string() for name in raw_names},
                strings_can_be_null=False, quoted_strings_can_be_null=False,
                null_values=[], check_utf8=False),
        )
    except (pa.ArrowException, ValueError):
        return None


def _quotes_suspect(text: str, table: pa.Table) -> bool:
    """pyarrow silently accepts an unterminated quote (the value runs to the end of
    the file) and a missing one (the rows up to the next quote become one value). An
    odd number of quotes, or a value with a line break, is worth a precise scan."""
    if text.count('"') % 2:
        return True
    if table.num_rows == 0 or '"' not in text:
        return False
    return any(_any(pc.match_substring(column, "\n")) or _any(pc.match_substring(column, "\r"))
               for column in table.columns)


def _read_csv(data: bytes) -> pd.DataFrame:
    text, body = _decode(data)
    if not text or text.isspace():
        raise _one("EMPTY_FILE", "the file holds only whitespace")
    _refuse_other_formats(text)
    raw_names, header_line, delimiter = _read_header(text)
    if not raw_names:  # pragma: no cover - only blank lines, caught above
        raise _one("EMPTY_FILE", "the file holds only blank lines")
    if len(raw_names) > MAX_COLUMNS:
        _check_header(raw_names, header_line)  # raises TOO_MANY_COLUMNS
    table = None
    if len(set(raw_names)) == len(raw_names):
        table = _arrow_csv(body, delimiter, raw_names)
    if table is not None and list(table.column_names) != raw_names:
        table = None  # pyarrow read the header differently; trust the csv module
    if table is None or _quotes_suspect(text, table):
        # A precise scan raises the parse errors (unclosed quote, ragged rows) ...
        data_rows = _scan(text, delimiter, len(raw_names), header_line)
        names = _check_header(raw_names, header_line)
        if data_rows == 0:
            raise _one("NO_ROWS", f"the file has a header (line {header_line}) "
                                  "but no data rows")
        if table is None or table.num_rows != data_rows:
            table = _pandas_csv(text, delimiter, names, data_rows)
    else:
        names = _check_header(raw_names, header_line)
    if table.num_rows == 0:
        raise _one("NO_ROWS", f"the file has a header (line {header_line}) but no data rows")
    # With `;` as the delimiter (European spreadsheets), `3,5` is a decimal comma.
    decimal_comma = delimiter == ";"
    columns = {name: _convert_text_column(table.column(i), decimal_comma)
               for i, name in enumerate(names)}
    return pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows))


def _refuse_other_formats(text: str) -> None:
    """An HTML page (a download link that answered with a sign-in page) or a JSON
    document is refused as what it is, not as CSV with odd rows."""
    head = text[:200].lstrip().lower()
    if head.startswith(("<!doctype html", "<html")):
        raise _one("UNSUPPORTED_FORMAT",
                   "the file is an HTML page, not CSV (a download that answered with a "
                   "web page?); upload the CSV file itself")
    if head.startswith(("{", "[")):
        try:
            json.loads(text)
        except ValueError:
            return  # CSV whose first column name starts with a bracket
        raise _one("UNSUPPORTED_FORMAT",
                   "the file is a JSON document, not CSV; convert it to CSV or Parquet")


def _pandas_csv(text: str, delimiter: str, names: list[str], data_rows: int) -> pa.Table:
    frame = pd.read_csv(io.StringIO(text), sep=delimiter, header=0, names=names,
                        dtype=str, na_filter=False, keep_default_na=False,
                        skip_blank_lines=True, quotechar='"', doublequote=True,
                        engine="c", index_col=False)
    if len(frame) != data_rows:  # pragma: no cover - the parsers should agree
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
                if r and not (len(r) == 1 and not r[0].strip())]
        frame = pd.DataFrame(rows[1:], columns=names, dtype=str)
    return pa.table({f"c{i}": pa.array(frame.iloc[:, i].to_numpy(dtype=object),
                                       pa.large_string())
                     for i in range(len(names))})


def _check_header(cells: list[str], line: int) -> list[str]:
    """The column names (stripped), or MISSING_HEADER / DUPLICATE_HEADER /
    COLUMN_NAME_TOO_LONG / TOO_MANY_COLUMNS."""
    where = "the header" if line == 1 else f"the header (line {line})"
    if len(cells) > MAX_COLUMNS:
        raise _one("TOO_MANY_COLUMNS",
                   f"{where} has {len(cells):,} columns; at most {MAX_COLUMNS:,} are allowed")
    names = [c.strip() for c in cells]
    empty = [f"column {i} of {where} has no name" for i, n in enumerate(names, 1) if not n]
    if empty:
        raise _bad("MISSING_HEADER",
                   f"{len(empty)} column{'s' if len(empty) != 1 else ''} of {where} "
                   f"{'have' if len(empty) != 1 else 'has'} no name", empty)
    if all(_NUMBER.fullmatch(n) for n in names):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise _one("MISSING_HEADER",
                   f"the first line (line {line}) looks like data, not column names "
                   f"(all its cells are numbers: {shown}); add a header line with "
                   "column names")
    _check_name_lengths(names, where)
    _check_unique(names, where)
    return names


def _check_name_lengths(names: list[str], where: str) -> None:
    long = [f"column {i} of {where} has a name of {len(n):,} characters (it starts "
            f"{n[:30]!r}); at most {MAX_COLUMN_NAME_CHARS:,} are allowed"
            for i, n in enumerate(names, 1) if len(n) > MAX_COLUMN_NAME_CHARS]
    if long:
        raise _bad("COLUMN_NAME_TOO_LONG", f"{len(long)} column name"
                   f"{'s are' if len(long) != 1 else ' is'} too long", long)


def _check_unique(names: list[str], where: str) -> None:
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names, 1):
        positions.setdefault(name, []).append(i)
    dupes = [(n, p) for n, p in positions.items() if len(p) > 1]
    if dupes:
        descriptions = [
            f"column name {name!r} appears {len(pos)} times in {where}, at positions "
            + ", ".join(str(p) for p in pos[:-1]) + f" and {pos[-1]}"
            for name, pos in dupes
        ]
        raise _bad("DUPLICATE_HEADER", "column names must be unique", descriptions)


# Text that must stay text even though pyarrow would read it as a number.
_KEEP_AS_TEXT = r"^[+-]?0(\d|[xXbBoO])"


def _any(mask) -> bool:
    return pc.any(mask).as_py() is True


def _try_cast(values, kind):
    try:
        return pc.cast(values, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


_NUMBERISH = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity)", re.I)
_NUMBERISH_COMMA = re.compile(r"-?\d*,\d+")


def numberish(value: str, decimal_comma: bool = False) -> bool:
    """Whether stripped, non-empty text is read as a number or a missing marker in a
    numeric column."""
    return bool(_NUMBERISH.fullmatch(value) or value.lower() in NA_TOKENS
                or (decimal_comma and _NUMBERISH_COMMA.fullmatch(value)))


def _as_numbers(values, decimal_comma: bool):
    """`values` (text, nulls for missing) as an int64 or float64 array, or None when
    the column is not numeric."""
    head = pc.drop_null(values.slice(0, 1000)).to_pylist()[:200]
    if not all(numberish(v, decimal_comma) for v in head):
        return None  # quick answer for text columns
    if _any(pc.match_substring_regex(values, _KEEP_AS_TEXT)):
        return None  # leading zeros (zip codes, codes) or hex/binary/octal literals
    unsigned = pc.replace_substring_regex(values, r"^\+", "")
    numbers = _try_cast(unsigned, pa.int64())
    if numbers is not None:
        return numbers
    integers = pc.match_substring_regex(unsigned, r"^-?\d+$")
    if _any(integers) and pc.all(integers).as_py() is not False:
        return None  # integers too big for int64: identifiers, not quantities
    numbers = _try_cast(unsigned, pa.float64())
    if numbers is not None:
        return numbers
    na = pc.is_in(pc.utf8_lower(unsigned), value_set=pa.array(sorted(NA_TOKENS),
                                                              pa.large_string()))
    if _any(na):
        unsigned = pc.if_else(na, pa.scalar(None, unsigned.type), unsigned)
        if unsigned.null_count == len(unsigned):
            return None  # only missing markers: leave the text as it is
        numbers = _try_cast(unsigned, pa.int64())
        if numbers is None:
            numbers = _try_cast(unsigned, pa.float64())
        if numbers is not None:
            return numbers
    if decimal_comma and _any(pc.match_substring_regex(unsigned, _DECIMAL_COMMA)):
        return _try_cast(pc.replace_substring(unsigned, ",", "."), pa.float64())
    return None


def _convert_text_column(column: pa.ChunkedArray, decimal_comma: bool = False) -> pd.Series:
    """A text column (empty = missing) -> int64, float64 or str (see the module doc)."""
    trimmed = pc.utf8_trim_whitespace(column)
    values = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, trimmed.type), trimmed)
    if values.null_count < len(values):
        numbers = _as_numbers(values, decimal_comma)
        if numbers is not None:
            if numbers.null_count == 0 and pa.types.is_integer(numbers.type):
                return pd.Series(numbers.to_numpy(), dtype="int64")
            return pd.Series(pc.cast(numbers, pa.float64()).to_numpy(zero_copy_only=False),
                             dtype="float64")
    return values.to_pandas().astype("str")


# --------------------------------------------------------------------------- Parquet


def _read_parquet(data: bytes) -> pd.DataFrame:
    if not data.startswith(PARQUET_MAGIC):
        hint = ""
        if data.lstrip(_UTF8_BOM)[:1].isascii() and b"," in data[:4096]:
            hint = "; it looks like CSV text, upload it as CSV"
        raise _one("PARQUET_PARSE_ERROR",
                   "the file does not start with the Parquet magic bytes 'PAR1'" + hint)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise _one("PARQUET_PARSE_ERROR",
                   f"the file is not a readable Parquet file: {_short(str(exc))}") from None

    table = _drop_unnamed_index(table)
    if table.num_columns == 0:
        raise _one("EMPTY_FILE", "the Parquet file has no columns")
    if table.num_columns > MAX_COLUMNS:
        raise _one("TOO_MANY_COLUMNS",
                   f"the Parquet file has {table.num_columns} columns; "
                   f"at most {MAX_COLUMNS:,} are allowed")
    names = [n.strip() for n in table.column_names]
    empty = [f"column {i} of the Parquet file has no name"
             for i, n in enumerate(names, 1) if not n]
    if empty:
        raise _bad("MISSING_HEADER", f"{len(empty)} column(s) have no name", empty)
    _check_name_lengths(names, "the Parquet file")
    _check_unique(names, "the Parquet file")
    if table.num_rows == 0:
        raise _one("NO_ROWS", "the Parquet file has columns but no rows")

    columns: dict[str, pd.Series] = {}
    unsupported: list[str] = []
    for name, chunked in zip(names, table.columns, strict=False):
        try:
            columns[name] = _convert_arrow_column(chunked)
        except _Unsupported as exc:
            unsupported.append(f"column {name!r} has type {exc.args[0]}, which is not "
                               "supported (use numbers, text, booleans or timestamps)")
    if unsupported:
        raise _bad("UNSUPPORTED_COLUMN_TYPE", "the Parquet file has columns of "
                   "unsupported types", unsupported)
    return pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows))


class _Unsupported(Exception):
    pass


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _drop_unnamed_index(table: pa.Table) -> pa.Table:
    """A pandas index stored as a column: keep it when it has a name, drop it when it
    was the unnamed default (`__index_level_0__`)."""
    meta = table.schema.pandas_metadata or {}
    for index_column in meta.get("index_columns", []):
        if isinstance(index_column, str) and re.fullmatch(r"__index_level_\d+__",
                                                          index_column):
            if index_column in table.column_names:
                table = table.drop_columns([index_column])
    return table.replace_schema_metadata(None)


def _convert_arrow_column(column: pa.ChunkedArray) -> pd.Series:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    has_nulls = column.null_count > 0
    if pa.types.is_null(kind):
        return pd.Series(np.full(len(column), np.nan, dtype=object)).astype("str")
    if pa.types.is_boolean(kind):
        if not has_nulls:
            return pd.Series(column.to_numpy(zero_copy_only=False), dtype="bool")
        values = column.to_pandas()
        return values.map({True: "true", False: "false"}).astype("str")
    if pa.types.is_integer(kind):
        values = column.to_pandas()  # int64/uint* without nulls, float64 with nulls
        if has_nulls:
            return values.astype("float64")
        if pa.types.is_uint64(kind) and len(values) and values.max() > np.iinfo(np.int64).max:
            return values.astype("float64")
        return values.astype("int64")
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.float64()).to_pandas().astype("float64")
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or (
            hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind)):
        text = column.cast(pa.large_string()).to_pandas().astype("str").str.strip()
        return text.where(text.ne(""), np.nan).astype("str")
    if pa.types.is_timestamp(kind):
        return column.to_pandas()
    if pa.types.is_date(kind):
        return column.cast(pa.timestamp("us")).to_pandas()
    if pa.types.is_time(kind) or pa.types.is_duration(kind):
        text = column.cast(pa.string()).to_pandas()
        return text.astype("str")
    raise _Unsupported(str(kind))


# --------------------------------------------------------------------------- stored form


def write_canonical(frame: pd.DataFrame) -> bytes:
    """The stored form of a canonical frame: Parquet (zstd), without the index."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_canonical(data: bytes) -> pd.DataFrame:
    """Read what `write_canonical` wrote; dtypes come back as they were."""
    frame = pq.read_table(pa.BufferReader(data)).to_pandas()
    frame.index = pd.RangeIndex(len(frame))
    return frame


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV with a header line, `\\n` line ends, missing values as empty cells."""
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
