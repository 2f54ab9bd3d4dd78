"""A Service as an ASGI application: its APIs, and the server's own routes from the route table
(:mod:`~tiffin.serving.routes`): health, metrics, the OpenAPI document, Swagger UI, MLflow's
scoring protocol.

* A ``POST`` to an API route or to ``/invocations`` is answered by :class:`TiffinApp`
  itself, in one step: the API key is checked (when one is configured), then CORS applies
  (starlette's CORSMiddleware around what follows, when origins are configured), then the
  route's request pipeline (:mod:`~tiffin.serving.pipeline`) answers; a 401 carries no CORS
  headers.
* Every other request (the GET routes, Swagger UI's files, CORS preflights, 404 and 405, any
  request under a ``root_path``) and the lifespan go through Starlette: the same checks as
  middleware, in the same order, then the router, whose POST routes run the same pipelines.
* Either way, each request is one access log line and one metrics observation
  (:func:`~tiffin.serving.access_log.record_access`), and an error is a response in its
  route's shape (:mod:`~tiffin.serving.errors`).
* Runners load in the background once the server listens: ``/livez`` answers at once,
  ``/readyz`` and the APIs answer 503 until every runner is loaded (a PyTorch runner's
  warm-up batch included) and the start-up hooks have run. A runner asked for a GPU this
  machine does not have is refused before the server starts. With ``load_before_serving``,
  or when every runner lives in its own process, start-up waits for them instead.
* A start-up failure is logged as the user's own frames (:func:`~tiffin.serving.errors.
  describe_failure`); what the server answers (``/readyz``, the APIs' 503) says only that it
  failed: an open route must not show paths or exception text.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from tiffin.config import ServeSettings
from tiffin.exceptions import RunnerError
from tiffin.runner.runner import check_runner_device
from tiffin.serving.access_log import AccessLogMiddleware, record_access
from tiffin.serving.auth import BearerAuthMiddleware, BearerKey
from tiffin.serving.errors import (
    JSONResponse,
    describe_failure,
    error_response,
    failure_line,
    http_error_response,
)
from tiffin.serving.metrics import ServerMetrics
from tiffin.serving.pipeline import InFlight, Respond, pipeline
from tiffin.serving.routes import MLFLOW_ROUTES, SWAGGER_STATIC, served
from tiffin.serving.service import API, Service

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AppState", "TiffinApp", "api_pipeline", "build_app"]

logger = logging.getLogger("tiffin.server")
_Endpoint = Callable[[Request], Awaitable[Response]]
#: where the short path leaves a response's status for the access log
_STATUS_KEY = "tiffin.status"


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
        #: requests in the pipelines now (max_concurrent_requests)
        self.in_flight = InFlight()
        #: run first when the app stops, while it still answers: servers of the app's own that
        #: take requests past the host's server (tiffin.ray.direct) stop listening here
        self.stop_first: list[Callable[[], Any]] = []

    def api_timeout(self, api: str) -> float:
        # environment variables arrive lower-cased: TIFFIN_APIS__PREDICT__TIMEOUT_S
        override = self.settings.apis.get(api) or self.settings.apis.get(api.lower())
        if override is not None and override.timeout_s is not None:
            return override.timeout_s
        return self.settings.api_timeout_s

    def not_ready(self) -> Response:
        if self.load_error is not None:
            detail = "the service failed to start; the server log says why"
        else:
            detail = "the server is still loading its runners; retry once /readyz answers 200"
        return JSONResponse(
            {"error": "NOT_READY", "detail": detail}, 503, headers={"Retry-After": "1"}
        )


def api_pipeline(api: API, state: AppState) -> Respond:
    """An API's request pipeline, in tiffin's error shape."""
    return pipeline(
        state,
        where=f"API {api.name!r}",
        decode=api.input.decode_request,
        call=api.call,
        encode=api.output.to_response,
        timeout=state.api_timeout(api.name),
        not_ready=state.not_ready,
        errors=error_response,
        blocking=not api.is_async,
    )


def _endpoint(respond: Respond) -> _Endpoint:
    """A pipeline as a Starlette endpoint (the router's way to the POST routes)."""

    async def endpoint(request: Request) -> Response:
        return await respond(request.scope, request.receive)

    return endpoint


def _own_endpoints(
    state: AppState, invocations: dict[str, Any] | None
) -> dict[str, _Endpoint]:
    """The endpoints of the table's GET routes (MLflow's aside), by path."""
    from tiffin.serving.openapi import openapi_spec, swagger_page

    spec = orjson.dumps(openapi_spec(state.service, invocations))  # built once, checked at start
    page = swagger_page(state.service.name)

    async def livez(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if state.ready and all(runner.is_ready for runner in state.service.runners):
            return PlainTextResponse("ready\n")
        if state.ready:
            return PlainTextResponse("runner process unavailable\n", 503)
        if state.load_error is not None:
            return PlainTextResponse("failed to start; see the server log\n", 503)
        return PlainTextResponse("loading\n", 503)

    async def metrics(request: Request) -> Response:
        await asyncio.gather(
            *(runner.refresh_remote_stats() for runner in state.service.runners),
            return_exceptions=True,
        )
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    async def docs_json(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    return {"/livez": livez, "/readyz": readyz, "/healthz": readyz, "/metrics": metrics,
            "/docs.json": docs_json, "/": index, "/docs": index}  # fmt: skip


async def _call_hook(hook: Callable[[], Any]) -> None:
    result = hook()
    if asyncio.iscoroutine(result):
        await result


def build_app(
    service: Service, settings: ServeSettings | None = None, *, load_before_serving: bool = False
) -> TiffinApp:
    """The ASGI app for ``service``; its runners load when it starts (lifespan).

    By default the app takes connections while they load (health routes answer, the rest 503
    until ready). ``load_before_serving``: start-up ends only once they have loaded, so the
    server takes no connection before then (an API worker beside others that already serve).
    """
    settings = settings or ServeSettings()
    service.apply_settings(settings)
    for runner in service.runners:
        if runner.backend is None:  # loaded here: a GPU it cannot have is refused now, in one
            check_runner_device(runner)  # line, not at the first request
    state = AppState(service, settings)
    posts = {api.route: api_pipeline(api, state) for api in service.apis.values()}
    from tiffin.serving.mlflow_protocol import mlflow_routes

    mlflow = mlflow_routes(service, state)
    endpoints = _own_endpoints(state, mlflow.operation if mlflow is not None else None)
    if mlflow is not None:
        posts.update(mlflow.pipelines)
        endpoints.update(mlflow.endpoints)
        state.mlflow_paths = MLFLOW_ROUTES
    routes: list[BaseRoute] = [
        Route(api.route, _endpoint(posts[api.route]), methods=["POST"], name=api.name)
        for api in service.apis.values()
    ]
    for own in served(mlflow=mlflow is not None):
        endpoint = _endpoint(posts[own.path]) if own.method == "POST" else endpoints[own.path]
        routes.append(Route(own.path, endpoint, methods=[own.method]))
    from tiffin.serving.openapi import swagger_assets_dir

    assets = swagger_assets_dir()
    if assets is not None:
        from starlette.staticfiles import StaticFiles

        routes.append(Mount(SWAGGER_STATIC, app=StaticFiles(directory=assets)))

    async def load() -> None:
        from tiffin.runner.local import LocalBackend

        started = time.perf_counter()
        try:
            for runner in service.runners:
                if runner.backend is None:
                    await asyncio.to_thread(runner.init_local)
                if isinstance(runner.backend, LocalBackend):  # a lone request's model inline
                    runner.backend.alone = state.in_flight.alone
            for hook in service.startup_hooks:
                await _call_hook(hook)
        except Exception as exc:
            state.load_error = exc
            logger.error("service %r failed to start: %s", service.name, describe_failure(exc))
            logger.debug("service %r: the whole traceback", service.name, exc_info=exc)
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
                raise RunnerError(
                    f"the service failed to start: {failure_line(state.load_error)}"
                )
        try:
            yield
        finally:
            for stop in state.stop_first:
                try:
                    await _call_hook(stop)
                except Exception:
                    logger.exception("stopping %r failed", stop)
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
        return http_error_response(request, exc, state)

    async def unhandled(request: Request, exc: Exception) -> Response:
        return error_response(exc, where=f"{request.method} {request.url.path}",
                              scope=request.scope)

    return TiffinApp(
        state,
        posts,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: unhandled},
    )


class TiffinApp(Starlette):
    """Starlette, answering the POSTs to the API routes and ``/invocations`` itself.

    ``posts`` maps those paths to their pipelines. Such a request (with no ``root_path``) is
    served in one step, see the module docstring; everything else is Starlette's, with the
    access log, auth and CORS as middleware.
    """

    def __init__(
        self, state: AppState, posts: dict[str, Respond], routes: list[BaseRoute], **starlette: Any
    ) -> None:
        settings = state.settings
        self.posts = posts
        self._tiffin = state
        #: every route's path, for the metrics' route label (any other path is "<other>")
        self.known = frozenset(r.path for r in routes if isinstance(r, Route))
        self.key = BearerKey(settings.api_key, settings.auth_metrics) if settings.api_key else None
        #: the POST paths that need the key
        self.guarded = frozenset(
            path for path in posts if self.key is not None and not self.key.is_open(path)
        )
        serve: ASGIApp = self._respond
        stack = [Middleware(AccessLogMiddleware, state=state, routes=self.known)]
        if self.key is not None:
            stack.append(Middleware(BearerAuthMiddleware, key=self.key))
        if settings.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            cors: dict[str, Any] = {
                "allow_origins": list(settings.cors_origins),
                "allow_methods": ["GET", "POST"],
                "allow_headers": ["Authorization", "Content-Type", "Accept"],
            }
            serve = CORSMiddleware(serve, **cors)
            stack.append(Middleware(CORSMiddleware, **cors))
        self._serve = serve
        super().__init__(routes=routes, middleware=stack, **starlette)
        self.state.tiffin = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in self.posts
            and not scope.get("root_path")
        ):
            await self._post(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            send = self._lifespan_send(send)
        await super().__call__(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        """``send`` with a failed start-up said in one line (Starlette would send uvicorn the
        whole traceback of tiffin's and Starlette's frames; the log has the user's already)."""
        state = self._tiffin

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and state.load_error is not None:
                message = {**message, "message": "the service failed to start: "
                           + failure_line(state.load_error)}
            await send(message)

        return lifespan_send

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        scope["app"] = self
        try:
            key = self.key
            if key is not None and scope["path"] in self.guarded and not key.authorized(scope):
                scope[_STATUS_KEY] = 401
                await key.refuse(send)
            else:
                await self._serve(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - started
            record_access(self._tiffin, self.known, scope, scope.get(_STATUS_KEY, 500), elapsed)

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.posts[scope["path"]](scope, receive)
        except Exception as exc:  # raised before the pipeline's own handling (a broken setup)
            response = error_response(exc, where=f"POST {scope['path']}", scope=scope)
        scope[_STATUS_KEY] = response.status_code
        await response(scope, receive, send)


async def _close_dispatchers(service: Service) -> None:
    """Stop the batching loops this event loop runs, so none is left pending at exit."""
    for runner in service.runners:
        for method in runner.methods.values():
            await method.aclose_dispatchers()
