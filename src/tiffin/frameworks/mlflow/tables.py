"""DataFrames for an MLflow column signature, and for a model without a signature.

:class:`Columns` builds, from rows (``dataframe_split``, rows as lists), records, an object of
columns or a DataFrame, the frame MLflow's schema enforcement would hand the model: the
signature's columns in its order (optional ones only when present, the others dropped), each
cast exactly (:mod:`~tiffin.frameworks.mlflow.casting`), the index kept. A missing required
column is an ``InvalidArgument`` naming it.

It is quick where requests are: rows whose numbers numpy reads in one call, one cast and one
2-D block when every column shares a dtype, records read with ``operator.itemgetter`` when
each holds the same keys, a column index built once per set of columns, a column of a few
Python values cast value by value (numpy's per-call cost would outweigh it). For a model
without a signature, :func:`unsigned` builds the frame of a dict of columns that all hold floats
(or all int64 integers) as one block, laid out as pandas would consolidate it.

:data:`FALLBACK` is what a conversion returns where MLflow must decide instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from tiffin.exceptions import InvalidArgument, SignatureMismatch
from tiffin.frameworks.mlflow import casting

if TYPE_CHECKING:
    from tiffin.frameworks.mlflow.inputs import Spec

__all__ = [
    "FALLBACK",
    "Columns",
    "column_index",
    "range_index",
    "records_to_rows",
    "split_parts",
    "unsigned",
    "unsigned_envelope",
]

_FEW = 8  # columns of at most this many Python values are cast value by value


class _Fallback:
    def __repr__(self) -> str:
        return "FALLBACK"


#: returned where MLflow's own parser (or, for a runner, pyfunc's enforcement) must decide
FALLBACK: Final = _Fallback()


def split_parts(split: Any) -> tuple[list[Any], list[Any] | None, Any]:
    """``dataframe_split``'s data (rows), columns and index, checked."""
    if (
        not isinstance(split, dict)
        or "data" not in split
        or set(split) - {"columns", "data", "index"}
    ):
        raise InvalidArgument("dataframe_split must be {data, columns?, index?}")
    data, columns = split["data"], split.get("columns")
    if not isinstance(data, list) or (columns is not None and not isinstance(columns, list)):
        raise InvalidArgument("dataframe_split's data and columns must be lists")
    return data, columns, split.get("index")


def range_index(n: int) -> Any:
    """The index of a table of ``n`` rows built here: 0 .. n-1."""
    import pandas as pd

    return pd.RangeIndex(n)


def frame(names: Any, arrays: list[Any], index: Any) -> Any:
    """A DataFrame of one column per array (no copies, no checks: the arrays are built here,
    one-dimensional and of the index's length)."""
    import pandas as pd

    try:
        return pd.DataFrame._from_arrays(arrays, columns=names, index=index, verify_integrity=False)
    except (AttributeError, TypeError):  # a pandas without the constructor tiffin uses
        return pd.DataFrame(dict(zip(names, arrays, strict=True)), index=index)


