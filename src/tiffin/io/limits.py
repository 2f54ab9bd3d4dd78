"""How big a request body may become once decoded, checked before anything big is allocated.

``max_body_size`` bounds the bytes received; a few hundred kilobytes can still describe a
table of billions of cells (a CSV header of 60,000 columns over 60,000 short rows, JSON
records that each bring new keys, a Parquet file's row groups) or an image of a billion
pixels. Every decoder in tiffin measures what a body *declares* -- a header's columns, the
rows and columns of parsed JSON, Parquet's metadata, an ``.npy`` header, an image's size --
and refuses it with :class:`~tiffin.exceptions.DecodedTooLarge` (HTTP 413, naming the
setting) before it builds the array, table or image:

``max_decoded_cells`` (default 10,000,000)
    rows x columns of a table, or the elements of an array;
``max_columns`` (default 10,000)
    columns of a table;
``max_image_pixels`` (default 40,000,000)
    width x height of an image.

The server sets the limits of its settings for each request (:data:`DECODE_LIMITS`); outside
a server (a client, ``tiffin models predict``) the defaults apply.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from tiffin.exceptions import DecodedTooLarge, InvalidArgument

__all__ = [
    "DECODE_LIMITS",
    "DecodeLimits",
    "check_array",
    "check_csv",
    "check_image",
    "check_json_table",
    "check_npy",
    "check_parquet",
    "check_table",
    "current",
    "nested_shape",
]


@dataclass(frozen=True)
class DecodeLimits:
    """The largest decoded request tiffin builds (see the module docstring)."""

    max_decoded_cells: int = 10_000_000
    max_columns: int = 10_000
    max_image_pixels: int = 40_000_000


#: the limits of the request being decoded (the server sets its settings' for each request;
#: None: the defaults)
DECODE_LIMITS: ContextVar[DecodeLimits | None] = ContextVar("tiffin_decode_limits", default=None)
_DEFAULT = DecodeLimits()


def current() -> DecodeLimits:
    return DECODE_LIMITS.get() or _DEFAULT


def _refuse(setting: str, found: str, limit: int) -> DecodedTooLarge:
    return DecodedTooLarge(
        f"{found}, over {setting}={limit:,}; send less, or raise {setting} in the server's "
        "settings",
        setting=setting,
    )


def check_table(rows: int, columns: int, what: str = "the table") -> None:
    """Refuse a table of more than ``max_columns`` columns or ``max_decoded_cells`` cells."""
    limits = current()
    if columns > limits.max_columns:
        raise _refuse("max_columns", f"{what} has {columns:,} columns", limits.max_columns)
    cells = rows * max(columns, 1)
    if cells > limits.max_decoded_cells:
        raise _refuse(
            "max_decoded_cells",
            f"{what} of {rows:,} rows x {columns:,} columns would be {cells:,} cells",
            limits.max_decoded_cells,
        )


def check_array(shape: Iterable[int], what: str = "the array") -> None:
    """Refuse an array of more than ``max_decoded_cells`` elements."""
    cells = 1
    for length in shape:
        cells *= max(int(length), 0)
    limit = current().max_decoded_cells
    if cells > limit:
        raise _refuse("max_decoded_cells", f"{what} would hold {cells:,} elements", limit)


def check_image(width: int, height: int, what: str = "the image") -> None:
    limit = current().max_image_pixels
    if width * height > limit:
        raise _refuse(
            "max_image_pixels", f"{what} is {width:,} x {height:,} = {width * height:,} pixels",
            limit,
        )  # fmt: skip


def nested_shape(value: Any) -> tuple[int, ...]:
    """The shape nested JSON lists declare, read along their first elements (cheap: ragged
    lists are refused later, when the array is built)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


_LIST = {list}


def check_json_table(value: Any, what: str = "the JSON table", orient: str = "columns") -> None:
    """Rows and columns of parsed JSON that will become a table, counted before it is built.

    Records (a list of objects) count the union of their keys; an object of objects counts
    the union of the inner labels (columns for pandas' ``index`` orient, rows otherwise);
    ``{"columns", "data"}`` (``split``, ``table``) counts both; nested lists their shape.
    """
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            keys: set[Any] = set()
            for row in value:
                if isinstance(row, dict):
                    keys.update(row)
                    if len(keys) > current().max_columns:
                        break  # enough to refuse: do not walk the rest
            check_table(len(value), len(keys), what)
        else:
            check_array(nested_shape(value), what)
        return
    if not isinstance(value, dict):
        return
    if isinstance(value.get("data"), list) and (
        "columns" in value or "index" in value or len(value) <= 3
    ):
        data = value["data"]
        columns = value.get("columns")
        width = (
            len(columns)
            if isinstance(columns, list)
            else (len(data[0]) if data and isinstance(data[0], list) else 1)
        )
        check_table(len(data), width, what)
        return
    if set(map(type, value.values())) == _LIST:  # an object of columns, in one pass
        check_table(max(map(len, value.values())), len(value), what)
        return
    labels: set[Any] = set()
    inner = 0
    enough = current().max_decoded_cells // max(len(value), 1)
    for column in value.values():
        if isinstance(column, dict):
            labels.update(column)
            inner = len(labels)
        elif isinstance(column, list):
            inner = max(inner, len(column))
        if inner > enough:
            break
    if orient == "index" and labels:
        check_table(len(value), inner, what)
    else:
        check_table(inner, len(value), what)


def check_csv(body: bytes, what: str = "the CSV body") -> None:
    """Columns of the header line and rows (lines) of a CSV body, before pandas parses it."""
    import csv

    end = body.find(b"\n")
    header = body if end < 0 else body[:end]
    try:
        fields = next(csv.reader([header.decode("utf-8", "replace")]), [])
    except csv.Error as exc:
        raise InvalidArgument(f"{what} has an unreadable header line: {exc}") from exc
    rows = body.count(b"\n") + (0 if body.endswith(b"\n") else 1) - 1
    check_table(max(rows, 0), len(fields), what)


def check_parquet(body: bytes, what: str = "the Parquet body") -> None:
    """Rows and columns from a Parquet file's footer, before a row group is read."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pandas will say pyarrow is missing
        return
    try:
        meta = pq.ParquetFile(io.BytesIO(body)).metadata
    except Exception:  # not Parquet at all: the reader's own error says so
        return
    check_table(meta.num_rows, meta.num_columns, what)


def check_npy(body: bytes, what: str = "the .npy body") -> None:
    """The shape an ``.npy`` header declares, before numpy allocates it."""
    from numpy.lib import format as npy

    stream = io.BytesIO(body)
    try:
        version = npy.read_magic(stream)
        reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _fortran, _dtype = reader(stream)
    except (ValueError, OSError) as exc:
        raise InvalidArgument(f"request body is not a valid .npy array: {exc}") from exc
    check_array(shape, what)
