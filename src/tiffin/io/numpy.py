"""``NumpyNdarray``: tensors as JSON nested lists, or as .npy bytes for big ones."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

from tiffin.exceptions import InvalidArgument, InvalidOutput, TiffinError
from tiffin.io.base import JSON_TYPE, IODescriptor, check_content_type, negotiate, require_body
from tiffin.io.json import dumps_json, loads_json
from tiffin.io.limits import check_array, nested_shape
from tiffin.io.npy import read_npy

__all__ = [
    "NPY_TYPES",
    "ErrorFactory",
    "NumpyNdarray",
]

NPY_TYPES = ("application/octet-stream", "application/x-npy")
_NPY_MAGIC = b"\x93NUMPY"
_JSON_KINDS = {"b": "boolean", "i": "integer", "u": "integer", "f": "number", "U": "string"}

ErrorFactory = Callable[[str], TiffinError]


_numpy: Any = None


def _np() -> Any:
    """numpy, imported on first use (an import statement per request costs a little)."""
    global _numpy
    if _numpy is None:
        import numpy

        _numpy = numpy
    return _numpy


def _path(index: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in index) or "the top level"


def _ragged_detail(data: Any) -> str:
    """Where nested lists stop being rectangular (only walked once parsing has failed)."""
    level: list[tuple[tuple[int, ...], Any]] = [((), data)]
    while level:
        ref_path, ref = level[0]
        ref_is_list = isinstance(ref, list)
        for path, item in level:
            if isinstance(item, list) != ref_is_list:
                what = "a list" if isinstance(item, list) else f"a {type(item).__name__} value"
                ref_what = "a list" if ref_is_list else "a scalar"
                return (
                    f"element {_path(path)} is {what} but element {_path(ref_path)} is {ref_what}"
                )
            if ref_is_list and len(item) != len(ref):
                return (
                    f"row {_path(path)} has {len(item)} element(s) but row {_path(ref_path)} "
                    f"has {len(ref)}"
                )
        if not ref_is_list:
            break
        level = [((*path, i), child) for path, item in level for i, child in enumerate(item)]
    return "nested lists do not form a rectangular array"


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_fits(shape: Sequence[int], expected: Sequence[int]) -> bool:
    return len(shape) == len(expected) and all(
        e in (-1, d) for d, e in zip(shape, expected, strict=True)
    )


class NumpyNdarray(IODescriptor):
    """An ``numpy.ndarray``: JSON nested lists in and out, or .npy bytes for large tensors.

    ``dtype`` converts with numpy's ``same_kind`` rule (JSON ints into float32 are fine,
    JSON floats into int32 are not); ``shape`` may use -1 as a wildcard. With the matching
    ``enforce_*`` flag a value that does not fit is a 400; without it, it passes as parsed.
    """

    request_media_types = (JSON_TYPE, *NPY_TYPES)
    response_media_types = (JSON_TYPE, *NPY_TYPES)

    def __init__(
        self,
        dtype: Any = None,
        shape: Sequence[int] | None = None,
        enforce_dtype: bool = False,
        enforce_shape: bool = False,
    ) -> None:
        if dtype is not None:
            try:
                dtype = _np().dtype(dtype)
            except TypeError as exc:
                raise InvalidArgument(f"NumpyNdarray: {dtype!r} is not a numpy dtype") from exc
        if shape is not None:
            shape = tuple(int(d) for d in shape)
            if any(d < -1 for d in shape):
                raise InvalidArgument(
                    f"NumpyNdarray: shape {shape} has a negative length; use -1 for 'any length'"
                )
        if enforce_dtype and dtype is None:
            raise InvalidArgument("NumpyNdarray: enforce_dtype=True needs a dtype")
        if enforce_shape and shape is None:
            raise InvalidArgument("NumpyNdarray: enforce_shape=True needs a shape")
        self.dtype = dtype
        self.shape = shape
        self.enforce_dtype = enforce_dtype
        self.enforce_shape = enforce_shape
        self._expected_text: str | None = None

    # --- parsing -----------------------------------------------------------------------
    def _expected(self) -> str:
        # built once: formatting a numpy dtype costs microseconds, and this is per request
        if self._expected_text is None:
            what = "a JSON array (nested lists)"
            if self.dtype is not None:
                what += f" of {self.dtype} values"
            self._expected_text = what + " or .npy bytes"
        return self._expected_text

    def _from_json(self, body: bytes) -> Any:
        np = _np()
        data = loads_json(body, self._expected())
        if isinstance(data, dict):
            keys = ", ".join(repr(k) for k in list(data)[:5])
            raise InvalidArgument(
                f"expected {self._expected()}; received a JSON object with keys {keys}"
            )
        check_array(nested_shape(data), "the JSON array")
        try:
            arr = np.asarray(data)
        except ValueError as exc:
            raise InvalidArgument(
                f"ragged array: {_ragged_detail(data)}; expected nested lists of equal length "
                "at every depth"
            ) from exc
        if arr.dtype.kind == "O":
            # null (or objects) among the values: null is NaN when the target dtype is a float
            if self.dtype is not None and self.dtype.kind in "fc":
                try:
                    return arr.astype(self.dtype)
                except (TypeError, ValueError):
                    pass
            raise InvalidArgument(
                f"expected {self._expected()}; received nested lists holding null or JSON objects"
                " (null is read as NaN only when the descriptor's dtype is a float dtype)"
            )
        return arr

    def _from_npy(self, body: bytes) -> Any:
        if not body.startswith(_NPY_MAGIC):
            hint = ""
            if body.lstrip()[:1] in (b"[", b"{"):
                hint = "; it looks like JSON: send it with Content-Type: application/json"
            raise InvalidArgument(
                f"request body is not .npy data: it does not start with the .npy magic bytes "
                f"(received {len(body)} bytes starting {body[:8]!r}){hint}"
            )
        try:
            return read_npy(body)
        except TiffinError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise InvalidArgument(
                f"request body is not a readable .npy array ({exc}); expected numpy.save output "
                "without pickled objects"
            ) from exc

    def _conform(self, arr: Any, error: ErrorFactory | None, what: str) -> Any:
        """Apply dtype and shape; ``error`` raises on a mismatch (None: leave as parsed)."""
        np = _np()
        if self.dtype is not None and arr.dtype != self.dtype:
            if self._castable(np, arr):
                arr = arr.astype(self.dtype)
            elif self.enforce_dtype and error is not None:
                raise error(
                    f"{what} has dtype {arr.dtype}, expected dtype {self.dtype}; "
                    f"{arr.dtype} does not convert to {self.dtype} safely (numpy's 'same_kind' "
                    "rule; integers must also fit the target's range)"
                )
        if (
            self.shape is not None
            and not _shape_fits(arr.shape, self.shape)
            and self.enforce_shape
            and error is not None
        ):
            raise error(
                f"{what} has shape {_shape_text(arr.shape)}, expected shape "
                f"{_shape_text(self.shape)} (-1 matches any length)"
            )
        return arr

    def _castable(self, np: Any, arr: Any) -> bool:
        if arr.dtype.kind in "iu" and self.dtype.kind in "iu":
            # between integer types the values decide: JSON has one integer type, so
            # [0, 255] must reach uint8; and int64 -> int8, though same_kind, would wrap
            if not arr.size:
                return True
            info = np.iinfo(self.dtype)
            return bool(info.min <= arr.min() and arr.max() <= info.max)
        return bool(np.can_cast(arr.dtype, self.dtype, casting="same_kind"))

    def _parse(self, body: bytes, media_type: str) -> Any:
        require_body(body, self._expected())
        if media_type in NPY_TYPES:
            return self._from_npy(body)
        return self._from_json(body)

    # --- the contract --------------------------------------------------------------------
    def decode_request(self, body: bytes, content_type: str | None) -> Any:
        media_type, _ = check_content_type(content_type, self.request_media_types)
        return self._conform(self._parse(body, media_type), InvalidArgument, "request array")

    def _output_array(self, obj: Any) -> Any:
        np = _np()
        if not isinstance(obj, np.ndarray):
            try:
                obj = np.asarray(obj)
            except (ValueError, TypeError) as exc:
                raise InvalidOutput(
                    f"the API returned {type(obj).__qualname__}, which is not array-like ({exc}); "
                    "expected a numpy.ndarray"
                ) from exc
            if obj.dtype.kind == "O":
                raise InvalidOutput(
                    f"the API returned {type(obj).__qualname__} holding Python objects; "
                    "expected a numpy.ndarray of numbers, booleans or strings"
                )
        return self._conform(obj, InvalidOutput, "the API's returned array")

    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        arr = self._output_array(obj)
        media_type = negotiate(accept, self.response_media_types)
        if media_type == JSON_TYPE:
            if arr.dtype.kind == "c":
                raise InvalidOutput(
                    f"the API returned a {arr.dtype} array, which has no JSON form; "
                    "ask for .npy with 'Accept: application/octet-stream'"
                )
            return dumps_json(arr), JSON_TYPE
        return _npy_bytes(arr, InvalidOutput), media_type

    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        """Send .npy: exact dtype and shape, and no JSON parsing on either side."""
        np = _np()
        arr = np.asarray(obj)
        if arr.dtype.kind == "O":
            return dumps_json(obj), JSON_TYPE
        return _npy_bytes(arr, InvalidArgument), NPY_TYPES[0]

    def decode_response(self, body: bytes, content_type: str | None) -> Any:
        media_type, _ = check_content_type(content_type, self.response_media_types)
        return self._conform(self._parse(body, media_type), None, "response array")

    # --- documentation -------------------------------------------------------------------
    def input_schema(self) -> dict[str, Any]:
        leaf: dict[str, Any] = {}
        if self.dtype is not None and self.dtype.kind in _JSON_KINDS:
            leaf = {"type": _JSON_KINDS[self.dtype.kind]}
        if self.shape is None:
            description = "nested lists (any number of dimensions)"
            if self.dtype is not None:
                description += f" of {self.dtype}"
            return {"type": "array", "items": {}, "description": description}
        schema = leaf
        for length in reversed(self.shape):
            schema = {"type": "array", "items": schema}
            if length != -1 and self.enforce_shape:
                schema["minItems"] = schema["maxItems"] = length
        schema = dict(schema)
        schema["description"] = f"array of shape {_shape_text(self.shape)}" + (
            f", dtype {self.dtype}" if self.dtype is not None else ""
        )
        return schema


def _npy_bytes(arr: Any, error: ErrorFactory) -> bytes:
    np = _np()
    buffer = io.BytesIO()
    try:
        np.save(buffer, arr, allow_pickle=False)
    except ValueError as exc:
        raise error(f"cannot write a {arr.dtype} array as .npy without pickle: {exc}") from exc
    return buffer.getvalue()
