"""MLflow's scoring protocol on a tiffin server: ``/invocations``, ``/ping``, ``/health``,
``/version``.

A service with exactly one runner over an imported MLflow model answers these routes the way
``mlflow models serve`` does, so MLflow clients switch with no change. A body is read into
what the model's signature declares by tiffin's own converter
(:mod:`~tiffin.serving.mlflow_inputs`), MLflow's scoring-server parsers only where it leaves
off (Array/Object/Map/AnyType columns, type-hint signatures, ``params``, LLM bodies, bodies
that are not one envelope); answers are encoded as MLflow encodes them. The call itself goes
through the runner's ``predict`` and its adaptive batcher (calls batch together only when
their ``params`` are equal).

Before MLflow's parsers build anything, what a body declares is measured against the decode
limits (:mod:`tiffin.io.limits`): each JSON envelope's payload, a CSV body's header and lines,
a Parquet body's footer; over a limit is a 413 naming the setting. With a column signature,
the keys of records and of an object of inputs that are not among its columns are dropped
first (MLflow ignores them anyway), so a body of many junk keys builds neither a 413 nor a
frame of them.

Two things keep one caller's bad input from failing the others it was batched with: a
DataFrame is checked against the model's signature before it joins a batch (MLflow's own
schema enforcement, so the error is MLflow's 400), and a call whose batch failed with an
error of the model's own is run once more on its own, so only the caller whose input the
model rejects gets the error.

``/invocations`` takes the one request pipeline (:mod:`~tiffin.serving.pipeline`) with
MLflow's content-type check before the body is read, and answers errors in MLflow's shape
(:func:`~tiffin.serving.errors.mlflow_error_response`). Its path, and whether a server
answers these routes at all, come from the route table (:mod:`~tiffin.serving.routes`).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tiffin.frameworks.mlflow.inputs import FALLBACK, InputSchema
from tiffin.frameworks.mlflow.loading import MLFLOW_MODEL_FOLDER, MODULE
from tiffin.frameworks.mlflow.schema import frame_validator, serving_input_example
from tiffin.io.base import parse_media_type
from tiffin.io.limits import check_csv, check_parquet
from tiffin.io.payloads import ENVELOPES, check_envelope
from tiffin.serving.errors import mlflow_error, mlflow_error_response
from tiffin.serving.mlflow_inputs import from_csv, from_invocation, from_parquet, known_columns
from tiffin.serving.pipeline import Respond, pipeline
from tiffin.serving.routes import ROUTES

if TYPE_CHECKING:
    from starlette.types import Scope

    from tiffin.runner.runner import Runner
    from tiffin.serving.app import AppState
    from tiffin.serving.service import Service
    from tiffin.store.models import Model

__all__ = ["ACCEPTED", "MlflowRoutes", "mlflow_routes", "mlflow_runner", "screened"]

ACCEPTED = ("application/json", "text/csv", "application/vnd.apache.parquet")
_INVOCATIONS = next(route for route in ROUTES if route.path == "/invocations")


def mlflow_runner(service: Service) -> tuple[Runner, Model] | None:
    """The one runner serving an MLflow model, or None when there are none or several."""
    found = [
        (runner, model)
        for runner in service.runners
        for model in runner.models
        if model.info.module == MODULE and "predict" in runner.methods
    ]
    return found[0] if len(found) == 1 else None


def _check_content_type(header: str | None) -> str | Response:
    """The media type of a body MLflow's scoring server accepts, or its 415."""
    if header == "application/json":  # what nearly every client sends
        return header
    header = header or ""
    mime, values = parse_media_type(header, verbatim=True)
    if values.get("charset", "utf-8").lower() != "utf-8":
        return mlflow_error(415, "BAD_REQUEST", "The scoring server only supports UTF-8")
    extra = set(values) - {"charset"}
    if extra:
        return mlflow_error(
            415, "BAD_REQUEST", f"Unrecognized content type parameters: {sorted(extra)}"
        )
    if mime not in ACCEPTED:
        return mlflow_error(
            415,
            "BAD_REQUEST",
            f"This predictor only supports the following content types: {list(ACCEPTED)}. "
            f"Got {header!r}.",
        )
    return mime


# -- the routes --------------------------------------------------------------------------------


#: arrays of at most this many numbers are written from their Python values (``tolist``): one
#: numpy call instead of a cast, a finiteness check and a copy
_SMALL = 256


def _predictions_json(raw: Any, ss: Any) -> bytes:
    """``{"predictions": ...}`` exactly as MLflow writes it; orjson for plain arrays."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(raw, np.ndarray) and raw.dtype.kind in "biuf":
        if raw.size <= _SMALL:  # float32's values are float64's, NaN is null (0-d: a number)
            text = orjson.dumps({"predictions": raw.tolist()})
            if raw.dtype.kind != "f" or b"null" not in text:
                return text
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


#: a small JSON body of the same type as a parsed body that is not an object: MLflow's parser
#: words its error from the type alone, so a large one need not be parsed again
_STAND_INS = {list: b"[]", int: b"0", float: b"0.5", str: b'""', bool: b"true"}


def _column_names(schema: Any) -> frozenset[str] | None:
    """The columns of a column signature; None for a tensor signature or none."""
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    return frozenset(schema.input_names())


def screened(decoded: dict[str, Any], columns: frozenset[str] | None) -> dict[str, Any]:
    """``decoded`` with each envelope's payload measured against the decode limits
    (DecodedTooLarge), after its keys outside a column signature's ``columns`` are dropped."""
    for key in ENVELOPES:
        if key not in decoded:
            continue
        payload = decoded[key]
        if columns is not None and key != "dataframe_split":
            known = known_columns(payload, columns)
            if known is not payload:
                decoded = {**decoded, key: known}
                payload = known
        check_envelope(key, payload)
    return decoded


