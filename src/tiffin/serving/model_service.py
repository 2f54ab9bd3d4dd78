"""``tiffin serve-model``: a Service for one stored model, with no service file.

Every signature method becomes ``POST /<method>`` (``predict``, ``predict_proba``,
``transform``, ... for scikit-learn; ``forward`` and any declared method for PyTorch). A route
accepts a JSON array of rows, a JSON object of columns, one of MLflow's JSON envelopes, or an
``.npy`` body for tensors, and answers a JSON array, or ``.npy`` bytes when ``Accept`` asks
for them (:class:`~tiffin.io.rows.Rows`). What a body declares is measured against the decode
limits before it is built (:mod:`tiffin.io.limits`). ``predict`` (``forward`` for a PyTorch
model) is batched adaptively unless batching is turned off.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument, InvalidTag, NotFound
from tiffin.frameworks.mlflow.inputs import FALLBACK, InputSchema
from tiffin.frameworks.mlflow.loading import MODULE
from tiffin.frameworks.mlflow.schema import frame_validator, serving_input_example
from tiffin.io.base import check_content_type, require_body
from tiffin.io.rows import NPY_TYPES, Rows
from tiffin.serving.mlflow_inputs import from_json, from_npy
from tiffin.serving.service import Service

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = ["ModelRows", "build_service", "expected_width", "resolve_model"]

_MLFLOW_TYPES = {"double": "number", "float": "number", "integer": "integer", "long": "integer",
                 "boolean": "boolean", "string": "string", "binary": "string",
                 "datetime": "string"}


def _mlflow_signature(model: Model) -> dict[str, Any]:
    return (model.info.context.get("mlflow") or {}).get("signature") or {}


def _tensor_spec(signature: dict[str, Any]) -> dict[str, Any] | None:
    """The one tensor spec of a tensor signature (``{"dtype", "shape"}``), or None."""
    specs = [c for c in signature.get("inputs") or [] if isinstance(c, dict)]
    if len(specs) == 1 and specs[0].get("type") == "tensor":
        spec = specs[0].get("tensor-spec")
        return spec if isinstance(spec, dict) else None
    return None


def _columns(signature: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in signature.get("inputs") or [] if isinstance(c, dict) and c.get("name")
            and c.get("type") != "tensor"]


def expected_width(model: Model) -> int | None:
    """How many values a row holds, from the MLflow signature (columns, or a 2-D tensor)."""
    signature = _mlflow_signature(model)
    columns = _columns(signature)
    if columns:
        return len(columns)
    spec = _tensor_spec(signature)
    shape = (spec or {}).get("shape")
    if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
        return shape[1]
    return None


def _tensor_schema(spec: dict[str, Any]) -> dict[str, Any]:
    dtype = str(spec.get("dtype", ""))
    kind = (
        "boolean" if dtype == "bool"
        else "integer" if "int" in dtype
        else "number" if "float" in dtype
        else "string" if dtype in ("str", "object") else None
    )
    schema: dict[str, Any] = {"type": kind} if kind else {}
    shape = spec.get("shape") or []
    for length in reversed(shape[1:] if isinstance(shape, list) else []):
        schema = {"type": "array", "items": schema}
        if isinstance(length, int) and length > 0:
            schema["minItems"] = schema["maxItems"] = length
    return {
        "type": "array",
        "items": schema,
        "description": f"a tensor of shape {shape} and dtype {dtype}, as nested lists "
        "(or .npy bytes)",
    }


def _request_schema(model: Model) -> dict[str, Any]:
    """The JSON schema of a request, from the model's MLflow signature where it has one."""
    signature = _mlflow_signature(model)
    columns = _columns(signature)
    spec = _tensor_spec(signature)
    schema: dict[str, Any]
    if columns:
        props = {c["name"]: {"type": _MLFLOW_TYPES[c["type"]]} if c.get("type") in _MLFLOW_TYPES
                 else {} for c in columns}
        names = [c["name"] for c in columns]
        required = [c["name"] for c in columns if c.get("required", True)]
        schema = {
            "oneOf": [
                {"type": "array", "description": "rows as objects",
                 "items": {"type": "object", "properties": props, "required": required}},
                {"type": "object", "description": "columns",
                 "properties": {k: {"type": "array", "items": v} for k, v in props.items()},
                 "required": required},
                {"type": "array", "description": f"rows as arrays, in column order {names}",
                 "items": {"type": "array", "minItems": len(names), "maxItems": len(names)}},
            ],
        }
    elif spec is not None:
        schema = _tensor_schema(spec)
    else:
        schema = {"description": "a JSON array of rows, or an object of columns",
                  "type": ["array", "object"]}
    if signature:
        schema["x-mlflow-signature"] = signature
    example = _input_example(model)
    if example is not None:
        schema["examples"] = [example]
    return schema


