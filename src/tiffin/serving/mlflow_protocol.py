"""MLflow's scoring protocol on a tiffin server: ``/invocations``, ``/ping``, ``/health``,
``/version``.

A service with exactly one runner over an imported MLflow model answers these routes the way
``mlflow models serve`` does, so MLflow clients switch with no change. Parsing and encoding
use MLflow's own scoring-server functions, so payload handling matches MLflow's; the call
itself goes through the runner's ``predict`` and its adaptive batcher (calls batch together
only when their ``params`` are equal).

Two things keep one caller's bad input from failing the others it was batched with: a
DataFrame is checked against the model's signature before it joins a batch (MLflow's own
schema enforcement, so the error is MLflow's 400), and a call whose batch failed with an
error of the model's own is run once more on its own, so only the caller whose input the
model rejects gets the error.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tiffin.exceptions import Overloaded, TiffinError
from tiffin.frameworks.mlflow.loading import MLFLOW_MODEL_FOLDER, MODULE
from tiffin.frameworks.mlflow.schema import frame_validator, serving_input_example
from tiffin.serving.deadlines import deadline as request_deadline

if TYPE_CHECKING:
    from tiffin.runner.runner import Runner
    from tiffin.serving.app import AppState
    from tiffin.serving.service import Service
    from tiffin.store.models import Model

logger = logging.getLogger("tiffin.server")

ACCEPTED = ("application/json", "text/csv", "application/vnd.apache.parquet")
#: bodies at least this big are parsed in a worker thread, off the event loop
OFFLOAD_BYTES = 1 << 20


def mlflow_runner(service: Service) -> tuple[Runner, Model] | None:
    """The one runner serving an MLflow model, or None when there are none or several."""
    found = [
        (runner, model)
        for runner in service.runners
        for model in runner.models
        if model.info.module == MODULE and "predict" in runner.methods
    ]
    return found[0] if len(found) == 1 else None


def mlflow_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An error in MLflow's shape: ``{"error_code": ..., "message": ...}``."""
    return Response(
        orjson.dumps({"error_code": code, "message": message}),
        status,
        media_type="application/json",
        headers=headers,
    )


def _check_content_type(header: str) -> str | Response:
    if header == "application/json":  # what nearly every client sends
        return header
    mime, *params = (part.strip() for part in header.split(";"))
    values = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in params if p)}
    if values.get("charset", "utf-8").lower() != "utf-8":
        return mlflow_error(415, "BAD_REQUEST", "The scoring server only supports UTF-8")
    extra = set(values) - {"charset"}
    if extra:
        return mlflow_error(
            415, "BAD_REQUEST", f"Unrecognized content type parameters: {sorted(extra)}"
        )
    if mime.lower() not in ACCEPTED:
        return mlflow_error(
            415,
            "BAD_REQUEST",
            f"This predictor only supports the following content types: {list(ACCEPTED)}. "
            f"Got {header!r}.",
        )
    return mime.lower()


# -- the routes --------------------------------------------------------------------------------


