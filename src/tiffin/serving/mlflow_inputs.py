"""An MLflow model's request bodies as its inputs: tiffin's parser, inside the decode limits.

:class:`~tiffin.frameworks.mlflow.inputs.InputSchema` (the frameworks layer) turns parsed
values into what the model's signature declares; the decode limits
(:mod:`tiffin.io.limits`) live in the io layer above it, so the bodies are read here, where
both can be imported, and each is measured before anything is built from it: a JSON body and
its envelope's payload (:func:`~tiffin.io.payloads.check_envelope`), an ``.npy`` header, a CSV
body's header and lines, a Parquet footer. With a column signature, the keys of records and of
an object of columns that are not among its columns are dropped before they are measured
(they would be dropped anyway), so junk keys build neither a 413 nor a table.

Each function returns the model's input, or :data:`FALLBACK` where MLflow's parser must read
the body instead: a signature tiffin leaves to MLflow (``needs_mlflow``); for
``/invocations``, a body that is not an object with exactly one of MLflow's envelopes, or that
carries ``params`` or one of MLflow's LLM keys (``messages``, ``prompt``, ``input``), so
MLflow's own error and parameter handling apply. ``schema=None`` is a model without a
signature (:func:`~tiffin.frameworks.mlflow.inputs.unsigned`).

A Parquet value the signature's type cannot hold is a ``SignatureMismatch``, as MLflow finds it
when it enforces the schema on the frame (a JSON or CSV value is a parse error there).
"""

from __future__ import annotations

import io
from functools import cache
from itertools import chain
from typing import Any

from tiffin.exceptions import InvalidArgument, SignatureMismatch, TiffinError
from tiffin.frameworks.mlflow.cells import (
    csv_frame,
    typed_cells,
    unsigned_block,
    unsigned_cells,
    unsigned_columns,
    unsigned_frame,
)
from tiffin.frameworks.mlflow.inputs import (
    ENVELOPES,
    FALLBACK,
    InputSchema,
    unsigned,
    unsigned_envelope,
)
from tiffin.io.columnar import csv_rows, parquet_columns
from tiffin.io.limits import (
    check_array,
    check_csv,
    check_json_table,
    check_parquet,
    current,
    nested_shape,
)
from tiffin.io.npy import read_npy
from tiffin.io.payloads import check_envelope
from tiffin.runner.containers import Table

__all__ = [
    "FALLBACK",
    "LLM_KEYS",
    "from_csv",
    "from_invocation",
    "from_json",
    "from_npy",
    "from_parquet",
    "known_columns",
    "plain_tensor",
]

#: keys that make MLflow read a body as an LLM request (chat, completions, embeddings)
LLM_KEYS = frozenset({"messages", "prompt", "input"})

# the envelopes whose payload is the tensor itself
_TENSOR_KEYS = frozenset({"inputs", "instances"})
_SPLIT_KEYS = frozenset({"columns", "data", "index"})


def known_columns(payload: Any, columns: frozenset[str]) -> Any:
    """Records, or an object of columns, without keys outside ``columns`` (the same object
    when there are none)."""
    if type(payload) is dict:
        if payload.keys() <= columns:
            return payload
        return {key: value for key, value in payload.items() if key in columns}
    if type(payload) is list and payload and type(payload[0]) is dict:
        if all(type(row) is not dict or row.keys() <= columns for row in payload):
            return payload
        return [
            {key: value for key, value in row.items() if key in columns}
            if type(row) is dict
            else row
            for row in payload
        ]
    return payload


@cache
def _float_max(dtype: Any) -> float:
    import numpy as np

    return float(np.finfo(dtype).max)


