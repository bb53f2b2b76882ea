"""Corpus inputs too big (or too binary) to commit, built on demand: a case names one as
`generate: {function: NAME, ...keyword arguments}`. Deterministic, so a failure
reproduces."""

import io
import random

import pyarrow as pa
import pyarrow.parquet as pq


def wide_csv(columns: int, rows: int = 2) -> bytes:
    """A header of `columns` names and `rows` rows of small integers."""
    header = ",".join(f"c{i}" for i in range(columns))
    body = "".join(",".join(str((row + i) % 10) for i in range(columns)) + "\n"
                   for row in range(rows))
    return f"{header}\n{body}".encode()


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Binary junk: what an upload of the wrong file looks like."""
    return random.Random(seed).randbytes(size)


def long_cell_csv(cell_bytes: int) -> bytes:
    """Two rows, the first with one note of `cell_bytes` letters (one very long line)."""
    return b"id,note,y\n1," + b"x" * cell_bytes + b",a\n2,short,b\n"


def long_header_csv(name_chars: int) -> bytes:
    """A header whose second name is `name_chars` letters long."""
    return b"id," + b"n" * name_chars + b"\n1,2\n"


def ragged_last_row_csv(rows: int) -> bytes:
    """`rows` good rows, then one with a field missing: its line number is rows + 2."""
    body = "".join(f"{i},{i * 2},{'ab'[i % 2]}\n" for i in range(rows))
    return f"x,z,y\n{body}{rows},{rows * 2}\n".encode()


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def parquet_without_rows() -> bytes:
    return _parquet(pa.table({"x": pa.array([], pa.int64()), "y": pa.array([], pa.string())}))


def parquet_with_list_column() -> bytes:
    """A column of lists: no model takes those."""
    return _parquet(pa.table({"tags": [["a", "b"], ["c"], []], "y": ["p", "q", "p"]}))


GENERATORS = {f.__name__: f for f in (wide_csv, random_bytes, long_cell_csv, long_header_csv,
                                      ragged_last_row_csv, parquet_without_rows,
                                      parquet_with_list_column)}