def _predictions_json(raw: Any, ss: Any) -> bytes:
    """``{"predictions": ...}`` exactly as MLflow writes it; orjson for plain arrays."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(raw, np.ndarray) and raw.dtype.kind in "biuf":
        array = raw
        if array.dtype.kind == "f" and array.dtype != np.float64:
            array = array.astype(np.float64)  # MLflow writes float32 as its float64 value
        if array.dtype.kind != "f" or bool(np.isfinite(array).all()):  # NaN: MLflow writes NaN
            try:
                return orjson.dumps(
                    {"predictions": np.ascontiguousarray(array)},
                    option=orjson.OPT_SERIALIZE_NUMPY,
                )
            except orjson.JSONEncodeError:
                pass
    out = io.StringIO()
    ss.predictions_to_json(raw, out)
    return out.getvalue().encode()


def _single_tensor_dtype(metadata: Any, schema: Any) -> Any:
    """The numpy dtype of a signature that is one unnamed tensor, else None."""
    if schema is None or not schema.is_tensor_spec() or schema.has_input_names():
        return None
    if len(schema.inputs) != 1 or getattr(metadata, "_is_signature_from_type_hint", bool)():
        return None
    return schema.inputs[0].type


def mlflow_routes(
    service: Service, state: AppState
) -> tuple[list[BaseRoute], dict[str, Any]] | None:
    found = mlflow_runner(service)
    if found is None:
        return None
    runner, model = found
    model_dir = model.path_of(MLFLOW_MODEL_FOLDER)
    cache: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        """MLflow's parsers and the model's metadata, loaded on the first call."""
        if not cache:
            from mlflow.exceptions import MlflowException
            from mlflow.models import Model as MlflowModel
            from mlflow.pyfunc import scoring_server

            metadata = MlflowModel.load(model_dir)
            schema = metadata.get_input_schema()
            cache.update(
                metadata=metadata,
                schema=schema,
                tensor_dtype=_single_tensor_dtype(metadata, schema),
                ss=scoring_server,
                MlflowException=MlflowException,
                np=__import__("numpy"),
                validate=frame_validator(model),
            )
        return cache

    limit = state.settings.max_body_size
    timeout = state.settings.api_timeout_s
    method = runner.predict

    def parse(body: bytes, media_type: str) -> tuple[Any, Any]:
        env = cache
        ss = env["ss"]
        params = None
        if media_type == "application/json":
            try:
                decoded: Any = orjson.loads(body)
            except orjson.JSONDecodeError:
                decoded = body  # let MLflow's parser accept it (NaN) or word the error
            dtype = env["tensor_dtype"]
            if dtype is not None and type(decoded) is dict and len(decoded) == 1:
                # {"inputs": [...]} for a one-tensor signature: MLflow's parser comes down to
                # np.array(inputs, dtype=spec dtype) (after a deepcopy); anything else, or
                # anything numpy refuses, goes the long way and gets MLflow's own answer
                value = decoded.get("inputs")
                if type(value) is list and value and type(value[0]) is not dict:
                    try:
                        return env["np"].array(value, dtype=dtype), None
                    except (ValueError, TypeError):
                        pass
            if isinstance(decoded, dict | bytes):
                parsed = ss._parse_json_data(decoded, env["metadata"], env["schema"])
            else:  # MLflow's error for a bare list or value
                parsed = ss._parse_json_data(body, env["metadata"], env["schema"])
            data, params = parsed.data, parsed.params
        elif media_type == "text/csv":
            data = ss.parse_csv_input(io.StringIO(body.decode("utf-8")), env["schema"])
        else:
            data = ss.parse_parquet_input(io.BytesIO(body))
        if env["validate"] is not None:
            data = env["validate"](data)
        return data, params

    async def invocations(request: Request) -> Response:
        from tiffin.serving.app import log_server_error, read_body, retry_after

        if not state.ready:
            return mlflow_error(
                503,
                "TEMPORARILY_UNAVAILABLE",
                "the model is still loading; retry once /ping answers 200",
                {"Retry-After": "1"},
            )
        checked = _check_content_type(request.headers.get("content-type", ""))
        if isinstance(checked, Response):
            return checked
        env = cache or setup()
        mlflow_exception = env["MlflowException"]
        try:
            body = await read_body(request, limit)
            if len(body) >= OFFLOAD_BYTES:
                data, params = await asyncio.to_thread(parse, body, checked)
            else:
                data, params = parse(body, checked)
            kwargs = {"params": params} if params else {}
            try:
                async with request_deadline(timeout) as deadline:
                    raw = await method.async_run(data, **kwargs)
            except TimeoutError:
                if not deadline.expired():
                    raise
                return mlflow_error(
                    504,
                    "DEADLINE_EXCEEDED",
                    f"Request processing time exceeded limit ({timeout:g} s, api_timeout_s)",
                )
            return Response(_predictions_json(raw, env["ss"]), media_type="application/json")
        except mlflow_exception as exc:
            return mlflow_error(exc.get_http_status_code(), str(exc.error_code), exc.message)
        except UnicodeDecodeError as exc:
            return mlflow_error(400, "BAD_REQUEST", f"the body is not valid UTF-8: {exc}")
        except Overloaded as exc:
            return mlflow_error(
                503, "TEMPORARILY_UNAVAILABLE", str(exc), {"Retry-After": retry_after(exc)}
            )
        except TiffinError as exc:
            if exc.http_status < 500:
                return mlflow_error(exc.http_status, "BAD_REQUEST", str(exc))
            error_id = log_server_error(exc, "/invocations", request.scope)
            return mlflow_error(exc.http_status, "INTERNAL_ERROR", f"{exc} (error_id={error_id})")
        except Exception as exc:
            # MLflow's answer when the model raises: 400, the input is taken to be at fault
            error_id = log_server_error(exc, "/invocations", request.scope)
            return mlflow_error(
                400,
                "BAD_REQUEST",
                "Encountered an unexpected error while evaluating the model. Verify that the "
                f"serialized input Dataframe is compatible with the model for inference. "
                f"({type(exc).__name__}: {exc}; error_id={error_id})",
            )

    async def ping(request: Request) -> Response:
        return Response("\n", 200 if state.ready else 404, media_type="application/json")

    async def version(request: Request) -> Response:
        import mlflow

        return Response(mlflow.__version__, media_type="application/json")

    routes: list[BaseRoute] = [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", ping, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
    ]
    return routes, _openapi_paths(model)


def _openapi_paths(model: Model) -> dict[str, Any]:
    signature = (model.info.context.get("mlflow") or {}).get("signature") or {}
    schema: dict[str, Any] = {
        "type": "object",
        "description": "exactly one of dataframe_split, dataframe_records, instances, inputs; "
        "optional params",
        "properties": {
            "dataframe_split": {
                "type": "object",
                "properties": {
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "data": {"type": "array", "items": {"type": "array"}},
                    "index": {"type": "array"},
                },
                "required": ["data"],
            },
            "dataframe_records": {"type": "array", "items": {"type": "object"}},
            "instances": {"type": "array"},
            "inputs": {},
            "params": {"type": "object"},
        },
        "minProperties": 1,
    }
    if signature:
        schema["x-mlflow-signature"] = signature
    example = serving_input_example(model)
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    error = {
        "description": "MLflow error",
        "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["error_code", "message"],
        }}},
    }
    text = {"description": "ok", "content": {"application/json": {"schema": {"type": "string"}}}}
    return {
        "/invocations": {
            "post": {
                "operationId": "invocations",
                "summary": "MLflow scoring protocol",
                "tags": ["MLflow"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": media,
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "200": {
                        "description": "predictions",
                        "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"predictions": {}}}}},
                    },
                    **{status: error for status in ("400", "413", "415", "503", "504")},
                },
            }
        },
        "/ping": {"get": {"summary": "MLflow health check", "tags": ["MLflow"],
                          "responses": {"200": text}}},
        "/health": {"get": {"summary": "MLflow health check", "tags": ["MLflow"],
                            "responses": {"200": text}}},
        "/version": {"get": {"summary": "MLflow version", "tags": ["MLflow"],
                             "responses": {"200": text}}},
    }