def plain_tensor(payload: Any, schema: InputSchema) -> Any:
    """Nested lists of plain numbers as the model's one unnamed tensor, when numpy reads them
    as a dtype that becomes the declared one with nothing left to check -- the commonest body,
    in about a microsecond. None: :meth:`InputSchema.from_inputs` decides (the limits, ragged
    lists, strings, values the dtype cannot hold, shapes) and words any error.

    The nested lists' declared shape is read along their first elements and measured against
    ``max_decoded_cells`` before numpy builds anything; a ragged or deeper list makes numpy
    fail or infer a different shape, which goes to the general path."""
    spec = schema.specs[0]
    shape = spec.shape
    if not shape or payload is None:
        return None
    cells = 1
    value = payload
    for _ in shape:
        if type(value) is not list or not value:
            return None
        cells *= len(value)
        value = value[0]
    if type(value) is list or cells > current().max_decoded_cells:
        return None
    import numpy as np

    try:
        array = _narrow_floats(payload, len(shape), cells, spec.dtype)
        if array is None:
            array = np.array(payload)
    except ValueError:
        return None
    found_shape = array.shape
    if len(found_shape) != len(shape):
        return None
    for declared, length in zip(shape, found_shape):  # noqa: B905 (equal lengths)
        if declared != -1 and declared != length:
            return None
    found, target = array.dtype, spec.dtype
    if found.kind == target.kind and found.itemsize <= target.itemsize:
        return array if found == target else array.astype(target)
    if target.kind == "f" and found.kind in "iub":
        return array.astype(target)  # as exact(): every integer has a nearest float
    if target.kind == "f" and found.kind == "f":  # narrower floats: none may become inf
        return array.astype(target) if np.abs(array).max() <= _float_max(target) else None
    return None


#: payloads of at most this many cells are checked cell by cell in Python before a float32
#: (float16) array is made of them: one numpy call, not four (a cast, a reduction and a copy
#: cost more than the check, as a server's cold caches find them)
_FEW_CELLS = 256


def _narrow_floats(payload: Any, depth: int, cells: int, dtype: Any) -> Any:
    """A small 1-D or 2-D payload of Python floats only, each within ``dtype``'s range, made
    into an array of ``dtype`` (float32 or float16) at once: what ``np.array(payload)`` cast to
    it gives. None for anything else (ints, bools, strings, ragged or deeper lists, values the
    dtype cannot hold), which numpy reads first."""
    if dtype.kind != "f" or dtype.itemsize >= 8 or cells > _FEW_CELLS or depth > 2:
        return None
    if depth == 2 and set(map(type, payload)) != _LISTS:
        return None
    flat = payload if depth == 1 else list(chain.from_iterable(payload))
    if set(map(type, flat)) != _FLOATS or not max(map(abs, flat)) <= _float_max(dtype):
        return None
    total = sum(flat)
    if total != total:  # a NaN (which max may pass over): numpy's check words it
        return None
    import numpy as np

    return np.array(payload, dtype=dtype)  # ragged rows: numpy's ValueError


_LISTS, _FLOATS = {list}, {float}


def _unsigned(key: str | None, payload: Any, columnar: bool) -> Any:
    if columnar:
        table_key = key if key in ("dataframe_split", "dataframe_records") else None
        columns = unsigned_columns(table_key, payload)
        if columns is not None:
            return columns
    return unsigned(payload) if key is None else unsigned_envelope(key, payload)


def _envelope(key: str, payload: Any, schema: InputSchema | None, columnar: bool) -> Any:
    if schema is not None and schema.kind == "columns" and key != "dataframe_split":
        payload = known_columns(payload, schema.name_set)
    check_envelope(key, payload)
    if schema is None:
        return _unsigned(key, payload, columnar)
    return schema.from_envelope(key, payload)


def from_invocation(decoded: Any, schema: InputSchema | None, columnar: bool = False) -> Any:
    """The input in a parsed ``/invocations`` JSON body, or :data:`FALLBACK`. ``columnar``:
    the pyfunc runnable will make the frame, so a table for a model without a signature may
    stay a dict of columns (:func:`~tiffin.frameworks.mlflow.cells.unsigned_columns`)."""
    if type(decoded) is not dict or decoded.get("params") or not LLM_KEYS.isdisjoint(decoded):
        return FALLBACK
    if schema is not None and schema.needs_mlflow:
        return FALLBACK
    keys = [key for key in ENVELOPES if key in decoded]
    if len(keys) != 1:
        return FALLBACK
    key = keys[0]
    if schema is not None and schema.kind == "tensor":
        array = plain_tensor(_tensor_payload(key, decoded[key]), schema)
        if array is not None:
            return array
    return _envelope(key, decoded[key], schema, columnar)


