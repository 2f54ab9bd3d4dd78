"""Errors as HTTP responses, in the two shapes a tiffin server answers with.

* tiffin's, on the APIs and every route of the server's own: ``{"error": CODE, "detail":
  message}`` with the error's HTTP status; a body too large once decoded also names the
  setting that refused it (``"setting": "max_columns"``).
* MLflow's, on ``/invocations`` (and the 404/405 of MLflow's routes): ``{"error_code": CODE,
  "message": message}`` with the status codes ``mlflow models serve`` answers.

Rules of both shapes:

* A server-side failure (a 500, or a model that raised on ``/invocations``) answers a short
  generic message and an ``error_id``; the exception's text and traceback are only in the
  log, under that id (they can hold paths, data, secrets).
* Unavailability (``Overloaded``, ``RunnerUnavailable``: 503) carries ``Retry-After``.

Only this module turns an exception into a response; the request pipeline
(:mod:`~tiffin.serving.pipeline`) hands every exception to its route's shape. It also words
start-up failures for the log and the command line (:func:`describe_failure`): the user's
own frames, none of tiffin's or a library's.
"""

from __future__ import annotations

import logging
import os
import sysconfig
import traceback
import uuid
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from tiffin.exceptions import DecodedTooLarge, Overloaded, RunnerUnavailable, TiffinError
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
    "describe_failure",
    "error_response",
    "failure_line",
    "foreign_client_error",
    "http_error_response",
    "log_server_error",
    "mlflow_error",
    "mlflow_error_response",
    "new_error_id",
    "retry_after",
    "user_frames",
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


def retry_after(exc: Overloaded | RunnerUnavailable) -> str:
    return str(max(1, round(exc.retry_after)))


def _server_side(exc: BaseException, where: str, error_id: str) -> str:
    """The detail of a server-side failure: the error's class, where to look, and nothing of
    its text."""
    return (
        f"{type(exc).__name__} in {where or 'request'}; see the server log for "
        f"error_id={error_id}"
    )


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
        if isinstance(exc, DecodedTooLarge):
            body["setting"] = exc.setting
        elif isinstance(exc, Overloaded):
            headers["Retry-After"] = retry_after(exc)
        elif exc.http_status >= 500:  # our side failed: make it findable in the log
            body["error_id"] = error_id = log_server_error(exc, where, scope)
            if isinstance(exc, RunnerUnavailable):  # a runner process restarts: come back
                headers["Retry-After"] = retry_after(exc)
            elif exc.http_status == 500:
                body["detail"] = _server_side(exc, where, error_id)
        return JSONResponse(body, exc.http_status, headers=headers)
    status = foreign_client_error(exc)
    if status is not None:  # e.g. MLflow's schema enforcement: the input, not the server
        return JSONResponse({"error": "BAD_REQUEST", "detail": str(exc)}, status)
    error_id = log_server_error(exc, where, scope)
    detail = _server_side(exc, where, error_id)
    return JSONResponse({"error": "INTERNAL_ERROR", "detail": detail, "error_id": error_id}, 500)


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
    400 (the input is taken to be at fault), tiffin's errors keep their status; an input
    whose shape or columns miss the signature is ``INVALID_PARAMETER_VALUE`` (MLflow's schema
    enforcement), any other bad input ``BAD_REQUEST`` (MLflow's parser)."""
    if isinstance(exc, Expired):
        return mlflow_error(
            504,
            "DEADLINE_EXCEEDED",
            f"Request processing time exceeded limit ({exc.seconds:g} s, api_timeout_s)",
        )
    if mlflow_exception is not None and isinstance(exc, mlflow_exception):
        error: Any = exc
        status = error.get_http_status_code()
        if status < 500:
            return mlflow_error(status, str(error.error_code), error.message)
        error_id = log_server_error(exc, where, scope)
        return mlflow_error(status, str(error.error_code), _server_side(exc, where, error_id))
    if isinstance(exc, UnicodeDecodeError):
        return mlflow_error(400, "BAD_REQUEST", f"the body is not valid UTF-8: {exc}")
    if isinstance(exc, Overloaded | RunnerUnavailable):
        return mlflow_error(
            503, "TEMPORARILY_UNAVAILABLE", str(exc), {"Retry-After": retry_after(exc)}
        )
    if isinstance(exc, TiffinError):
        if exc.http_status < 500:  # an input that is not the signature's: MLflow's own code
            code = getattr(exc, "mlflow_error_code", "BAD_REQUEST")
            return mlflow_error(exc.http_status, code, str(exc))
        error_id = log_server_error(exc, where, scope)
        return mlflow_error(
            exc.http_status, "INTERNAL_ERROR", _server_side(exc, where, error_id)
        )
    error_id = log_server_error(exc, where, scope)  # the model raised: its text stays in the log
    return mlflow_error(
        400,
        "BAD_REQUEST",
        "Encountered an unexpected error while evaluating the model. Verify that the "
        "serialized input Dataframe is compatible with the model for inference. "
        f"({type(exc).__name__}; error_id={error_id}: the error is in the server log)",
    )


# -- start-up failures -------------------------------------------------------------------------


def _library_dirs() -> tuple[str, ...]:
    """Where tiffin, the standard library and installed packages live: not the user's code."""
    paths = sysconfig.get_paths()
    dirs = {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}  # the tiffin package
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    dirs.update(paths[key] for key in keys if key in paths)
    return tuple(sorted({variant + os.sep for d in dirs
                         for variant in (os.path.abspath(d), os.path.realpath(d))}))  # fmt: skip


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return chain


def user_frames(exc: BaseException, limit: int = 8) -> list[traceback.FrameSummary]:
    """The frames of the user's own code (a service file, a model's code) in the tracebacks of
    ``exc`` and its causes, innermost last, at most ``limit``: none of tiffin, the standard
    library or an installed package (uvicorn, starlette, MLflow, ...)."""
    libraries = _library_dirs()
    frames = [
        frame
        for error in reversed(_chain(exc))
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<")
        and not os.path.abspath(frame.filename).startswith(libraries)
    ]
    return frames[-limit:]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def describe_failure(exc: BaseException) -> str:
    """``exc`` for the log: the error, then the user's own frames (:func:`user_frames`) and
    the error that started it, as a traceback would show them without tiffin's and the
    libraries' frames."""
    lines = [_one_line(exc)]
    for frame in user_frames(exc):
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    root = _chain(exc)[-1]
    if root is not exc:
        lines.append(f"  caused by {_one_line(root)}")
    return "\n".join(lines)


def failure_line(exc: BaseException) -> str:
    """``exc`` in one line, with the user's innermost file and line when there is one."""
    frames = user_frames(exc, limit=1)
    where = f" ({frames[0].filename}, line {frames[0].lineno})" if frames else ""
    return _one_line(exc) + where
