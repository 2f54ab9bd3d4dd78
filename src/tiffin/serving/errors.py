"""Errors as HTTP responses, in the two shapes a tiffin server answers with.

* tiffin's, on the APIs and every route of the server's own: ``{"error": CODE, "detail":
  message}`` with the error's HTTP status; a server-side failure (5xx) also carries an
  ``error_id`` that is logged with the traceback.
* MLflow's, on ``/invocations`` (and the 404/405 of MLflow's routes): ``{"error_code": CODE,
  "message": message}`` with the status codes ``mlflow models serve`` answers.

Only this module turns an exception into a response; the request pipeline
(:mod:`~tiffin.serving.pipeline`) hands every exception to its route's shape.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from tiffin.exceptions import Overloaded, TiffinError
from tiffin.serving.access_log import ERROR_ID_KEY
from tiffin.serving.routes import served

if TYPE_CHECKING:
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.types import Scope

    from tiffin.serving.app import AppState

__all__ = [
    "Expired",
    "JSONResponse",
    "error_response",
    "foreign_client_error",
    "http_error_response",
    "log_server_error",
    "mlflow_error",
    "mlflow_error_response",
    "new_error_id",
    "retry_after",
]

logger = logging.getLogger("tiffin.server")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class Expired(Exception):
    """The request ran past its route's timeout (504)."""

    def __init__(self, where: str, seconds: float) -> None:
        super().__init__(f"{where} did not finish within its {seconds:g} s timeout")
        self.seconds = seconds


def new_error_id() -> str:
    return uuid.uuid4().hex[:16]


def log_server_error(exc: BaseException, where: str, scope: Scope | None = None) -> str:
    """Log ``exc`` with its traceback under a fresh error id (also kept in ``scope`` for the
    access log), and return the id."""
    error_id = new_error_id()
    logger.error("error_id=%s %s failed", error_id, where or "request", exc_info=exc)
    if scope is not None:
        scope[ERROR_ID_KEY] = error_id
    return error_id


def retry_after(exc: Overloaded) -> str:
    return str(max(1, round(exc.retry_after)))


def foreign_client_error(exc: BaseException) -> int | None:
    """The 4xx status a library's own error carries (MLflow's MlflowException), if any."""
    getter = getattr(exc, "get_http_status_code", None)
    if getter is None or type(exc).__module__.split(".")[0] != "mlflow":
        return None
    try:
        status = int(getter())
    except Exception:
        return None
    return status if 400 <= status < 500 else None


# -- tiffin's shape ----------------------------------------------------------------------------


def error_response(exc: BaseException, *, where: str = "", scope: Scope | None = None) -> Response:
    """tiffin's JSON response for an error raised while handling a request."""
    if isinstance(exc, Expired):
        return JSONResponse(
            {
                "error": "TIMEOUT",
                "detail": f"{exc}; raise api_timeout_s (or apis.<name>.timeout_s) if it needs "
                "longer",
            },
            504,
        )
    if isinstance(exc, TiffinError):
        body: dict[str, Any] = {"error": exc.error_code, "detail": str(exc)}
        headers = {}
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = retry_after(exc)
        elif exc.http_status >= 500:  # our side failed: make it findable in the log
            body["error_id"] = log_server_error(exc, where, scope)
        return JSONResponse(body, exc.http_status, headers=headers)
    status = foreign_client_error(exc)
    if status is not None:  # e.g. MLflow's schema enforcement: the input, not the server
        return JSONResponse({"error": "BAD_REQUEST", "detail": str(exc)}, status)
    error_id = log_server_error(exc, where, scope)
    return JSONResponse(
        {
            "error": "INTERNAL_ERROR",
            "detail": f"{type(exc).__name__} in {where or 'request'}; "
            f"see the server log for error_id={error_id}",
            "error_id": error_id,
        },
        500,
    )


def http_error_response(request: Request, exc: HTTPException, state: AppState) -> Response:
    """404 and 405 from the router (and the static files), in the route's shape."""
    path = request.url.path
    if exc.status_code == 404:
        code, detail = "NOT_FOUND", not_found_detail(request.method, path, state)
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        code, detail = "METHOD_NOT_ALLOWED", (
            f"{request.method} is not allowed on {path}; use {allowed or 'another method'}"
        )
    else:
        code, detail = "HTTP_ERROR", str(exc.detail)
    if path in state.mlflow_paths:
        mlflow_code = "ENDPOINT_NOT_FOUND" if exc.status_code == 404 else "BAD_REQUEST"
        return mlflow_error(exc.status_code, mlflow_code, detail, dict(exc.headers or {}))
    return JSONResponse({"error": code, "detail": detail}, exc.status_code, headers=exc.headers)


def not_found_detail(method: str, path: str, state: AppState) -> str:
    """What a 404 says: every route this server answers, from the API list and the table."""
    own = served(mlflow=bool(state.mlflow_paths))
    posts = [f"POST {api.route}" for api in state.service.apis.values()]
    posts += [f"POST {route.path}" for route in own if route.method == "POST"]
    gets = ", ".join(route.path for route in own if route.method == "GET")
    return f"no route {method} {path}; this server answers " + ", ".join([*posts, f"GET {gets}"])


# -- MLflow's shape ----------------------------------------------------------------------------


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


def mlflow_error_response(
    exc: BaseException, *, where: str, scope: Scope | None, mlflow_exception: type | None
) -> Response:
    """MLflow's answer for an error raised while scoring: the model's own failure is MLflow's
    400 (the input is taken to be at fault), tiffin's errors keep their status."""
    if isinstance(exc, Expired):
        return mlflow_error(
            504,
            "DEADLINE_EXCEEDED",
            f"Request processing time exceeded limit ({exc.seconds:g} s, api_timeout_s)",
        )
    if mlflow_exception is not None and isinstance(exc, mlflow_exception):
        error: Any = exc
        return mlflow_error(error.get_http_status_code(), str(error.error_code), error.message)
    if isinstance(exc, UnicodeDecodeError):
        return mlflow_error(400, "BAD_REQUEST", f"the body is not valid UTF-8: {exc}")
    if isinstance(exc, Overloaded):
        return mlflow_error(
            503, "TEMPORARILY_UNAVAILABLE", str(exc), {"Retry-After": retry_after(exc)}
        )
    if isinstance(exc, TiffinError):
        if exc.http_status < 500:
            return mlflow_error(exc.http_status, "BAD_REQUEST", str(exc))
        error_id = log_server_error(exc, where, scope)
        return mlflow_error(exc.http_status, "INTERNAL_ERROR", f"{exc} (error_id={error_id})")
    error_id = log_server_error(exc, where, scope)
    return mlflow_error(
        400,
        "BAD_REQUEST",
        "Encountered an unexpected error while evaluating the model. Verify that the "
        f"serialized input Dataframe is compatible with the model for inference. "
        f"({type(exc).__name__}: {exc}; error_id={error_id})",
    )