def _tensor_payload(key: str, payload: Any) -> Any:
    """What :func:`plain_tensor` may read in envelope ``key``: the payload of ``inputs`` and
    ``instances``, the rows of a ``dataframe_split`` whose columns (if named) are as many as
    each row's values (the table is the tensor; its labels play no part); else None."""
    if key in _TENSOR_KEYS:
        return payload
    if key != "dataframe_split" or type(payload) is not dict:
        return None
    data, columns = payload.get("data"), payload.get("columns")
    if type(data) is not list or not data or type(data[0]) is not list:
        return None
    if not data[0] or type(data[0][0]) is list:
        return None  # cells holding lists: MLflow reshapes them
    if payload.keys() - _SPLIT_KEYS or not (columns is None or _same_width(columns, data[0])):
        return None
    return data


def _same_width(columns: Any, row: list[Any]) -> bool:
    return type(columns) is list and len(columns) == len(row)


def from_json(value: Any, schema: InputSchema | None, columnar: bool = False) -> Any:
    """The input in a parsed JSON body of rows, records, an object of columns (or inputs),
    or one of MLflow's envelopes (``serve-model``, ``tiffin models predict``)."""
    if schema is not None and schema.needs_mlflow:
        return FALLBACK
    if type(value) is list and schema is not None and schema.kind == "tensor":
        array = plain_tensor(value, schema)
        if array is not None:
            return array
    if isinstance(value, dict):
        keys = [key for key in ENVELOPES if key in value]
        if len(keys) > 1:
            raise InvalidArgument(f"input names more than one of {list(ENVELOPES)}: {keys}")
        if keys:
            return _envelope(keys[0], value[keys[0]], schema, columnar)
    if schema is not None and schema.kind == "columns":
        value = known_columns(value, schema.name_set)
    check_json_table(value, "the input")
    if isinstance(value, dict):  # an object of arrays: each one's nested lists too (a flat
        for name, column in value.items():  # one is a column the table's check counted)
            if isinstance(column, list) and column and isinstance(column[0], list):
                check_array(nested_shape(column), f"the input {name!r}")
    return _unsigned(None, value, columnar) if schema is None else schema.from_inputs(value)


def from_npy(body: bytes, schema: InputSchema | None) -> Any:
    """An ``.npy`` body."""
    try:
        array = read_npy(body)
    except TiffinError:
        raise
    except Exception as exc:  # numpy's own words for a malformed file
        raise InvalidArgument(f"request body is not a valid .npy array: {exc}") from exc
    return array if schema is None else schema.from_array(array)


def _csv_cells(
    names: list[str], rows: list[list[str]], schema: InputSchema | None, columnar: bool
) -> Any:
    """A small CSV body's rows of strings (:func:`~tiffin.io.columnar.csv_rows`) as the
    model's input; None where pandas must read the body after all."""
    if schema is None:
        if columnar:  # every cell a float (or every one an int): one Table
            block = unsigned_block(rows)
            if block is not None:
                return Table(tuple(names), block)
        columns = [list(c) for c in zip(*rows, strict=True)]
        return _unsigned_csv(names, unsigned_cells(columns), len(rows), columnar)
    if schema.kind == "tensor":
        kind = schema.specs[0].dtype.kind
        if kind not in "iuf":
            return None
        table = typed_cells(list(chain.from_iterable(rows)), kind)
        if table is None:
            return None
        return schema.from_table(table.reshape(len(rows), len(names)), len(names))
    if schema.columns is None:
        return None
    columns = [list(c) for c in zip(*rows, strict=True)]
    return csv_frame(schema.columns, names, columns, len(rows))


