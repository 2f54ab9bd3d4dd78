"""A small CSV or Parquet body's plain cells (tiffin.io.columnar) as an MLflow model's input.

pandas' readers type a CSV column as integers if every cell is one, else floats, else booleans
(``True``/``False`` words), else strings; :func:`typed_cells` does the same, or types toward
what the signature declares, and answers None wherever pandas could read a cell otherwise (the
body then goes to pandas after all). :func:`csv_frame` builds a column signature's frame as
:meth:`~tiffin.frameworks.mlflow.tables.Columns.from_frame` builds it from ``pd.read_csv``
(string columns as read: ``object``); :func:`unsigned_frame` a model without a signature's frame
as pandas' readers build it (strings in pandas' string dtype). For a model without a signature,
:func:`unsigned_cells` types a CSV body's columns as ``pd.read_csv`` does by default -- int64,
float64, bool, str -- from the cells' text alone (regular expressions of the number forms pandas'
parser and Python's read alike), and answers None for anything else (``inf``, integers beyond
int64, words mixed with booleans, exponents of three digits), which pandas then reads.
"""

from __future__ import annotations

import re
from itertools import chain
from typing import Any

from tiffin.frameworks.mlflow import casting
from tiffin.frameworks.mlflow.tables import Columns, column_index, frame, range_index
from tiffin.runner.containers import Table

__all__ = [
    "csv_frame",
    "typed_cells",
    "unsigned_block",
    "unsigned_cells",
    "unsigned_columns",
    "unsigned_frame",
]

_TRUE = frozenset({"True", "true", "TRUE"})
_BOOL_WORDS = _TRUE | {"False", "false", "FALSE"}

# a column of cells (joined by spaces, which no cell holds: tiffin.io.columnar.csv_rows) that
# pandas' C parser surely reads as int64, or as float64
_INT = r"-?[0-9]{1,18}"
_FLOAT = r"-?(?:[0-9]{1,18}|[0-9]{1,40}\.[0-9]{0,40}|\.[0-9]{1,40})(?:[eE][-+]?[0-9]{1,2})?"
# (a whole number of 19 digits or more among floats is text to pandas; the digits and the
# exponent are bounded so that no value nears overflow or the subnormals, where pandas' and
# Python's parsers may round apart)
_INTS = re.compile(f"{_INT}(?: {_INT})*")
# a _FLOAT with a point or an exponent (pandas reads a column of only these as float64)
_EXPONENT = r"[eE][-+]?[0-9]{1,2}"
_POINT = r"(?:[0-9]{1,40}\.[0-9]{0,40}|\.[0-9]{1,40})"
_POINTED = f"-?(?:{_POINT}(?:{_EXPONENT})?|[0-9]{{1,18}}{_EXPONENT})"
_POINTED_FLOATS = re.compile(f"{_POINTED}(?: {_POINTED})*")
_DECIMAL = re.compile("[.eE]")  # what a number of _FLOAT's forms has where _INT's have none
_FLOATS = re.compile(f"{_FLOAT}(?: {_FLOAT})*")
#: a character no number holds: a column with one is text to pandas (but "inf", "Infinity")
_TEXT = re.compile(r"[^0-9.eE+\- ]")
_INFINITE = frozenset({"inf", "infinity"})


def _numbers(cells: list[str], kind: str) -> Any:
    """Strings as int64 (``kind`` ``"i"``) or float64 (``"f"``); None where numpy cannot read
    one of them that way."""
    import numpy as np

    try:
        return np.array(cells, dtype=np.int64 if kind == "i" else np.float64)
    except (ValueError, OverflowError):
        return None


def _booleans(cells: list[str]) -> Any:
    import numpy as np

    if not _BOOL_WORDS.issuperset(cells):
        return None
    return np.array([c in _TRUE for c in cells], dtype=bool)


