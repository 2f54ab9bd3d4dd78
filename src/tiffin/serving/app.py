"""A Service as an ASGI application: API routes, health, metrics, OpenAPI, Swagger UI.

Only this module (and the CLI) turns a :class:`~tiffin.exceptions.TiffinError` into a response:
every error is JSON ``{"error": CODE, "detail": message}`` with the error's HTTP status (MLflow's
``{"error_code", "message"}`` on MLflow's routes); a server-side failure is a 5xx whose body
carries an ``error_id`` that is also in the log, next to the traceback.

Runners load in the background once the server listens: ``/livez`` answers at once, ``/readyz``
and the APIs answer 503 until every runner is loaded and the start-up hooks have run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tiffin.config import ServeSettings
from tiffin.exceptions import (
    InvalidArgument,
    Overloaded,
    PayloadTooLarge,
    RunnerError,
    TiffinError,
)
from tiffin.serving.access_log import ERROR_ID_KEY, AccessLogMiddleware, record_access
from tiffin.serving.deadlines import deadline as request_deadline
from tiffin.serving.metrics import ServerMetrics
from tiffin.serving.service import API, MLFLOW_ROUTES, Service

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

logger = logging.getLogger("tiffin.server")
_HEALTH_ROUTES = ("/livez", "/readyz", "/healthz", "/metrics")
_DOCS_ROUTES = ("/docs.json", "/", "/docs")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def new_error_id() -> str:
    return uuid.uuid4().hex[:16]


def log_server_error(exc: BaseException, where: str, scope: Scope | None = None) -> str:
    """Log ``exc`` with its traceback under a fresh error id, and return the id."""
    error_id = new_error_id()
    logger.error("error_id=%s %s failed", error_id, where or "request", exc_info=exc)
    if scope is not None:
        scope[ERROR_ID_KEY] = error_id
    return error_id


class Expired(Exception):
    """The request ran past its API's timeout (504)."""

    def __init__(self, where: str, seconds: float) -> None:
        super().__init__(f"{where} did not finish within its {seconds:g} s timeout")


def error_response(exc: BaseException, *, where: str = "", scope: Scope | None = None) -> Response:
    """The JSON response for an error raised while handling a request."""
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


