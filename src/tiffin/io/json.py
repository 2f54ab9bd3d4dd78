"""JSON bodies: the shared orjson reader/writer, and the ``JSON`` descriptor."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from tiffin.exceptions import InvalidArgument, InvalidOutput
from tiffin.io.base import JSON_TYPE, IODescriptor, check_content_type, require_body

__all__ = [
    "JSON",
    "dumps_json",
    "inline_refs",
    "is_pydantic_model",
    "loads_json",
]

_BOM = b"\xef\xbb\xbf"
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def loads_json(body: bytes, expected: str = "a JSON document") -> Any:
    """Parse a JSON body; malformed or empty JSON is a 400 that says where it broke."""
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    require_body(body, expected)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(
            f"request body is not valid JSON ({exc}); expected {expected}"
        ) from exc


def is_pydantic_model(obj: Any) -> bool:
    """A pydantic v2 model instance (checked without importing pydantic)."""
    return hasattr(type(obj), "__pydantic_validator__") and hasattr(obj, "model_dump_json")


def _default(obj: Any) -> Any:
    """What orjson cannot write natively: odd numpy arrays, models, pandas, sets, ..."""
    module = type(obj).__module__
    if module == "numpy" and hasattr(obj, "dtype"):
        if obj.dtype.kind == "c":
            raise TypeError("complex numbers have no JSON form")
        flags = getattr(obj, "flags", None)
        if flags is not None and obj.ndim and not flags.c_contiguous and obj.dtype.kind in "biufM":
            import numpy as np

            return np.ascontiguousarray(obj)  # orjson writes it natively, no Python lists
        value = obj.tolist()  # 0-d arrays, strings, dtypes orjson lacks
        if type(value).__module__ == "numpy":  # longdouble has no Python twin
            return float(value) if obj.dtype.kind == "f" else str(value)
        return value
    if is_pydantic_model(obj):
        return obj.model_dump(mode="json")
    if module.startswith("pandas"):
        if hasattr(obj, "columns"):
            return orjson.Fragment(obj.to_json(orient="records", date_format="iso"))
        if hasattr(obj, "to_json") and hasattr(obj, "index"):
            return orjson.Fragment(obj.to_json(orient="values", date_format="iso"))
        if hasattr(obj, "isoformat"):
            return obj.isoformat()
        if type(obj).__name__ == "NAType":
            return None
    if isinstance(obj, set | frozenset):
        return list(obj)
    if hasattr(obj, "tolist"):  # torch tensors, array-likes
        return obj.tolist()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if type(obj).__name__ == "Decimal":
        return str(obj)
    raise TypeError(f"type {type(obj).__qualname__} has no JSON form")


def dumps_json(obj: Any) -> bytes:
    """Encode an API return value as JSON; InvalidOutput names the value that does not fit."""
    try:
        return orjson.dumps(obj, default=_default, option=_DUMP_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidOutput(
            f"cannot encode the API's return value ({type(obj).__qualname__}) as JSON: {exc}; "
            "expected dicts, lists, str, numbers, numpy arrays, dataclasses or pydantic models"
        ) from exc


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace ``#/$defs/...`` references by their definitions.

    OpenAPI resolves ``#/...`` against the whole document, so a pydantic schema embedded in
    a request body cannot keep its local ``$defs``. Recursive models keep them (rare).
    """
    defs = schema.get("$defs")
    if not defs:
        return schema

    def resolve(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref[len("#/$defs/") :]
            if name in seen or name not in defs:
                raise RecursionError(name)
            rest = {k: resolve(v, seen) for k, v in node.items() if k != "$ref"}
            return {**resolve(copy.deepcopy(defs[name]), seen | {name}), **rest}
        return {k: resolve(v, seen) for k, v in node.items() if k != "$defs"}

    try:
        return dict(resolve(schema, frozenset()))
    except RecursionError:
        return schema


def _summarize(exc: Any, model_name: str) -> str:
    """pydantic's ValidationError as one readable line."""
    errors = exc.errors(include_url=False)
    if any(error["type"] == "json_invalid" for error in errors):
        detail = errors[0].get("ctx", {}).get("error", errors[0]["msg"])
        return f"request body is not valid JSON ({detail}); expected a JSON object for {model_name}"
    shown = []
    for error in errors[:10]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        text = f"{where}: {error['msg']}"
        if error["type"] != "missing":
            received = repr(error.get("input"))
            text += f" (received {received[:60] + '...' if len(received) > 60 else received})"
        shown.append(text)
    more = f"; and {len(errors) - 10} more" if len(errors) > 10 else ""
    return (
        f"request body does not match {model_name}: {len(errors)} validation error(s): "
        + "; ".join(shown)
        + more
    )


class JSON(IODescriptor):
    """Any JSON value, or an instance of a pydantic v2 model validated from it."""

    def __init__(self, pydantic_model: type | None = None) -> None:
        self.pydantic_model = pydantic_model
        self._adapter: Any = None

    def _type_adapter(self) -> Any:
        if self._adapter is None:
            from pydantic import TypeAdapter

            self._adapter = TypeAdapter(self.pydantic_model)  # type: ignore[arg-type]
        return self._adapter

    def _model_name(self) -> str:
        return getattr(self.pydantic_model, "__name__", repr(self.pydantic_model))

    def _validate(self, body: bytes) -> Any:
        from pydantic import ValidationError

        if body.startswith(_BOM):
            body = body[len(_BOM) :]
        require_body(body, f"a JSON object for {self._model_name()}")
        try:
            return self._type_adapter().validate_json(body)
        except ValidationError as exc:
            raise InvalidArgument(_summarize(exc, self._model_name())) from exc

    def decode_request(self, body: bytes, content_type: str | None) -> Any:
        check_content_type(content_type, self.request_media_types)
        if self.pydantic_model is not None:
            return self._validate(body)
        return loads_json(body)

    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        if is_pydantic_model(obj):
            return obj.model_dump_json().encode(), JSON_TYPE
        return dumps_json(obj), JSON_TYPE

    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        return self.encode_response(obj)

    def decode_response(self, body: bytes, content_type: str | None) -> Any:
        if self.pydantic_model is not None:
            return self._validate(body)
        return loads_json(body)

    def input_schema(self) -> dict[str, Any]:
        if self.pydantic_model is None:
            return {"description": "any JSON value"}
        return dict(self._type_adapter().json_schema())

    def openapi_request_body(self) -> dict[str, Any]:
        return {
            "required": True,
            "content": {JSON_TYPE: {"schema": inline_refs(self.input_schema())}},
        }

    def openapi_response(self) -> dict[str, Any]:
        return {
            "description": "Successful Response",
            "content": {JSON_TYPE: {"schema": inline_refs(self.output_schema())}},
        }

    def part_schema(self) -> dict[str, Any]:
        return inline_refs(self.input_schema())