def typed_cells(cells: list[str], kind: str | None) -> Any:
    """One CSV column's strings as pandas' ``read_csv`` would type them toward ``kind`` (a numpy
    dtype kind the signature declares: ``"i"``/``"u"`` integers, ``"f"``, ``"b"``; ``"S"`` a
    string column; None: infer as pandas does -- integers, else floats, else booleans, else
    strings, kept as the list); None where pandas must decide."""
    if kind == "S":
        return cells
    if kind in ("i", "u"):
        return _numbers(cells, "i")
    if kind == "f":
        return _numbers(cells, "f")
    if kind == "b":
        return _booleans(cells)
    if kind is not None:
        return None
    for found in (_numbers(cells, "i"), _numbers(cells, "f"), _booleans(cells)):
        if found is not None:
            return found
    return cells  # strings


def unsigned_cells(columns: list[list[str]]) -> list[Any] | None:
    """A CSV body's columns of strings as ``pd.read_csv`` types them by default, for a model
    without a signature: lists of Python ``int`` (pandas' int64), ``float`` (float64) or
    ``bool``, or the strings themselves (pandas' string dtype); None where pandas must decide
    (a column mixing words and numbers pandas might read otherwise, ``inf``, integers of 19
    digits or more, unusual number forms)."""
    texts = [" ".join(cells) for cells in columns]
    if _FLOATS.fullmatch(" ".join(texts)):  # numbers only: integers where no cell has . e E
        return [list(map(float if _DECIMAL.search(text) else int, cells))
                for cells, text in zip(columns, texts, strict=True)]  # fmt: skip
    typed: list[Any] = []
    for cells, joined in zip(columns, texts, strict=True):
        if _INTS.fullmatch(joined):
            typed.append(list(map(int, cells)))
        elif _FLOATS.fullmatch(joined):
            typed.append(list(map(float, cells)))
        elif _BOOL_WORDS.issuperset(cells):
            typed.append([c in _TRUE for c in cells])
        elif not _TEXT.search(joined) or not _BOOL_WORDS.isdisjoint(cells):
            return None  # numbers in forms pandas may read otherwise, words mixed with booleans
        elif any(c.lstrip("+-").lower() in _INFINITE for c in cells):
            return None
        else:  # a word among them: pandas keeps every cell as text
            typed.append(cells)
    return typed


def unsigned_block(rows: list[list[str]]) -> Any:
    """A CSV body's rows of strings as the one 2-D block ``pd.read_csv`` makes of them where
    every cell is a number written with a point or an exponent (float64) or every cell an
    integer (int64) -- the commonest unsigned tables, typed with one regular expression; None
    for anything else (:func:`unsigned_cells` then types column by column)."""
    import numpy as np

    cells = list(chain.from_iterable(rows))
    text = " ".join(cells)
    if _POINTED_FLOATS.fullmatch(text):
        flat = np.array(list(map(float, cells)), dtype=np.float64)
    elif _INTS.fullmatch(text):
        flat = np.array(list(map(int, cells)), dtype=np.int64)
    else:
        return None
    return flat.reshape(len(rows), len(rows[0]))


def unsigned_frame(names: list[str], columns: list[Any], rows: int, table: Any = None) -> Any:
    """A DataFrame of plain columns (arrays, or lists of Python values or strings) for a model
    without a signature, typed as pandas' readers type them (strings in pandas' string dtype);
    ``table``: a 2-D array the columns are the columns of (one block, no copies)."""
    import numpy as np
    import pandas as pd

    if table is not None:
        return pd.DataFrame(table, columns=column_index(names), index=range_index(rows), copy=False)
    arrays = []
    for name, column in zip(names, columns, strict=True):
        if type(column) is list:
            first = column[0] if column else ""
            if type(first) is str:
                column = casting.strings(column, casting.in_column(name), False)
            else:  # typed by unsigned_cells: every value of first's type
                column = np.array(column, dtype=_DTYPES[type(first)])
        arrays.append(column)
    return frame(column_index(names), arrays, range_index(rows))


_DTYPES = {int: "int64", float: "float64", bool: "bool"}