def _json_body(body: bytes) -> Any:
    """The parsed body, NaN and Infinity included (Python's json reads them as MLflow's
    parser does); the body itself when it is not JSON, for MLflow's parser to word why."""
    try:
        decoded: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            decoded = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body
    return decoded


@dataclass(frozen=True)
class MlflowRoutes:
    """What a server that speaks MLflow's protocol answers besides its APIs."""

    #: the POST route (``/invocations``)'s request pipeline, in MLflow's error shape, by path
    pipelines: dict[str, Respond]
    #: the GET routes' endpoints (``/ping``, ``/health``, ``/version``) by path
    endpoints: dict[str, Callable[[Request], Awaitable[Response]]]
    #: ``/invocations``'s OpenAPI operation (its request body is the model's)
    operation: dict[str, Any]


def mlflow_routes(service: Service, state: AppState) -> MlflowRoutes | None:
    """MLflow's routes for ``service``; None when it has not exactly one MLflow runner."""
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
            # the pyfunc runnable makes frames of dicts of columns (a native flavor would not)
            columnar = not model.info.options.get("native_flavor")
            schema = metadata.get_input_schema()
            cache.update(
                metadata=metadata,
                schema=schema,
                inputs=InputSchema.from_model(model, columnar=columnar),
                columnar=columnar,
                columns=_column_names(schema),
                ss=scoring_server,
                MlflowException=MlflowException,
                np=__import__("numpy"),
                validate=frame_validator(model),
            )
        return cache

    method = runner.predict

    def parse(body: bytes, media_type: str | None) -> tuple[Any, Any]:
        """The model's input (and params): tiffin's converter where the signature allows,
        else MLflow's own parsers (after the decode limits)."""
        env = cache
        ss = env["ss"]
        inputs = env["inputs"]
        params = None
        if media_type == "application/json":
            decoded = _json_body(body)
            if type(decoded) is dict:
                data = from_invocation(decoded, inputs, env["columnar"])
                if data is not FALLBACK:
                    return data, None
                decoded = screened(decoded, env["columns"])
            elif type(decoded) is not bytes:  # MLflow's error for a bare list or value
                decoded = _STAND_INS.get(type(decoded), b"null")
            parsed = ss._parse_json_data(decoded, env["metadata"], env["schema"])
            data, params = parsed.data, parsed.params
        elif media_type == "text/csv":
            data = from_csv(body, inputs, env["columnar"])
            if data is not FALLBACK:
                return data, None
            check_csv(body)
            data = ss.parse_csv_input(io.StringIO(body.decode("utf-8")), env["schema"])
        else:
            data = from_parquet(body, inputs, env["columnar"])
            if data is not FALLBACK:
                return data, None
            check_parquet(body)
            data = ss.parse_parquet_input(io.BytesIO(body))
        if env["validate"] is not None:
            data = env["validate"](data)
        return data, params

    def check(content_type: str | None) -> str | Response:
        checked = _check_content_type(content_type)
        if not cache and not isinstance(checked, Response):
            setup()  # MLflow's parsers, once a request gets this far
        return checked

    async def call(parsed: tuple[Any, Any]) -> Any:
        data, params = parsed
        kwargs = {"params": params} if params else {}
        return await method.async_run(data, **kwargs)

    def encode(raw: Any, *, accept: str | None) -> Response:
        return Response(_predictions_json(raw, cache["ss"]), media_type="application/json")

    def errors(exc: Exception, *, where: str, scope: Scope) -> Response:
        return mlflow_error_response(
            exc, where=where, scope=scope, mlflow_exception=cache.get("MlflowException")
        )

    def not_ready() -> Response:
        return mlflow_error(
            503,
            "TEMPORARILY_UNAVAILABLE",
            "the model is still loading; retry once /ping answers 200",
            {"Retry-After": "1"},
        )

    invocations = pipeline(
        state,
        where=_INVOCATIONS.path,
        decode=parse,
        call=call,
        encode=encode,
        timeout=state.settings.api_timeout_s,
        not_ready=not_ready,
        errors=errors,
        check=check,
    )

    async def ping(request: Request) -> Response:
        return Response("\n", 200 if state.ready else 404, media_type="application/json")

    async def version(request: Request) -> Response:
        import mlflow

        return Response(mlflow.__version__, media_type="application/json")

    endpoints: dict[str, Callable[[Request], Awaitable[Response]]] = {
        "/ping": ping, "/health": ping, "/version": version
    }
    return MlflowRoutes({_INVOCATIONS.path: invocations}, endpoints, _openapi_operation(model))


def _openapi_operation(model: Model) -> dict[str, Any]:
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
    return {
        "operationId": "invocations",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": media,
                "text/csv": {"schema": {"type": "string"}},
            },
        },
        "responses": {
            "200": {
                "description": _INVOCATIONS.response,
                "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"predictions": {}}}}},
            },
            **{status: error for status in ("400", "413", "415", "503", "504")},
        },
    }
