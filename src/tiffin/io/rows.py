"""``Rows``: a stored model's payloads, as ``tiffin serve-model`` routes speak them.

Requests: a JSON array of rows, an object of columns, one of MLflow's envelopes
(:func:`~tiffin.io.payloads.from_json`), or ``.npy`` bytes (``application/octet-stream`` or
``application/x-npy``) for tensors. Responses: JSON, or ``.npy`` when the request's
``Accept`` prefers it and the result is an array of numbers (an ndarray, a tensor, a Series);
a result with no ``.npy`` form (a table of mixed columns, a dict) is answered as JSON, its
Content-Type saying so. A client sends ndarrays as ``.npy`` and asks for ``.npy`` back, so
tensors cross without JSON on either side.
"""

from __future__ import annotations

import io
from typing import Any

import orjson

from tiffin.exceptions import InvalidArgument, TiffinError
from tiffin.io.base import JSON_TYPE, IODescriptor, check_content_type, negotiate, require_body
from tiffin.io.npy import read_npy
from tiffin.io.payloads import from_json, to_jsonable

__all__ = ["NPY_TYPES", "Rows", "as_npy_array", "npy_bytes"]

NPY_TYPES = ("application/octet-stream", "application/x-npy")


def as_npy_array(obj: Any) -> Any:
    """``obj`` as an ndarray that ``.npy`` holds without pickle, or None."""
    import numpy as np

    module = type(obj).__module__.split(".", 1)[0]
    if module == "torch" and hasattr(obj, "detach"):
        obj = obj.detach().cpu()
        if str(obj.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            obj = obj.float()
        obj = obj.numpy()
    elif module == "pandas" and hasattr(obj, "columns"):
        kinds = {dtype.kind for dtype in obj.dtypes}
        if len(kinds) != 1 or not kinds <= set("biuf"):
            return None
        obj = obj.to_numpy()
    elif module == "pandas" and hasattr(obj, "to_numpy"):
        obj = obj.to_numpy()
    if not isinstance(obj, np.ndarray) or obj.dtype.kind not in "biufcmMU":
        return None
    return obj


def npy_bytes(array: Any) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class Rows(IODescriptor):
    """Rows in, rows out: JSON or ``.npy`` either way (see the module docstring)."""

    request_media_types = (JSON_TYPE, *NPY_TYPES)
    response_media_types = (JSON_TYPE, *NPY_TYPES)

    def decode_request(self, body: bytes, content_type: str | None) -> Any:
        media_type, _ = check_content_type(content_type, self.request_media_types)
        require_body(body, "a JSON array of rows, an object of columns, or .npy bytes")
        if media_type in NPY_TYPES:
            return self.read_npy(body)
        return from_json(self.read_json(body))

    @staticmethod
    def read_npy(body: bytes) -> Any:
        try:
            return read_npy(body)
        except TiffinError:
            raise
        except Exception as exc:
            raise InvalidArgument(f"request body is not a valid .npy array: {exc}") from exc

    @staticmethod
    def read_json(body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc

    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        media_type = negotiate(accept, self.response_media_types)
        if media_type in NPY_TYPES:
            array = as_npy_array(obj)
            if array is not None:
                return npy_bytes(array), media_type
        return orjson.dumps(to_jsonable(obj), option=orjson.OPT_SERIALIZE_NUMPY), JSON_TYPE

    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        module = type(obj).__module__.split(".", 1)[0]
        if module in ("numpy", "torch"):
            array = as_npy_array(obj)
            if array is not None:
                return npy_bytes(array), NPY_TYPES[0]
        return orjson.dumps(to_jsonable(obj), option=orjson.OPT_SERIALIZE_NUMPY), JSON_TYPE

    def decode_response(self, body: bytes, content_type: str | None) -> Any:
        media_type, _ = check_content_type(content_type, self.response_media_types)
        if media_type in NPY_TYPES:
            import numpy as np

            return np.load(io.BytesIO(body), allow_pickle=False)
        return orjson.loads(body)

    def input_schema(self) -> dict[str, Any]:
        return {
            "description": "a JSON array of rows, or an object of columns",
            "type": ["array", "object"],
        }

    def output_schema(self) -> dict[str, Any]:
        return {"type": "array"}