class Columns:
    """A column signature's specs, and the frames built for them."""

    def __init__(self, specs: list[Spec], columnar: bool = False) -> None:
        self.specs = specs
        #: build dicts of columns where no index was given (see :meth:`build`)
        self.columnar = columnar
        self.names = [str(s.name) for s in specs]
        self.name_set = frozenset(self.names)
        dtypes = {str(s.dtype) for s in specs}
        #: the dtype every column shares (None: mixed, or strings or datetimes among them)
        self.uniform = specs[0].dtype if len(dtypes) == 1 else None
        self._indexes: dict[tuple[Any, ...], Any] = {}

    def index(self, names: list[Any]) -> Any:
        """The column index of ``names`` (built once per set of columns)."""
        key = tuple(names)
        found = self._indexes.get(key)
        if found is None:
            import pandas as pd

            found = pd.Index(names)
            if len(self._indexes) < 64:
                self._indexes[key] = found
        return found

    def build(self, names: list[Any], arrays: list[Any], index: Any, rows: int) -> Any:
        """The frame of ``arrays`` under column ``names`` (``index`` None: 0 .. rows-1); when
        ``columnar`` and no index was given, a dict of 1-D arrays instead (strings as object
        arrays), which a runner merges column by column and the model's runnable makes one
        frame of per batch: a frame per request, and concatenating frames, cost more than the
        rest of a request."""
        if self.columnar and index is None:
            import numpy as np

            return {
                name: a if type(a) is np.ndarray else np.asarray(a, dtype=object)
                for name, a in zip(names, arrays, strict=True)
            }
        return frame(self.index(names), arrays, range_index(rows) if index is None else index)

    def present(self, names: Any) -> list[Spec]:
        """The specs among ``names``, refusing the absence of a required one."""
        have = set(names)
        missing = [s.name for s in self.specs if s.required and s.name not in have]
        if missing:
            raise SignatureMismatch(f"the input is missing required columns {missing}")
        return [s for s in self.specs if s.name in have]

    def column(self, spec: Spec, values: Any, source: Any = None) -> Any:
        """One column's values (a list, an array, a Series) as its declared type."""
        import numpy as np

        where = casting.in_column(str(spec.name))
        if spec.type == "string":
            return casting.strings(values, where, not spec.required)
        if spec.type == "datetime":
            return casting.datetimes(values, where, not spec.required)
        if type(values) is list:
            if len(values) <= _FEW:
                return casting.values(values, spec.dtype, where, spec.label)
            source = source or (lambda: values)  # integers numpy's float inference rounds
        try:
            array = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
        except ValueError as exc:
            raise InvalidArgument(f"{where(())}: holds lists of unequal lengths") from exc
        if array.ndim != 1:
            raise InvalidArgument(
                f"{where(())}: holds lists; a {spec.type} column holds single values"
            )
        return casting.exact(array, spec.dtype, where, spec.label, source)

    def from_dict(self, columns: dict[Any, Any]) -> Any:
        """An object of columns (lists or 1-D arrays), or of scalars (one row); None where
        scalars stand beside lists (MLflow broadcasts them)."""
        present = self.specs if self.name_set <= columns.keys() else self.present(columns)
        values = [columns[s.name] for s in present]
        listed = [isinstance(v, list | tuple) or getattr(v, "ndim", 0) > 0 for v in values]
        if not any(listed):
            values = [[v] for v in values]
        elif not all(listed):
            return None
        lengths = {len(v) for v in values}
        if len(lengths) > 1:
            raise SignatureMismatch("the input's columns have different lengths")
        arrays = [self.column(s, v) for s, v in zip(present, values, strict=True)]
        rows = lengths.pop() if lengths else 0
        return self.build([s.name for s in present], arrays, None, rows)

    def from_rows(self, rows: list[Any], names: list[Any], index: Any = None) -> Any:
        """Rows of values (lists) under column ``names``."""
        import numpy as np

        width = len(names)
        if names == self.names:  # the signature's columns, in its order: the common case
            present, cols = self.specs, list(range(width))
        else:
            present = self.present(names)
            where = {name: j for j, name in enumerate(names)}
            cols = [where[s.name] for s in present]
        if index is None:
            pass
        elif isinstance(index, list) and len(index) == len(rows):
            import pandas as pd

            index = pd.Index(index)
        else:
            raise InvalidArgument("dataframe_split's index must list one label per row")
        try:
            table: Any = np.array(rows)
        except ValueError:
            table = None
        if table is None or table.ndim != 2 or table.shape[1] != width:
            for i, row in enumerate(rows):
                if not isinstance(row, list | tuple):
                    raise InvalidArgument(f"row {i} is not a list of {width} values")
                if len(row) != width:
                    raise InvalidArgument(
                        f"row {i} has {len(row)} values, but the model's signature has {width} "
                        f"columns {[s.name for s in present]}"
                    )
            table = None
        if table is not None and table.dtype.kind in "biuf":  # numbers (and booleans) only
            if self.uniform is not None and present is self.specs:
                array = casting.exact(
                    table,
                    self.uniform,
                    lambda idx: f"column {self.names[idx[1]]!r} row {idx[0]}",
                    self.specs[0].label,
                    lambda: rows,
                )
                if self.columnar and index is None:
                    return self.build(self.names, list(array.T), None, len(rows))
                import pandas as pd

                if index is None:
                    index = range_index(len(rows))
                return pd.DataFrame(array, index=index, columns=self.index(self.names), copy=False)
            arrays = [
                self.column(
                    s,
                    table[:, j] if s.dtype is not None else [r[j] for r in rows],
                    lambda j=j: [r[j] for r in rows],
                )
                for s, j in zip(present, cols, strict=True)
            ]
        else:  # strings among the numbers, nulls, cells holding lists: column by column
            transposed = list(zip(*rows, strict=True)) if rows else [()] * width
            arrays = [
                self.column(s, list(transposed[j])) for s, j in zip(present, cols, strict=True)
            ]
        return self.build([s.name for s in present], arrays, index, len(rows))

    def from_frame(self, data: Any) -> Any:
        """A DataFrame (CSV, Parquet, a runner call); string columns are kept as they came
        (pandas' string dtype or object), as MLflow keeps them."""
        present = self.present(data.columns)
        arrays = []
        for spec in present:
            column = data[spec.name]
            if column.ndim != 1:
                raise InvalidArgument(f"the input has more than one column {spec.name!r}")
            if spec.type == "string":
                arrays.append(_string_column(column, spec))
            else:
                arrays.append(self.column(spec, column))
        return frame(self.index([s.name for s in present]), arrays, data.index)