def csv_frame(columns: Columns, names: list[str], cells: list[list[str]], rows: int) -> Any:
    """A CSV body's columns of strings as the signature's frame, as :meth:`Columns.from_frame`
    builds it from ``pd.read_csv`` (string columns read as text: ``object``); None where pandas
    must read the body (a datetime column, a cell numpy reads otherwise)."""
    import numpy as np

    by_name = dict(zip(names, cells, strict=True))
    present = columns.present(by_name)
    arrays = []
    for spec in present:
        values = by_name[str(spec.name)]
        if spec.type == "string":
            arrays.append(np.array(values, dtype=object))
            continue
        typed = typed_cells(values, getattr(spec.dtype, "kind", None))
        if typed is None:
            return None
        arrays.append(columns.column(spec, typed))
    return columns.build([s.name for s in present], arrays, None, rows)


_SCALAR_TYPES = frozenset({int, float, str, bool})
_LIST, _STR = {list}, {str}


def unsigned_columns(key: str | None, payload: Any) -> dict[str, list[Any]] | Table | None:
    """For a model without a signature, served through the pyfunc runnable (which makes a frame
    of a dict of columns per batch): the payload of envelope ``key`` (None: a bare body) as a
    dict of equal-length lists of numbers and strings -- records sharing their keys, an object of
    columns, ``dataframe_split`` without an index --, or as a
    :class:`~tiffin.runner.containers.Table` where every cell is a float (or every one an int):
    the one float64 (int64) block pandas frames; None for anything else, which becomes a frame
    per request as before."""
    columns: dict[str, list[Any]] | None = None
    if key == "dataframe_split":
        if not isinstance(payload, dict) or set(payload) != {"columns", "data"}:
            return None
        names, lines = payload["columns"], payload["data"]
        if not (isinstance(names, list) and isinstance(lines, list) and lines):
            return None
        if set(map(type, names)) != _STR or len(set(names)) != len(names):
            return None
        if not all(type(r) is list and len(r) == len(names) for r in lines):
            return None
        rows: Any = lines
    elif key == "dataframe_records" or (type(payload) is list and payload):
        if type(payload) is not list or not payload or type(payload[0]) is not dict:
            return None
        names = list(payload[0])
        if not all(type(r) is dict and list(r) == names for r in payload):
            return None
        rows = [r.values() for r in payload]
    elif type(payload) is dict and payload:
        columns = payload
        if set(map(type, columns.values())) != _LIST:
            return None
        lengths = set(map(len, columns.values()))
        if len(lengths) != 1 or 0 in lengths:
            return None
        names, rows = list(columns), None
    else:
        return None
    if set(map(type, names)) != _STR:
        return None
    kinds = set(map(type, chain.from_iterable(rows if columns is None else columns.values())))
    if kinds in _ONE_DTYPE:
        lists = None if columns is None else list(columns.values())
        table = _block(names, rows, lists, kinds.pop())
        if table is not None:
            return table
    if not kinds <= _SCALAR_TYPES:
        return None
    if columns is None:
        columns = {n: list(c) for n, c in zip(names, zip(*rows, strict=True), strict=True)}
    return columns


_ONE_DTYPE = ({float}, {int})  # cells pandas frames as one float64 or int64 block


def _block(names: list[str], rows: Any, columns: Any, kind: type) -> Table | None:
    """Cells all Python floats (or ints), given by ``rows`` or else by ``columns`` (lists), as
    the float64 (int64) table pandas makes of them; None for an int beyond int64 (pandas' to
    type: uint64 or object)."""
    import numpy as np

    by_rows = rows is not None
    count = len(rows) if by_rows else len(columns[0])
    cells = chain.from_iterable(rows if by_rows else columns)
    try:
        flat = np.fromiter(cells, np.float64 if kind is float else np.int64, count * len(names))
    except OverflowError:
        return None
    block = flat.reshape(count, len(names)) if by_rows else flat.reshape(len(names), count).T
    return Table(tuple(names), block)