async def read_body(request: Request, limit: int) -> bytes:
    """Read the whole body, refusing more than ``limit`` bytes (413) without buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidArgument(f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {declared} bytes is over the {limit}-byte limit "
                "(max_body_size, --max-body-size)"
            )
    chunks = []
    size = 0
    receive = request.receive  # the ASGI messages themselves: no async generator per request
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"request body is over the {limit}-byte limit (max_body_size, "
                    "--max-body-size)"
                )
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body  # later request.body()/form()/stream() calls reuse these bytes
    request._stream_consumed = True
    return body


class AppState:
    """What the routes share: settings, readiness, metrics."""

    def __init__(self, service: Service, settings: ServeSettings) -> None:
        self.service = service
        self.settings = settings
        self.ready = False
        self.load_error: BaseException | None = None
        #: called when the runners fail to load (``serve`` sets it to stop the server)
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.metrics = ServerMetrics(service)
        #: routes that answer in MLflow's error shape
        self.mlflow_paths: frozenset[str] = frozenset()

    def api_timeout(self, api: str) -> float:
        # environment variables arrive lower-cased: TIFFIN_APIS__PREDICT__TIMEOUT_S
        override = self.settings.apis.get(api) or self.settings.apis.get(api.lower())
        if override is not None and override.timeout_s is not None:
            return override.timeout_s
        return self.settings.api_timeout_s

    def not_ready(self) -> Response:
        if self.load_error is not None:
            detail = (
                f"the service failed to start ({type(self.load_error).__name__}: "
                f"{self.load_error}); see the server log"
            )
        else:
            detail = "the server is still loading its runners; retry once /readyz answers 200"
        return JSONResponse(
            {"error": "NOT_READY", "detail": detail}, 503, headers={"Retry-After": "1"}
        )


def api_endpoint(api: API, state: AppState) -> Callable[[Request], Awaitable[Response]]:
    limit = state.settings.max_body_size
    timeout = state.api_timeout(api.name)
    where = f"API {api.name!r}"
    decode = api.input.from_request
    call = api.call
    encode = api.output.to_response

    async def endpoint(request: Request) -> Response:
        if not state.ready:
            return state.not_ready()
        try:
            await read_body(request, limit)
            value = await decode(request)
            try:
                async with request_deadline(timeout) as deadline:
                    result = await call(value)
            except TimeoutError as exc:
                if deadline.expired():
                    raise Expired(where, timeout) from exc
                raise
            return encode(result, accept=request.headers.get("accept"))
        except Exception as exc:
            return error_response(exc, where=where, scope=request.scope)

    return endpoint


def _health_routes(state: AppState) -> list[BaseRoute]:
    async def livez(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if state.ready and all(runner.is_ready for runner in state.service.runners):
            return PlainTextResponse("ready\n")
        if state.ready:
            return PlainTextResponse("runner process unavailable\n", 503)
        if state.load_error is not None:
            return PlainTextResponse(f"failed: {state.load_error}\n", 503)
        return PlainTextResponse("loading\n", 503)

    async def metrics(request: Request) -> Response:
        await asyncio.gather(
            *(runner.refresh_remote_stats() for runner in state.service.runners),
            return_exceptions=True,
        )
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    return [
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/healthz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def _docs_routes(service: Service, extra_paths: dict[str, Any]) -> list[BaseRoute]:
    from tiffin.serving.openapi import openapi_spec, swagger_assets_dir, swagger_page

    spec = orjson.dumps(openapi_spec(service, extra_paths))  # built once, and checked at start
    page = swagger_page(service.name)

    async def docs_json(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

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


def build_app(
    service: Service, settings: ServeSettings | None = None, *, load_before_serving: bool = False
) -> Starlette:
    """The ASGI app for ``service``; its runners load when it starts (lifespan).

    By default the app takes connections while they load (health routes answer, the rest 503
    until ready). ``load_before_serving``: start-up ends only once they have loaded, so the
    server takes no connection before then (an API worker beside others that already serve).
    """
    settings = settings or ServeSettings()
    service.apply_settings(settings)
    state = AppState(service, settings)
    routes: list[BaseRoute] = [
        Route(api.route, api_endpoint(api, state), methods=["POST"], name=api.name)
        for api in service.apis.values()
    ]
    extra_paths: dict[str, Any] = {}
    from tiffin.serving.mlflow_protocol import mlflow_routes

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
        state.mlflow_paths = MLFLOW_ROUTES
    routes += _health_routes(state)
    routes += _docs_routes(service, extra_paths)

    async def load() -> None:
        started = time.perf_counter()
        try:
            for runner in service.runners:
                if runner.backend is None:
                    await asyncio.to_thread(runner.init_local)
            for hook in service.startup_hooks:
                await _call_hook(hook)
        except Exception as exc:
            state.load_error = exc
            logger.error("service %r failed to start: %s", service.name, exc, exc_info=exc)
            if state.on_fatal is not None:
                state.on_fatal(exc)
            return
        # What start-up made (frameworks, models: ~10^5 objects) lives as long as the process;
        # out of the collector's generations, a full collection no longer walks it (without
        # this, each one stalled every request for ~100 ms, the p99 of a loaded server).
        gc.freeze()
        state.ready = True
        logger.info(
            "service %r ready in %.2fs: %d API(s), runners %s",
            service.name,
            time.perf_counter() - started,
            len(service.apis),
            [r.name for r in service.runners],
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().create_task(load(), name="tiffin-load-runners")
        if load_before_serving or all(runner.backend is not None for runner in service.runners):
            # nothing slow to load here (runners live in their own processes, or were loaded
            # before), or other workers serve meanwhile: finish starting before taking
            # connections, so no request meets a 503
            await asyncio.shield(loading)
            if load_before_serving and state.load_error is not None:
                # start-up fails (uvicorn exits) before the socket ever listens
                raise RunnerError(f"the service failed to start: {state.load_error}")
        try:
            yield
        finally:
            state.ready = False
            if not loading.done():
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
            for hook in service.shutdown_hooks:
                try:
                    await _call_hook(hook)
                except Exception:
                    logger.exception("shutdown hook %r failed", hook)
            await _close_dispatchers(service)
            for runner in service.runners:
                runner.destroy()
            state.metrics.flush()  # the last half second's requests (files, --workers N)
            logger.info("service %r stopped", service.name)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _http_error_response(request, exc, state)

    async def unhandled(request: Request, exc: Exception) -> Response:
        return error_response(exc, where=f"{request.method} {request.url.path}",
                              scope=request.scope)

    app = _App(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: unhandled},
    )
    app.state.tiffin = state
    hot = _exact_posts(routes)
    _route_exact_posts_first(app, hot)
    if not (settings.cors_origins or settings.api_key):
        # no middleware of the user's choosing to pass through: the short path, see _App
        app.hot, app.hot_state = hot, state
        app.hot_known = _route_paths(routes)
        app.on_http_error, app.on_error = http_error, unhandled
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
        )
    if settings.api_key:
        from tiffin.serving.auth import BearerAuthMiddleware

        app.add_middleware(
            BearerAuthMiddleware, api_key=settings.api_key, protect_docs=settings.auth_metrics
        )
    app.add_middleware(AccessLogMiddleware, state=state, routes=_route_paths(routes))
    return app


_Endpoint = Callable[[Request], Awaitable[Response]]


def _exact_posts(routes: list[BaseRoute]) -> dict[str, tuple[Route, _Endpoint]]:
    """The POST-only routes of fixed paths (the API and MLflow routes) by path."""
    table: dict[str, tuple[Route, _Endpoint]] = {}
    for route in routes:
        if (
            isinstance(route, Route)
            and route.methods == {"POST"}
            and not route.param_convertors
            and asyncio.iscoroutinefunction(route.endpoint)
        ):
            table[route.path] = (route, route.endpoint)
    return table


class _App(Starlette):
    """Starlette, with a short path for the requests that carry the traffic.

    A ``POST`` to an API or MLflow route goes through five layers of ASGI middleware and
    routing before its endpoint runs (uvicorn's proxy headers, Starlette's server-error
    handler, the access log, Starlette's exception handler, the router). When the user has
    configured no middleware (auth, CORS), :attr:`hot` holds those routes, and such a request
    is served here in one step that does what the layers do for it: run the endpoint, turn an
    exception into the same error response through the same handlers, send the response,
    write the access log line and the request metrics. Everything else takes the full stack.
    """

    hot: dict[str, tuple[Route, _Endpoint]] = {}
    hot_state: AppState
    hot_known: frozenset[str]
    on_http_error: Callable[[Request, Exception], Awaitable[Response]]
    on_error: Callable[[Request, Exception], Awaitable[Response]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot and scope["type"] == "http" and scope["method"] == "POST":
            found = self.hot.get(scope["path"])
            if found is not None and not scope.get("root_path"):
                await self._serve(found, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve(
        self, found: tuple[Route, _Endpoint], scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        status = 500
        scope["app"] = self
        scope["router"] = self.router
        scope["route"] = found[0]
        request = Request(scope, receive, send)
        try:
            try:
                response = await found[1](request)
            except HTTPException as exc:
                response = await self.on_http_error(request, exc)
            except Exception as exc:
                response = await self.on_error(request, exc)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            record_access(
                self.hot_state, self.hot_known, scope, status, time.perf_counter() - started
            )


def _route_exact_posts_first(app: Starlette, table: dict[str, tuple[Route, _Endpoint]]) -> None:
    """Send ``POST`` requests for the API and MLflow routes straight to their endpoints.

    Starlette's router tries each route's pattern in turn, then wraps the endpoint in a second
    round of exception handling; for the routes that take the traffic a dictionary lookup of
    the exact path does the same job. Everything else (other methods, other paths, a
    ``root_path``) goes through the router as before, and errors still reach the app's
    exception handlers, which sit outside the router.
    """
    router = app.router
    fallback = router.middleware_stack

    async def exact_first(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            found = table.get(scope["path"])
            if found is not None:
                scope.setdefault("router", router)
                scope["route"] = found[0]
                request = Request(scope, receive, send)
                response = await found[1](request)
                await response(scope, receive, send)
                return
        await fallback(scope, receive, send)

    router.middleware_stack = exact_first


def _route_paths(routes: list[BaseRoute]) -> frozenset[str]:
    return frozenset(r.path for r in routes if isinstance(r, Route))


async def _close_dispatchers(service: Service) -> None:
    """Stop the batching loops this event loop runs, so none is left pending at exit."""
    for runner in service.runners:
        for method in runner.methods.values():
            await method.aclose_dispatchers()


def _http_error_response(request: Request, exc: HTTPException, state: AppState) -> Response:
    """404 and 405 from the router (and the static files) as JSON."""
    path = request.url.path
    if exc.status_code == 404:
        code, detail = "NOT_FOUND", (
            f"no route {request.method} {path}; this server answers "
            + ", ".join(
                f"POST {a.route}" for a in state.service.apis.values()
            )
            + (", " if state.service.apis else "")
            + "GET /livez, /readyz, /metrics, /docs.json"
        )
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        code, detail = "METHOD_NOT_ALLOWED", (
            f"{request.method} is not allowed on {path}; use {allowed or 'another method'}"
        )
    else:
        code, detail = "HTTP_ERROR", str(exc.detail)
    if path in state.mlflow_paths:
        from tiffin.serving.mlflow_protocol import mlflow_error

        mlflow_code = "ENDPOINT_NOT_FOUND" if exc.status_code == 404 else "BAD_REQUEST"
        return mlflow_error(exc.status_code, mlflow_code, detail, dict(exc.headers or {}))
    return JSONResponse({"error": code, "detail": detail}, exc.status_code, headers=exc.headers)
