"""Small CSV and Parquet bodies read without pandas: the cells, for a caller that knows the types.

pandas' readers cost hundreds of microseconds per call whatever the size of the table (about
0.6 ms for ``read_csv``, 1-2 ms for ``read_parquet`` of one row), which is most of a one-row
request. These readers give the plain cells instead, or None where pandas must read the body
because its answer could differ:

* :func:`csv_rows`: the header and the rows as strings (the standard library's ``csv``), for a
  body under :data:`SMALL` bytes whose every row has the header's width and whose cells are
  neither empty nor one of pandas' missing-value words (``NA``, ``null``, ``nan`` ...) and hold no
  whitespace or ``_`` (pandas reads those differently from Python's number parsing);
* :func:`parquet_columns`: the columns as numpy arrays (numbers, booleans) or lists of ``str``,
  through pyarrow with one read of the footer, for a file whose every column is a number, a
  boolean or a string without nulls and whose pandas metadata (if any) keeps no index column.

Both check the decode limits (:mod:`tiffin.io.limits`) before building anything.
"""

from __future__ import annotations

import io
from typing import Any

from tiffin.io.limits import check_csv, check_table

__all__ = ["SMALL", "csv_rows", "parquet_columns"]

#: bodies from this size are left to pandas (its fixed cost no longer matters)
SMALL = 64 * 1024

# pandas' default missing-value words (read_csv's na_values), and cells it reads otherwise
_MISSING = frozenset(
    [
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    ]
)


def csv_rows(body: bytes) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows of strings) of a small, plain CSV body; None: let pandas read it."""
    if len(body) >= SMALL or b"_" in body or b" " in body or b"\t" in body or b"\r" in body:
        return None
    import csv

    check_csv(body)
    try:
        text = body.decode("utf-8")
        lines = list(csv.reader(io.StringIO(text)))
    except (UnicodeDecodeError, csv.Error):
        return None  # pandas' own words
    if len(lines) < 2:
        return None
    header, rows = lines[0], lines[1:]
    width = len(header)
    if not width or len(set(header)) != width:
        return None  # pandas renames duplicate columns
    for row in rows:
        if len(row) != width or not all(row) or not _MISSING.isdisjoint(row):
            return None
    if "" in header:
        return None
    return header, rows


def parquet_columns(body: bytes) -> tuple[list[str], list[Any], int] | None:
    """(column names, columns, rows) of a Parquet file of plain columns; None: let pandas
    read it (or say what is wrong with it)."""
    if len(body) >= SMALL:
        return None
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import pyarrow.types as pt
    except ImportError:
        return None
    try:
        parquet = pq.ParquetFile(pa.BufferReader(body))
    except Exception:
        return None  # not Parquet: pandas' reader says so
    meta = parquet.metadata
    check_table(meta.num_rows, meta.num_columns)
    schema = parquet.schema_arrow
    pandas_meta = schema.pandas_metadata
    if pandas_meta and any(not isinstance(i, dict) for i in pandas_meta.get("index_columns", [])):
        return None  # an index stored as a column: pandas restores it
    plain = (pt.is_integer, pt.is_floating, pt.is_boolean, pt.is_string, pt.is_large_string)
    if not all(any(test(field.type) for test in plain) for field in schema):
        return None
    try:
        table = parquet.read(use_threads=False)
    except Exception:
        return None
    columns: list[Any] = []
    for field, column in zip(schema, table.columns, strict=True):
        if column.null_count:
            return None
        if pt.is_string(field.type) or pt.is_large_string(field.type):
            columns.append(column.to_pylist())
        else:
            columns.append(column.to_numpy())
    return list(schema.names), columns, table.num_rows
