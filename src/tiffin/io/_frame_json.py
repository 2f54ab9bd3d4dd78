"""JSON -> DataFrame for every pandas orient, told apart by the body's structure.

records ``[{col: v}]``, values ``[[v]]``, split ``{"columns", "index", "data"}``, table
``{"schema", "data"}``, index ``{row: {col: v}}`` and columns ``{col: {row: v}}``. Only
index and columns look alike; the configured orient, the expected column names, or which
side has integer labels tells them apart, and a body none of these settles is a 400.
Also read: a dict of column lists ``{col: [v]}`` and one record ``{col: v}``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from tiffin.exceptions import InvalidArgument
from tiffin.io.limits import check_json_table

ORIENTS = ("records", "split", "index", "columns", "values", "table")


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _is_int_label(label: Any) -> bool:
    return isinstance(label, str) and label.isascii() and label.lstrip("-").isdigit()


def _int_index(df: Any) -> Any:
    """``{"0": ..., "1": ...}`` keys back to the integer index pandas wrote them from."""
    if len(df.index) and all(_is_int_label(label) for label in df.index):
        df.index = df.index.astype("int64")
    return df


def frame_from_json(data: Any, body: bytes, orient: str, columns: Sequence[Any] | None) -> Any:
    check_json_table(data, orient=orient)
    if isinstance(data, list):
        return _from_array(data, columns)
    if isinstance(data, dict):
        return _from_object(data, body, orient, columns)
    raise InvalidArgument(
        f"expected a JSON table (orient {orient!r}: an array or object); "
        f"received a JSON {_kind(data)}"
    )


def _from_array(data: list[Any], columns: Sequence[Any] | None) -> Any:
    import pandas as pd

    if not data:
        return pd.DataFrame(columns=columns)
    first = data[0]
    if isinstance(first, dict):
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise InvalidArgument(
                    f"orient 'records': row [{i}] is a JSON {_kind(row)}, expected an object "
                    "like row [0]"
                )
        return pd.DataFrame(data)
    if isinstance(first, list):
        width = len(first)
        for i, row in enumerate(data):
            if not isinstance(row, list) or len(row) != width:
                got = f"has {len(row)} item(s)" if isinstance(row, list) else f"is a {_kind(row)}"
                raise InvalidArgument(
                    f"orient 'values': row [{i}] {got}, expected a list of {width} like row [0]"
                )
        if columns is not None and len(columns) != width:
            raise InvalidArgument(
                f"orient 'values': rows have {width} item(s), expected {len(columns)} "
                f"(one per column: {', '.join(map(repr, columns))})"
            )
        return pd.DataFrame(data, columns=columns)
    raise InvalidArgument(
        f"a JSON array of {_kind(first)}s is not a table; expected orient 'records' "
        "([{\"column\": value}, ...]) or 'values' ([[value, ...], ...])"
    )


def _from_object(
    data: dict[str, Any], body: bytes, orient: str, columns: Sequence[Any] | None
) -> Any:
    import pandas as pd

    if not data:
        return pd.DataFrame(columns=columns)
    keys = set(data)
    schema = data.get("schema")
    if keys == {"schema", "data"} and isinstance(schema, dict) and "fields" in schema:
        try:
            return pd.read_json(io.StringIO(body.decode("utf-8-sig")), orient="table")
        except (ValueError, KeyError, TypeError, NotImplementedError) as exc:
            raise InvalidArgument(f"orient 'table': cannot read the table ({exc})") from exc
    rows = data.get("data")
    if (
        keys <= {"columns", "index", "data"}
        and isinstance(rows, list)
        and all(isinstance(row, list) for row in rows)
    ):
        names = data.get("columns")
        if names is None and columns is not None and rows and len(rows[0]) == len(columns):
            names = list(columns)
        try:
            return pd.DataFrame(rows, columns=names, index=data.get("index"))
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(
                f"orient 'split': 'data', 'columns' and 'index' do not fit together ({exc})"
            ) from exc
    values = list(data.values())
    if all(isinstance(v, dict) for v in values):
        layout = _index_or_columns(data, orient, columns)
        return _int_index(pd.DataFrame.from_dict(data, orient=layout))
    if all(isinstance(v, list) for v in values):
        lengths = {len(v) for v in values}
        if len(lengths) > 1:
            detail = ", ".join(f"{k!r}: {len(v)}" for k, v in data.items())
            raise InvalidArgument(
                f"a JSON object of column lists needs lists of one length; received {detail}"
            )
        return pd.DataFrame(data)
    if not any(isinstance(v, dict | list) for v in values):
        return pd.DataFrame([data])  # one record
    raise InvalidArgument(
        f"cannot read this JSON object as a table (orient {orient!r}): its values mix objects, "
        'arrays and scalars; expected orient \'split\' {"columns", "index", "data"}, '
        "'index' {row: {column: value}} or 'columns' {column: {row: value}}"
    )


def _index_or_columns(data: dict[str, Any], orient: str, columns: Sequence[Any] | None) -> str:
    if orient in ("index", "columns"):
        return orient
    outer = set(data)
    inner: set[str] = set().union(*(v.keys() for v in data.values()))
    if columns is not None:
        expected = {str(c) for c in columns}
        if outer <= expected and not inner <= expected:
            return "columns"
        if inner <= expected and not outer <= expected:
            return "index"
    outer_int = all(map(_is_int_label, outer))
    inner_int = all(map(_is_int_label, inner))
    if outer_int and not inner_int:
        return "index"
    if inner_int and not outer_int:
        return "columns"
    raise InvalidArgument(
        "ambiguous table: a JSON object of objects can be orient 'columns' "
        "({column: {row: value}}) or 'index' ({row: {column: value}}); configure "
        "PandasDataFrame(orient=...) or columns=[...], or send orient 'records'"
    )