def _unsigned_csv(names: list[str], typed: list[Any] | None, rows: int, columnar: bool) -> Any:
    """Typed CSV columns for a model without a signature: for the pyfunc runnable
    (``columnar``), a dict of lists of Python values, or one Table where all are floats (or all
    ints), which it frames per batch as pandas types them -- int64, float64, bool, str -- what
    ``pd.read_csv`` gives; else the frame."""
    if typed is None:
        return None
    if columnar:  # typed cells are ints, floats, bools and strings: a Table or the dict
        return unsigned_columns(None, dict(zip(names, typed, strict=True)))
    return unsigned_frame(names, typed, rows)


def _parquet_cells(
    names: list[str], columns: Any, rows: int, schema: InputSchema | None, columnar: bool = False
) -> Any:
    """A small Parquet file's columns (:func:`~tiffin.io.columnar.parquet_columns`: arrays and
    lists of strings, or one 2-D array) as the model's input; None where pandas must read it.
    ``columnar``: as for :func:`from_invocation` (a table of one dtype stays a Table)."""
    import numpy as np

    table = columns if type(columns) is np.ndarray else None
    if schema is None:  # the frame pandas reads: the file's own types (float32 stays float32)
        if columnar and table is not None:
            return Table(tuple(names), table)
        return unsigned_frame(names, list(table.T) if table is not None else columns, rows,
                              table)  # fmt: skip
    if schema.kind == "tensor":
        if table is None:
            if any(isinstance(c, list) for c in columns):
                return None  # strings where a tensor of numbers is declared: pandas' error
            table = np.column_stack(columns)
        return schema.from_table(table, len(names))
    if schema.columns is None:
        return None
    cells = list(table.T) if table is not None else columns
    return schema.columns.from_dict(dict(zip(names, cells, strict=True)))


def from_csv(body: bytes, schema: InputSchema | None, columnar: bool = False) -> Any:
    """A CSV body (a header line, then rows); string columns are read as text, as MLflow
    reads them, the others as pandas infers them and then cast exactly. A small plain body
    is read without pandas, to the same result. ``columnar``: as for
    :func:`from_invocation`, a table for a model without a signature may stay a dict of
    columns."""
    import pandas as pd

    if schema is not None and schema.needs_mlflow:
        return FALLBACK
    plain = csv_rows(body)
    if plain is not None:
        converted = _csv_cells(*plain, schema, columnar)
        if converted is not None:
            return converted
    check_csv(body)
    dtypes = {name: object for name in schema.string_columns} if schema is not None else None
    try:
        frame = pd.read_csv(io.StringIO(body.decode("utf-8")), dtype=dtypes)
    except Exception as exc:  # pandas' own words for a malformed body
        raise InvalidArgument(f"request body is not a valid CSV table: {exc}") from exc
    return frame if schema is None else schema.from_frame(frame)


def from_parquet(body: bytes, schema: InputSchema | None, columnar: bool = False) -> Any:
    """A Parquet body; a small one of plain columns is read with pyarrow alone (or at a known
    layout's positions). ``columnar``: as for :func:`from_invocation`."""
    import pandas as pd

    if schema is not None and schema.needs_mlflow:
        return FALLBACK
    plain = parquet_columns(body)
    if plain is not None:
        try:
            converted = _parquet_cells(*plain, schema, columnar)
        except SignatureMismatch:
            raise
        except InvalidArgument as exc:  # as for the frame below
            raise SignatureMismatch(str(exc)) from exc
        if converted is not None:
            return converted
    check_parquet(body)
    try:
        frame = pd.read_parquet(io.BytesIO(body))
    except Exception as exc:  # pyarrow's own words for a malformed file
        raise InvalidArgument(f"request body is not a valid Parquet file: {exc}") from exc
    if schema is None:
        return frame
    try:
        return schema.from_frame(frame)
    except SignatureMismatch:
        raise
    except InvalidArgument as exc:  # MLflow checks a Parquet frame's values as its schema
        raise SignatureMismatch(str(exc)) from exc