def _string_column(column: Any, spec: Spec) -> Any:
    import pandas as pd

    where = casting.in_column(str(spec.name))
    if isinstance(column.dtype, pd.StringDtype):
        if spec.required and column.isna().any():
            casting.strings(column.to_numpy(), where, False)  # names the first null
        return column.array
    if column.dtype != object:
        raise InvalidArgument(f"{where(())}: holds {column.dtype}, not strings")
    values = column.to_numpy()
    casting.strings(values, where, not spec.required)
    return values


def records_to_rows(
    records: list[Any], names: list[str] | None, all_required: bool = False
) -> tuple[list[Any], list[Any]]:
    """Records as rows of the ``names`` they hold (all their keys, in order, when None), read
    in C loops where every record holds the same ones; ``all_required``: each name must be
    held by some record."""
    first = records[0]
    if not isinstance(first, dict):
        raise InvalidArgument("record 0 is not an object")
    here = list(first) if names is None else [n for n in names if n in first]
    rows = None
    if here and (names is None or len(here) == len(names)):
        get = itemgetter(*here)
        try:
            rows = list(map(get, records)) if len(here) > 1 else [(get(r),) for r in records]
        except (KeyError, TypeError):  # a record lacks a key, or is not an object
            rows = None
        if rows is not None and names is None and any(len(r) != len(here) for r in records):
            rows = None  # records with keys the first lacks
    if rows is None:
        keys: dict[Any, None] = {}
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise InvalidArgument(f"record {i} is not an object")
            keys.update(dict.fromkeys(record))
        here = list(keys) if names is None else [n for n in names if n in keys]
        rows = [tuple(r.get(n) for n in here) for r in records]
    if all_required and names is not None and len(here) != len(names):
        missing = [n for n in names if n not in here]
        raise SignatureMismatch(f"the records are missing the model's inputs {missing}")
    return rows, here


def unsigned(value: Any) -> Any:
    """Input for a model without a signature: records and an object of equal-length lists
    (of scalars) become a DataFrame, nested lists an ndarray (``np.array``, as MLflow);
    anything else is :data:`FALLBACK`."""
    import numpy as np
    import pandas as pd

    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        return pd.DataFrame(value)
    if isinstance(value, list):
        try:
            return np.array(value)
        except ValueError as exc:
            raise InvalidArgument(f"the input's nested lists have unequal lengths ({exc})") from exc
    if (
        not isinstance(value, dict)
        or not value
        or not all(
            isinstance(v, list) and not (v and isinstance(v[0], list | dict))
            for v in value.values()
        )
    ):
        return FALLBACK
    if len({len(v) for v in value.values()}) != 1:
        raise InvalidArgument("the input's columns have different lengths")
    found = _one_block(value)
    return pd.DataFrame(value) if found is None else found


_BLOCK_DTYPES = {float: "float64", int: "int64"}


def _one_block(columns: dict[Any, list[Any]]) -> Any:
    """``pd.DataFrame(columns)`` built as one 2-D block, where every value of every column is
    a Python float (or every one an int within int64): pandas would infer that dtype for each
    column and consolidate them into the same block (the same memory layout: a model sees
    identical values in identical order); None otherwise. A tenth of pandas' cost for a frame of
    many columns, which the pyfunc runnable builds per batch for a model without a
    signature."""
    import numpy as np
    import pandas as pd

    kinds: set[type] = set()
    for column in columns.values():
        kinds.update(map(type, column))
        if len(kinds) != 1:
            return None  # mixed types (bool is not int here), or an empty column
    dtype = _BLOCK_DTYPES.get(kinds.pop())
    if dtype is None or type(next(iter(columns))) is not str:
        return None
    try:
        block = np.array(list(columns.values()), dtype=dtype)  # columns x rows, as pandas'
    except OverflowError:  # integers beyond int64: pandas' uint64 or object
        return None
    return pd.DataFrame(block.T, columns=column_index(list(columns)), copy=False)


_COLUMN_INDEXES: dict[tuple[Any, ...], Any] = {}


def column_index(names: Sequence[Any]) -> Any:
    """``pd.Index(names)``, built once per set of names (a few dozen kept): pandas' ``str``
    index of many names costs tens of microseconds."""
    key = tuple(names)
    found = _COLUMN_INDEXES.get(key)
    if found is None:
        import pandas as pd

        found = pd.Index(names)
        if len(_COLUMN_INDEXES) < 64:
            _COLUMN_INDEXES[key] = found
    return found


def unsigned_envelope(key: str, payload: Any) -> Any:
    """The payload of MLflow's envelope ``key`` for a model without a signature: the tables
    as MLflow builds them, ``inputs`` and ``instances`` as :func:`unsigned`."""
    import pandas as pd

    if key not in ("dataframe_split", "dataframe_records"):
        return unsigned(payload)
    if key == "dataframe_records" and not isinstance(payload, list):
        raise InvalidArgument("dataframe_records must be a list of records")
    try:
        if key == "dataframe_records":
            return pd.DataFrame(data=payload)
        data, columns, index = split_parts(payload)
        return pd.DataFrame(index=index, columns=columns, data=data)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{key} is not a table: {exc}") from exc
