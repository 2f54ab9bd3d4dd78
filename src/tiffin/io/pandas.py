"""``PandasDataFrame``: tables as JSON (any pandas orient), CSV or Parquet."""

from __future__ import annotations

import functools
import importlib.util
import io
from collections.abc import Sequence
from typing import Any

from tiffin.exceptions import InvalidArgument, InvalidOutput, UnsupportedMediaType
from tiffin.io._frame_json import ORIENTS, frame_from_json
from tiffin.io.base import JSON_TYPE, IODescriptor, check_content_type, negotiate, require_body
from tiffin.io.json import loads_json
from tiffin.io.limits import check_csv, check_parquet
from tiffin.io.numpy import ErrorFactory, _shape_fits, _shape_text

__all__ = [
    "CSV_TYPE",
    "OCTET_TYPE",
    "PARQUET_TYPES",
    "PandasDataFrame",
]

CSV_TYPE = "text/csv"
PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet")
OCTET_TYPE = "application/octet-stream"


@functools.cache
def _pd() -> Any:
    import pandas

    return pandas


@functools.cache
def _has_pyarrow() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _names(labels: Sequence[Any]) -> str:
    return ", ".join(repr(label) for label in labels) or "none"


class PandasDataFrame(IODescriptor):
    """A ``pandas.DataFrame`` from JSON (the configured ``orient`` first), CSV or Parquet.

    ``columns`` are the expected column names: a missing one is a 400; the frame is handed
    on with exactly these columns in this order (extra columns are dropped, or a 400 when
    ``enforce_shape``). An API's result must hold them too, and keeps any others. ``dtype``
    is one dtype or a ``{column: dtype}`` dict; ``shape`` is ``(rows, columns)`` with -1 as
    a wildcard. Responses are JSON in ``orient``, or CSV/Parquet when the Accept header asks.
    """

    request_media_types = (JSON_TYPE, CSV_TYPE, *PARQUET_TYPES, OCTET_TYPE)
    response_media_types = (JSON_TYPE, CSV_TYPE, PARQUET_TYPES[0])

    def __init__(
        self,
        orient: str = "records",
        columns: Sequence[str] | None = None,
        dtype: Any = None,
        enforce_dtype: bool = False,
        shape: Sequence[int] | None = None,
        enforce_shape: bool = False,
    ) -> None:
        if orient not in ORIENTS:
            raise InvalidArgument(
                f"PandasDataFrame: orient {orient!r} is not one of {', '.join(ORIENTS)}"
            )
        if dtype is not None:
            pandas_dtype = _pd().api.types.pandas_dtype
            try:
                if isinstance(dtype, dict):
                    dtype = {column: pandas_dtype(dt) for column, dt in dtype.items()}
                else:
                    dtype = pandas_dtype(dtype)
            except TypeError as exc:
                raise InvalidArgument(f"PandasDataFrame: bad dtype {dtype!r}: {exc}") from exc
        if shape is not None:
            shape = tuple(int(d) for d in shape)
            if len(shape) != 2 or any(d < -1 for d in shape):
                raise InvalidArgument(
                    f"PandasDataFrame: shape {shape} must be (rows, columns); -1 means any"
                )
        if enforce_dtype and dtype is None:
            raise InvalidArgument("PandasDataFrame: enforce_dtype=True needs a dtype")
        if enforce_shape and shape is None and columns is None:
            raise InvalidArgument("PandasDataFrame: enforce_shape=True needs a shape or columns")
        self.orient = orient
        self.columns = list(columns) if columns is not None else None
        self.dtype = dtype
        self.enforce_dtype = enforce_dtype
        self.shape = shape
        self.enforce_shape = enforce_shape

    # --- parsing -----------------------------------------------------------------------
    def _parse(self, body: bytes, media_type: str) -> Any:
        pd = _pd()
        require_body(body, f"a JSON table (orient {self.orient!r}), CSV or Parquet")
        if media_type == CSV_TYPE:
            check_csv(body)
            try:
                return pd.read_csv(io.BytesIO(body))
            except (ValueError, UnicodeDecodeError) as exc:  # ParserError, EmptyDataError
                raise InvalidArgument(
                    f"request body is not valid CSV ({str(exc).strip()}); "
                    "expected UTF-8 CSV with a header row"
                ) from exc
        if media_type in (*PARQUET_TYPES, OCTET_TYPE):
            if not _has_pyarrow():
                raise UnsupportedMediaType(
                    "this server cannot read Parquet because pyarrow is not installed "
                    f"(`pip install pyarrow`); send one of: {JSON_TYPE}, {CSV_TYPE}"
                )
            import pyarrow

            check_parquet(body)
            try:
                return pd.read_parquet(io.BytesIO(body), engine="pyarrow")
            except (ValueError, OSError, TypeError, pyarrow.ArrowException) as exc:
                raise InvalidArgument(
                    f"request body is not a valid Parquet file ({exc}); "
                    f"received {len(body)} bytes of {media_type}"
                ) from exc
        data = loads_json(body, f"a JSON table (orient {self.orient!r})")
        return frame_from_json(data, body, self.orient, self.columns)

    def _conform(self, df: Any, error: ErrorFactory | None, what: str, select: bool = True) -> Any:
        """Apply columns, dtype and shape; ``error`` raises on a mismatch (None: lenient).

        ``select`` narrows the frame to ``columns`` in their order (inputs); an API's result
        keeps the columns it has, so long as the expected ones are there.
        """
        if self.columns is not None:
            present = set(df.columns)
            missing = [c for c in self.columns if c not in present]
            if missing and error is not None:
                raise error(
                    f"{what} is missing column(s) {_names(missing)}; expected columns "
                    f"{_names(self.columns)}, received {_names(list(df.columns))}"
                )
            extra = [c for c in df.columns if c not in set(self.columns)]
            if select and extra and self.enforce_shape and error is not None:
                raise error(
                    f"{what} has unexpected column(s) {_names(extra)}; expected exactly "
                    f"{_names(self.columns)}"
                )
            if select and not missing and list(df.columns) != self.columns:
                df = df[self.columns]
        if self.dtype is not None:
            df = self._apply_dtype(df, error, what)
        if (
            self.shape is not None
            and not _shape_fits(df.shape, self.shape)
            and self.enforce_shape
            and error is not None
        ):
            raise error(
                f"{what} has shape {_shape_text(df.shape)}, expected shape "
                f"{_shape_text(self.shape)} (rows, columns; -1 matches any)"
            )
        return df

    def _apply_dtype(self, df: Any, error: ErrorFactory | None, what: str) -> Any:
        if isinstance(self.dtype, dict):
            targets = {c: dt for c, dt in self.dtype.items() if c in set(df.columns)}
        else:
            targets = dict.fromkeys(df.columns, self.dtype)
        converted = {}
        for column, target in targets.items():
            series = df[column]
            if series.dtype == target:
                continue
            try:
                converted[column] = _cast(series, target)
            except (TypeError, ValueError) as exc:
                if self.enforce_dtype and error is not None:
                    raise error(
                        f"{what}: column {column!r} has dtype {series.dtype}, expected dtype "
                        f"{target} ({exc})"
                    ) from exc
        if converted:
            df = df.copy(deep=False)
            for column, series in converted.items():
                df[column] = series
        return df

    # --- the contract --------------------------------------------------------------------
    def decode_request(self, body: bytes, content_type: str | None) -> Any:
        media_type, _ = check_content_type(content_type, self.request_media_types)
        return self._conform(self._parse(body, media_type), InvalidArgument, "request table")

    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        pd = _pd()
        offered = self.response_media_types if _has_pyarrow() else self.response_media_types[:2]
        media_type = negotiate(accept, offered)
        if isinstance(obj, pd.Series):
            if media_type == JSON_TYPE:
                return obj.to_json(orient="values", date_format="iso").encode(), JSON_TYPE
            obj = obj.to_frame()
        elif not isinstance(obj, pd.DataFrame):
            try:
                obj = pd.DataFrame(obj)
            except (ValueError, TypeError) as exc:
                raise InvalidOutput(
                    f"the API returned {type(obj).__qualname__}, which is not a table ({exc}); "
                    "expected a pandas.DataFrame or Series"
                ) from exc
        df = self._conform(obj, InvalidOutput, "the API's returned table", select=False)
        return _write(df, media_type, self.orient), media_type

    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        pd = _pd()
        df = obj if isinstance(obj, pd.DataFrame) else pd.DataFrame(obj)
        return _write(df, JSON_TYPE, self.orient), JSON_TYPE

    def decode_response(self, body: bytes, content_type: str | None) -> Any:
        media_type, _ = check_content_type(content_type, self.request_media_types)
        if media_type == JSON_TYPE:
            data = loads_json(body)
            if isinstance(data, list) and data and not isinstance(data[0], dict | list):
                return _pd().Series(data)  # a Series answer
            df = frame_from_json(data, body, self.orient, self.columns)
        else:
            df = self._parse(body, media_type)
        return self._conform(df, None, "response table")

    # --- documentation -------------------------------------------------------------------
    def input_schema(self) -> dict[str, Any]:
        cell: dict[str, Any] = {}
        if self.orient == "records":
            row: dict[str, Any] = {"type": "object"}
            if self.columns:
                row["properties"] = {str(c): cell for c in self.columns}
                row["required"] = [str(c) for c in self.columns]
            schema: dict[str, Any] = {"type": "array", "items": row}
        elif self.orient == "values":
            schema = {"type": "array", "items": {"type": "array", "items": cell}}
        elif self.orient == "split":
            schema = {
                "type": "object",
                "properties": {
                    "columns": {"type": "array"},
                    "index": {"type": "array"},
                    "data": {"type": "array", "items": {"type": "array"}},
                },
                "required": ["data"],
            }
        elif self.orient == "table":
            schema = {"type": "object", "required": ["schema", "data"]}
        else:
            schema = {"type": "object", "additionalProperties": {"type": "object"}}
        schema["description"] = f"pandas DataFrame, JSON orient {self.orient!r}"
        return schema

    def output_schema(self) -> dict[str, Any]:
        return self.input_schema()


def _cast(series: Any, target: Any) -> Any:
    """``series.astype(target)``, refusing the numeric casts that lose data silently."""
    import numpy as np

    source = series.dtype
    if (
        isinstance(source, np.dtype)
        and isinstance(target, np.dtype)
        and source.kind in "biufc"
        and target.kind in "biufc"
        and not np.can_cast(source, target, casting="same_kind")
    ):
        raise ValueError(f"numpy's 'same_kind' rule does not convert {source} to {target} safely")
    return series.astype(target)


def _write(df: Any, media_type: str, orient: str) -> bytes:
    if media_type == CSV_TYPE:
        return str(df.to_csv(index=False)).encode()
    if media_type in PARQUET_TYPES:
        buffer = io.BytesIO()
        df.to_parquet(buffer, engine="pyarrow")
        return buffer.getvalue()
    try:
        return str(df.to_json(orient=orient, date_format="iso")).encode()
    except ValueError as exc:  # e.g. orient="index" with a duplicated index
        raise InvalidOutput(
            f"cannot write the returned table as JSON orient {orient!r}: {exc}"
        ) from exc
