"""Small CSV and Parquet bodies read without pandas: the cells, for a caller that knows the types.

pandas' readers cost hundreds of microseconds per call whatever the size of the table (about
0.6 ms for ``read_csv``, 1-2 ms for ``read_parquet`` of one row), which is most of a one-row
request. These readers give the plain cells instead, or None where pandas must read the body
because its answer could differ:

* :func:`csv_rows`: the header and the rows as strings (split at newlines and commas, or the
  standard library's ``csv`` where a quote may join them), for a
  body under :data:`SMALL` bytes whose every row has the header's width and whose cells are
  neither empty nor one of pandas' missing-value words (``NA``, ``null``, ``nan`` ...) and hold no
  whitespace or ``_`` (pandas reads those differently from Python's number parsing);
* :func:`parquet_columns`: the columns as numpy arrays (numbers, booleans) or lists of ``str``
  (or one 2-D array where every column holds one type of number), through pyarrow's reader
  itself (one read of the footer, the Arrow schema taken from the table read), for a file
  whose every column is a number, a boolean or a string without nulls and whose pandas
  metadata (if any, read with orjson) restores nothing more: no index column, no named column
  index, no extension dtype.

Both check the decode limits (:mod:`tiffin.io.limits`) before building anything.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any

from tiffin.io import parquet_layouts
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
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        check_csv(body)
        return None  # pandas' own words
    if b'"' in body or b"\x00" in body:
        import csv

        check_csv(body)
        try:
            lines = list(csv.reader(io.StringIO(text)))
        except csv.Error:
            return None
    else:  # no quotes: csv's excel dialect splits at newlines and commas, and nothing else
        texts = text.split("\n")
        if texts[-1] == "":  # the body's last newline (csv.reader gives no row after it)
            texts.pop()
        # check_csv's count, from the lines: rows after the header, the header's fields
        check_table(max(len(texts) - 1, 0), texts[0].count(",") + 1 if texts else 0,
                    "the CSV body")  # fmt: skip
        lines = [line.split(",") for line in texts]
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


def _parquet_reader(body: bytes) -> Any:
    """An open pyarrow Parquet reader of ``body`` (its footer read once); None: not Parquet,
    or no pyarrow."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    try:  # the reader under pq.ParquetFile, without its per-column Python bookkeeping
        from pyarrow._parquet import ParquetReader

        reader = ParquetReader()
        reader.open(pa.py_buffer(body), pre_buffer=False)
        return reader
    except ImportError:  # a pyarrow that moved it: the public wrapper
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(pa.py_buffer(body)).reader
        except Exception:
            return None
    except Exception:
        return None  # not Parquet: pandas' reader says so


@cache
def _plain_types() -> frozenset[int]:
    """pyarrow's type ids of the columns read here: integers, floats, booleans, strings."""
    import pyarrow as pa

    types = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16()]
    types += [pa.uint32(), pa.uint64(), pa.float16(), pa.float32(), pa.float64(), pa.bool_()]
    types += [pa.string(), pa.large_string()]
    return frozenset(t.id for t in types)


#: pandas dtypes (the ``numpy_type`` of pandas' Parquet metadata) that read back as the plain
#: column read here; any other (``Int64``, ``category``, ``datetime64[ns]`` ...) is pandas' to
#: restore
_PANDAS_PLAIN = frozenset(
    {
        *("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
        *("float16", "float32", "float64", "bool", "object", "str"),
    }
)


def _pandas_plain(metadata: dict[bytes, bytes] | None) -> bool:
    """Whether pandas' metadata (if any) restores nothing a plain read would miss: no index
    stored as a column or starting elsewhere than 0, no named column index, no column of an
    extension dtype (``Int64``, ``string`` ...) or any other but plain numbers, booleans and
    ``str``/``object``."""
    raw = (metadata or {}).get(b"pandas")
    if raw is None:
        return True
    import orjson

    try:
        meta = orjson.loads(raw)
        if not all(map(_default_range, meta.get("index_columns", ()))):
            return False  # an index stored as a column, or another range: pandas restores it
        if any(c.get("name") is not None for c in meta.get("column_indexes", ())):
            return False  # a named column index: pandas restores its name
        return all(c.get("numpy_type") in _PANDAS_PLAIN for c in meta.get("columns", ()))
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return False


def _default_range(index: Any) -> bool:
    """An index pandas' metadata records as the range 0, 1, ... (the index built here)."""
    return (
        type(index) is dict
        and index.get("kind") == "range"
        and index.get("start") == 0
        and index.get("step") == 1
        and index.get("name") is None
    )


def parquet_columns(body: bytes) -> tuple[list[str], Any, int] | None:
    """(column names, columns, rows) of a Parquet file of plain columns; None: let pandas
    read it (or say what is wrong with it). The columns are numpy arrays (numbers, booleans)
    and lists of ``str``, or, where every column holds one type of number, one 2-D array
    (rows x columns, column-major, as pandas lays out the frame it reads) whose columns they
    are."""
    if len(body) >= SMALL:
        return None
    known = parquet_layouts.read(body)
    if known is not None:
        check_table(known[2], len(known[0]))
        return known
    plain = _parquet_columns(body)
    if plain is not None:
        parquet_layouts.learn(body, *plain)
    return plain


def _parquet_columns(body: bytes) -> tuple[list[str], Any, int] | None:
    """:func:`parquet_columns` by pyarrow."""
    reader = _parquet_reader(body)
    if reader is None:
        return None
    meta = reader.metadata
    check_table(meta.num_rows, meta.num_columns)
    try:  # the Arrow schema comes with the table: no second conversion of the footer's
        table = reader.read_all(use_threads=False)
    except Exception:
        return None
    schema = table.schema
    ids = [t.id for t in schema.types]
    if not ids or not _plain_types().issuperset(ids) or not _pandas_plain(schema.metadata):
        return None
    names, rows = list(schema.names), table.num_rows
    if len(set(ids)) == 1 and ids[0] in _tensor_types() and rows:
        if meta.num_row_groups > 1:  # (each call that leaves the GIL may wait to get it back)
            table = table.combine_chunks()
        batches = table.to_batches()
        if len(batches) == 1:
            import numpy as np

            try:  # one call for every column, column-major as pandas lays out a frame's block
                return names, np.asarray(batches[0].to_tensor(row_major=False)), rows
            except (TypeError, ValueError):  # (pyarrow's errors subclass these)
                return None
    columns: list[Any] = []
    strings = _string_types()
    for type_id, column in zip(ids, table.columns, strict=True):
        if column.null_count:
            return None
        columns.append(column.to_pylist() if type_id in strings else column.to_numpy())
    return names, columns, rows


@cache
def _string_types() -> frozenset[int]:
    import pyarrow as pa

    return frozenset([pa.string().id, pa.large_string().id])


@cache
def _tensor_types() -> frozenset[int]:
    """Numbers pyarrow reads as a 2-D tensor (booleans and strings it cannot)."""
    return _plain_types() - _string_types() - {_bool_type()}


def _bool_type() -> int:
    import pyarrow as pa

    return int(pa.bool_().id)