def _input_example(model: Model) -> Any:
    """The model's saved input example in this route's form (rows), if it has one."""
    if model.info.module != MODULE:
        return None
    example = serving_input_example(model)
    if not isinstance(example, dict):
        return None
    split = example.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        columns = split.get("columns")
        if isinstance(columns, list):
            return [dict(zip(columns, row, strict=False)) for row in split["data"]]
        return split["data"]
    for key in ("dataframe_records", "inputs", "instances"):
        if key in example:
            return example[key]
    return None


class ModelRows(Rows):
    """Rows in, rows out: what a stored model's routes speak (a client sees a
    :class:`~tiffin.io.rows.Rows`)."""

    def __init__(
        self, schema: dict[str, Any] | None = None, *, mlflow_model: bool = False,
        signature: InputSchema | None = None, columnar: bool = False,
    ) -> None:  # fmt: skip
        self.schema = schema or {"type": ["array", "object"]}
        #: an MLflow model's bodies become what its signature declares (None: it has none),
        #: through tiffin.serving.mlflow_inputs
        self._mlflow_model = mlflow_model
        self._signature = signature
        self._columnar = columnar  # tables may stay dicts of columns (the runnable frames them)

    def decode_request(self, body: bytes, content_type: str | None) -> Any:
        if self._mlflow_model:
            media_type, _ = check_content_type(content_type, self.request_media_types)
            require_body(body, "a JSON array of rows, an object of columns, or .npy bytes")
            if media_type in NPY_TYPES:
                converted = from_npy(body, self._signature)
            else:
                converted = from_json(self.read_json(body), self._signature, self._columnar)
            if converted is not FALLBACK:
                return converted
        return super().decode_request(body, content_type)

    def input_schema(self) -> dict[str, Any]:
        return self.schema

    def output_schema(self) -> dict[str, Any]:
        return {"type": "array"}


def build_service(model: Model, *, batching: bool = True) -> Service:
    """A Service with one route per signature method of ``model``."""
    configs: dict[str, dict[str, Any]] = {}
    for main in ("predict", "forward"):  # the model's main method: batched unless told not to
        if main in model.info.signatures:
            configs[main] = {"batchable": batching}
            break
    runner = model.to_runner(method_configs=configs)
    service = Service(model.tag.name, runners=[runner], models=[model])
    schema = _request_schema(model)
    checks: dict[str, Any] = {"width": expected_width(model), "frame": None}
    mlflow = model.info.module == MODULE
    # dicts of columns where the pyfunc runnable makes the frame per batch (a native flavor
    # gets its input as it is)
    columnar = not model.info.options.get("native_flavor")
    signature = InputSchema.from_model(model, columnar=columnar) if mlflow else None
    converted = mlflow and (signature is None or not signature.needs_mlflow)

    @service.on_startup
    def learn_checks() -> None:
        # scikit-learn estimators know how many features they take: check before batching,
        # so one malformed request is a 400 and never fails the batch it would have joined
        if checks["width"] is None:
            native = getattr(getattr(runner.backend, "instance", None), "model", None)
            width = getattr(native, "n_features_in_", None)
            checks["width"] = int(width) if isinstance(width, int) else None
        # what tiffin converted meets the signature already; MLflow checks the rest
        checks["frame"] = None if converted else frame_validator(model)

    for method in runner.methods.values():

        async def call(value: Any, _method: Any = method) -> Any:
            _check_width(value, checks["width"])
            if checks["frame"] is not None:
                value = checks["frame"](value)
            return await _method.async_run(value)

        call.__doc__ = f"{method.name} of model {model.tag} ({model.info.module})"
        rows = ModelRows(schema, mlflow_model=mlflow, signature=signature, columnar=columnar)
        service.api(input=rows, output=ModelRows(), name=method.name)(call)
    return service


def _check_width(value: Any, width: int | None) -> None:
    if hasattr(value, "columns"):  # a DataFrame: its columns are checked by name, not counted
        return
    shape = getattr(value, "shape", None)
    if width is None or shape is None or len(shape) != 2 or shape[1] == width:
        return
    raise InvalidArgument(f"input has {shape[1]} features per row, but the model expects {width}")


def _name_from_uri(uri: str) -> str:
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(uri.rstrip("/")).name.lower()).strip("-._")
    return stem[:63] or "mlflow-model"


def resolve_model(target: str) -> Model:
    """A stored model by tag, or an MLflow model URI imported into the store first."""
    from tiffin.store import models

    looks_like_uri = "/" in target or "\\" in target or Path(target).exists()
    if not looks_like_uri:
        try:
            return models.get(target)
        except (NotFound, InvalidTag):
            if ":/" not in target:
                raise
    from tiffin.frameworks import mlflow as tiffin_mlflow

    return tiffin_mlflow.import_model(_name_from_uri(target), target)
