"""``tiffin serve-model``: a Service for one stored model, with no service file.

Every signature method becomes ``POST /<method>``. A route accepts a JSON array of rows, a
JSON object of columns, one of MLflow's JSON envelopes, or an ``.npy`` body for tensors, and
answers a JSON array. ``predict`` is batched adaptively unless batching is turned off.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tiffin import inputs
from tiffin.exceptions import InvalidArgument, InvalidTag, NotFound
from tiffin.io.base import IODescriptor, check_content_type, require_body
from tiffin.service import Service

if TYPE_CHECKING:
    from tiffin.models import Model

JSON_TYPE = "application/json"
NPY_TYPES = ("application/octet-stream", "application/x-npy")
_MLFLOW_TYPES = {"double": "number", "float": "number", "integer": "integer", "long": "integer",
                 "boolean": "boolean", "string": "string", "binary": "string",
                 "datetime": "string"}


def _signature_schema(model: Model) -> dict[str, Any]:
    """The JSON schema of a request, from the model's MLflow signature where it has one."""
    signature = (model.info.context.get("mlflow") or {}).get("signature") or {}
    columns = [c for c in signature.get("inputs") or [] if isinstance(c, dict) and c.get("name")]
    if columns and all(c.get("type") in _MLFLOW_TYPES for c in columns):
        props = {c["name"]: {"type": _MLFLOW_TYPES[c["type"]]} for c in columns}
        names = [c["name"] for c in columns]
        return {
            "oneOf": [
                {"type": "array", "items": {"type": "object", "properties": props,
                                            "required": names}},
                {"type": "object", "properties": {k: {"type": "array", "items": v}
                                                  for k, v in props.items()}},
                {"type": "array", "items": {"type": "array", "minItems": len(names),
                                            "maxItems": len(names)}},
            ],
            "x-mlflow-signature": signature,
        }
    return {
        "description": "a JSON array of rows, or an object of columns",
        "type": ["array", "object"],
    }


class ModelRows(IODescriptor):
    """Rows in, rows out: what a stored model's routes speak."""

    request_media_types = (JSON_TYPE, *NPY_TYPES)
    response_media_types = (JSON_TYPE,)

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        self.schema = schema or {"type": ["array", "object"]}

    def decode_request(self, body: bytes, content_type: str | None) -> Any:
        media_type, _ = check_content_type(content_type, self.request_media_types)
        require_body(body, "a JSON array of rows, an object of columns, or .npy bytes")
        if media_type in NPY_TYPES:
            import numpy as np

            try:
                return np.load(io.BytesIO(body), allow_pickle=False)
            except Exception as exc:
                raise InvalidArgument(f"request body is not a valid .npy array: {exc}") from exc
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc
        return inputs.from_json(value)

    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        return orjson.dumps(inputs.to_jsonable(obj), option=orjson.OPT_SERIALIZE_NUMPY), JSON_TYPE

    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        if type(obj).__module__ == "numpy":
            import numpy as np

            buffer = io.BytesIO()
            np.save(buffer, obj, allow_pickle=False)
            return buffer.getvalue(), NPY_TYPES[0]
        return orjson.dumps(inputs.to_jsonable(obj), option=orjson.OPT_SERIALIZE_NUMPY), JSON_TYPE

    def decode_response(self, body: bytes, content_type: str | None) -> Any:
        return orjson.loads(body)

    def input_schema(self) -> dict[str, Any]:
        return self.schema

    def output_schema(self) -> dict[str, Any]:
        return {"type": "array"}


def build_service(model: Model, *, batching: bool = True) -> Service:
    """A Service with one route per signature method of ``model``."""
    configs = {}
    if "predict" in model.info.signatures:
        configs["predict"] = {"batchable": batching}
    runner = model.to_runner(method_configs=configs)
    service = Service(model.tag.name, runners=[runner], models=[model])
    schema = _signature_schema(model)
    expected: dict[str, int | None] = {"width": None}

    @service.on_startup
    def learn_width() -> None:
        # scikit-learn estimators know how many features they take: check before batching,
        # so one malformed request is a 400 and never fails the batch it would have joined
        native = getattr(runner._instance, "model", None)
        width = getattr(native, "n_features_in_", None)
        expected["width"] = int(width) if isinstance(width, int) else None

    for method in runner.methods.values():

        async def call(value: Any, _method: Any = method) -> Any:
            _check_width(value, expected["width"])
            return await _method.async_run(value)

        call.__doc__ = f"{method.name} of model {model.tag} ({model.info.module})"
        service.api(input=ModelRows(schema), output=ModelRows(), name=method.name)(call)
    return service


def _check_width(value: Any, width: int | None) -> None:
    shape = getattr(value, "shape", None)
    if width is None or shape is None or len(shape) != 2 or shape[1] == width:
        return
    raise InvalidArgument(f"input has {shape[1]} features per row, but the model expects {width}")


def _name_from_uri(uri: str) -> str:
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(uri.rstrip("/")).name.lower()).strip("-._")
    return stem[:63] or "mlflow-model"


def resolve_model(target: str) -> Model:
    """A stored model by tag, or an MLflow model URI imported into the store first."""
    from tiffin import models

    looks_like_uri = "/" in target or "\\" in target or Path(target).exists()
    if not looks_like_uri:
        try:
            return models.get(target)
        except (NotFound, InvalidTag):
            if ":/" not in target:
                raise
    from tiffin.frameworks import mlflow as tiffin_mlflow

    return tiffin_mlflow.import_model(_name_from_uri(target), target)
