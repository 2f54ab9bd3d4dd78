"""A Service as an ASGI application: API routes, health, metrics, OpenAPI, Swagger UI.

Only this module (and the CLI) turns a :class:`~tiffin.exceptions.TiffinError` into a response:
every error is JSON ``{"error": CODE, "detail": message}`` with the error's HTTP status; an
unexpected exception is a 500 whose body carries an ``error_id`` that is also in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tiffin.config import ServeSettings
from tiffin.exceptions import InvalidArgument, Overloaded, PayloadTooLarge, TiffinError
from tiffin.metrics import ServerMetrics
from tiffin.service import API, MLFLOW_ROUTES, Service

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("tiffin.server")
access_logger = logging.getLogger("tiffin.access")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(exc: BaseException, *, where: str = "") -> Response:
    """The JSON response for an error raised while handling a request."""
    if isinstance(exc, TiffinError):
        headers = {}
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return JSONResponse(
            {"error": exc.error_code, "detail": str(exc)}, exc.http_status, headers=headers
        )
    status = _foreign_client_error(exc)
    if status is not None:  # e.g. MLflow's schema enforcement: the input, not the server
        return JSONResponse({"error": "BAD_REQUEST", "detail": str(exc)}, status)
    if isinstance(exc, TimeoutError):
        return JSONResponse(
            {"error": "TIMEOUT", "detail": f"{where} did not finish within its timeout"}, 504
        )
    error_id = uuid.uuid4().hex[:16]
    logger.error("error_id=%s unhandled error in %s", error_id, where or "request", exc_info=exc)
    return JSONResponse(
        {
            "error": "INTERNAL_ERROR",
            "detail": f"{type(exc).__name__} in {where or 'request'}; see the server log",
            "error_id": error_id,
        },
        500,
    )


def _foreign_client_error(exc: BaseException) -> int | None:
    """The 4xx status a library's own error carries (MLflow's MlflowException), if any."""
    getter = getattr(exc, "get_http_status_code", None)
    if getter is None or type(exc).__module__.split(".")[0] != "mlflow":
        return None
    try:
        status = int(getter())
    except Exception:
        return None
    return status if 400 <= status < 500 else None


async def read_body(request: Request, limit: int) -> bytes:
    """Read the whole body, refusing more than ``limit`` bytes (413) without buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidArgument(f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {declared} bytes is over the {limit}-byte limit"
            )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # later request.body()/form() calls reuse these bytes
    return body


class AppState:
    """What the routes share: settings, readiness, metrics."""

    def __init__(self, service: Service, settings: ServeSettings) -> None:
        self.service = service
        self.settings = settings
        self.ready = False
        self.metrics = ServerMetrics(service)


def api_endpoint(api: API, state: AppState) -> Callable[[Request], Awaitable[Response]]:
    limit = state.settings.max_body_size
    timeout = state.settings.api_timeout_s
    where = f"API {api.name!r}"

    async def endpoint(request: Request) -> Response:
        try:
            await read_body(request, limit)
            value = await api.input.from_request(request)
            result = await asyncio.wait_for(api.call(value), timeout)
            return api.output.to_response(result, accept=request.headers.get("accept"))
        except Exception as exc:
            return error_response(exc, where=where)

    return endpoint


def _health_routes(state: AppState) -> list[BaseRoute]:
    async def livez(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if state.ready:
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", 503)

    async def metrics(request: Request) -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    return [
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/healthz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def _docs_routes(service: Service, extra_paths: dict[str, Any]) -> list[BaseRoute]:
    from tiffin.openapi import openapi_spec, swagger_assets_dir, swagger_page

    spec_bytes: list[bytes] = []

    async def docs_json(request: Request) -> Response:
        if not spec_bytes:
            spec_bytes.append(orjson.dumps(openapi_spec(service, extra_paths)))
        return Response(spec_bytes[0], media_type="application/json")

    async def index(request: Request) -> Response:
        return HTMLResponse(swagger_page(service.name))

    routes: list[BaseRoute] = [
        Route("/docs.json", docs_json, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Route("/docs", index, methods=["GET"]),
    ]
    assets = swagger_assets_dir()
    if assets is not None:
        routes.append(Mount("/static/swagger-ui", app=StaticFiles(directory=assets)))
    return routes


async def _call_hook(hook: Callable[[], Any]) -> None:
    result = hook()
    if asyncio.iscoroutine(result):
        await result


def build_app(service: Service, settings: ServeSettings | None = None) -> Starlette:
    """The ASGI app for ``service``; runners load in its lifespan (start-up)."""
    settings = settings or ServeSettings()
    for name, overrides in settings.runners.items():
        runner = next((r for r in service.runners if r.name == name), None)
        if runner is None:
            raise InvalidArgument(
                f"settings name runner {name!r}, but service {service.name!r} has runners "
                f"{[r.name for r in service.runners]}"
            )
        runner.configure(**overrides.model_dump(exclude_none=True))
    state = AppState(service, settings)
    routes: list[BaseRoute] = [
        Route(api.route, api_endpoint(api, state), methods=["POST"], name=api.name)
        for api in service.apis.values()
    ]
    extra_paths: dict[str, Any] = {}
    from tiffin.mlflow_protocol import mlflow_routes

    mlflow = mlflow_routes(service, state)
    if mlflow is not None:
        clash = sorted(a.route for a in service.apis.values() if a.route in MLFLOW_ROUTES)
        if clash:
            raise InvalidArgument(
                f"service {service.name!r} serves an MLflow model, so it answers MLflow's "
                f"routes {sorted(MLFLOW_ROUTES)}; rename the API route(s) {clash}"
            )
        mlflow_route_list, extra_paths = mlflow
        routes += mlflow_route_list
    routes += _health_routes(state)
    routes += _docs_routes(service, extra_paths)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = time.perf_counter()
        for runner in service.runners:
            if not runner.is_initialized:
                await asyncio.to_thread(runner.init_local)
        for hook in service.startup_hooks:
            await _call_hook(hook)
        state.ready = True
        logger.info(
            "service %r ready in %.2fs: %d API(s), runners %s",
            service.name,
            time.perf_counter() - started,
            len(service.apis),
            [r.name for r in service.runners],
        )
        try:
            yield
        finally:
            state.ready = False
            for hook in service.shutdown_hooks:
                try:
                    await _call_hook(hook)
                except Exception:
                    logger.exception("shutdown hook %r failed", hook)
            for runner in service.runners:
                runner.destroy()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.tiffin = state
    app.add_middleware(AccessLogMiddleware, state=state)
    return app


class AccessLogMiddleware:
    """Pure ASGI: one structured log line and one metrics observation per HTTP request."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.known = {a.route for a in state.service.apis.values()} | MLFLOW_ROUTES | {
            "/livez",
            "/readyz",
            "/healthz",
            "/metrics",
            "/docs.json",
            "/",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            path = scope["path"]
            route = path if path in self.known else "<other>"
            self.state.metrics.observe_request(route, scope["method"], status, elapsed)
            if self.state.settings.access_log and access_logger.isEnabledFor(logging.INFO):
                access_logger.info(
                    "%s",
                    orjson.dumps(
                        {
                            "method": scope["method"],
                            "path": path,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                            "client": (scope.get("client") or ("", 0))[0],
                        }
                    ).decode(),
                )
