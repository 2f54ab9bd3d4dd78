"""MLflow's scoring protocol on a tiffin server: ``/invocations``, ``/ping``, ``/health``,
``/version``.

A service with exactly one runner over an imported MLflow model answers these routes the way
``mlflow models serve`` does, so MLflow clients switch with no change. Parsing and encoding
use MLflow's own scoring-server functions, so payload handling matches MLflow's; the call
itself goes through the runner's ``predict`` and its adaptive batcher (calls batch together
only when their ``params`` are equal).
"""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from tiffin.exceptions import TiffinError

if TYPE_CHECKING:
    from tiffin.models import Model
    from tiffin.runner import Runner
    from tiffin.server import AppState
    from tiffin.service import Service

MLFLOW_MODULE = "tiffin.mlflow"
MLFLOW_MODEL_FOLDER = "mlflow_model"
ACCEPTED = ("application/json", "text/csv", "application/vnd.apache.parquet")


def mlflow_runner(service: Service) -> tuple[Runner, Model] | None:
    """The one runner serving an MLflow model, or None when there are none or several."""
    found = [
        (runner, model)
        for runner in service.runners
        for model in runner.models
        if model.info.module == MLFLOW_MODULE and "predict" in runner.methods
    ]
    return found[0] if len(found) == 1 else None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error_code": code, "message": message}),
        status,
        media_type="application/json",
        headers=headers,
    )


def _check_content_type(header: str) -> str | Response:
    mime, *params = (part.strip() for part in header.split(";"))
    values = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in params if p)}
    if values.get("charset", "utf-8").lower() != "utf-8":
        return _error(415, "BAD_REQUEST", "The scoring server only supports UTF-8")
    extra = set(values) - {"charset"}
    if extra:
        return _error(415, "BAD_REQUEST", f"Unrecognized content type parameters: {sorted(extra)}")
    if mime.lower() not in ACCEPTED:
        return _error(
            415,
            "BAD_REQUEST",
            f"This predictor only supports the following content types: {list(ACCEPTED)}. "
            f"Got {header!r}.",
        )
    return mime.lower()


def mlflow_routes(
    service: Service, state: AppState
) -> tuple[list[BaseRoute], dict[str, Any]] | None:
    found = mlflow_runner(service)
    if found is None:
        return None
    runner, model = found
    model_dir = model.path_of(MLFLOW_MODEL_FOLDER)
    cache: dict[str, Any] = {}

    def meta() -> tuple[Any, Any]:
        if not cache:
            from mlflow.models import Model as MlflowModel

            mlmodel = MlflowModel.load(model_dir)
            cache["meta"] = mlmodel
            cache["schema"] = mlmodel.get_input_schema()
        return cache["meta"], cache["schema"]

    limit = state.settings.max_body_size
    timeout = state.settings.api_timeout_s

    async def invocations(request: Request) -> Response:
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc import scoring_server as ss

        from tiffin.server import error_response, read_body

        checked = _check_content_type(request.headers.get("content-type", ""))
        if isinstance(checked, Response):
            return checked
        try:
            body = await read_body(request, limit)
            metadata, schema = meta()
            params = None
            if checked == "application/json":
                parsed = ss._parse_json_data(body, metadata, schema)
                data, params = parsed.data, parsed.params
            elif checked == "text/csv":
                data = ss.parse_csv_input(io.StringIO(body.decode("utf-8")), schema)
            else:
                data = ss.parse_parquet_input(io.BytesIO(body))
            kwargs = {"params": params} if params else {}
            raw = await asyncio.wait_for(runner.predict.async_run(data, **kwargs), timeout)
            out = io.StringIO()
            ss.predictions_to_json(raw, out)
            return Response(out.getvalue(), media_type="application/json")
        except MlflowException as exc:
            return _error(exc.get_http_status_code(), str(exc.error_code), exc.message)
        except UnicodeDecodeError as exc:
            return _error(400, "BAD_REQUEST", f"the body is not valid UTF-8: {exc}")
        except TiffinError as exc:
            response = error_response(exc)
            if exc.http_status >= 500:
                return response
            return _error(exc.http_status, "BAD_REQUEST", str(exc), dict(response.headers))
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                return error_response(exc, where="/invocations")
            return _error(
                400,
                "BAD_REQUEST",
                "Encountered an unexpected error while evaluating the model. Verify that the "
                f"serialized input Dataframe is compatible with the model for inference. ({exc})",
            )

    async def ping(request: Request) -> Response:
        return PlainTextResponse("\n", 200 if state.ready else 404)

    async def version(request: Request) -> Response:
        import mlflow

        return PlainTextResponse(mlflow.__version__)

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
            "dataframe_split": {"type": "object"},
            "dataframe_records": {"type": "array", "items": {"type": "object"}},
            "instances": {"type": "array"},
            "inputs": {},
            "params": {"type": "object"},
        },
    }
    if signature:
        schema["x-mlflow-signature"] = signature
    text = {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/invocations": {
            "post": {
                "summary": "MLflow scoring protocol",
                "tags": ["MLflow"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": schema},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "200": {
                        "description": "predictions",
                        "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"predictions": {}}}}},
                    }
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
