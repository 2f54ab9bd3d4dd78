"""``tiffin.Service``: named APIs over runners, the unit ``tiffin serve`` serves.

An API is ``POST <route>``; its route is a plain path that no other API of the service and
none of the server's own routes takes -- any route of the table
(:data:`~tiffin.serving.routes.RESERVED_ROUTES`), MLflow's included, whether or not this
service will answer them, and nothing under Swagger UI's files -- and its name is none of
those routes' names either (``health``, ``metrics``, ``invocations``, ...): refused when it
is defined.

A sync API function runs in a worker thread that the request's deadline can abandon: past
it, the request answers 504 at once, whatever the thread is doing (a blocking
``runner.<method>.run()`` in it gives up at the same deadline).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument
from tiffin.runner.runner import Runner
from tiffin.serving.routes import MLFLOW_ROUTES, RESERVED_NAMES, RESERVED_ROUTES, SWAGGER_STATIC
from tiffin.tag import validate_part

if TYPE_CHECKING:
    from tiffin.config import ServeSettings
    from tiffin.io import IODescriptor
    from tiffin.store.models import Model

__all__ = ["API", "MLFLOW_ROUTES", "RESERVED_ROUTES", "Hook", "Service"]

_ROUTE_RE = re.compile(r"^/[A-Za-z0-9_./~-]*$")

Hook = Callable[[], Any] | Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class API:
    """One endpoint: a function, how its input is decoded and its output encoded."""

    name: str
    route: str
    func: Callable[..., Any]
    input: IODescriptor
    output: IODescriptor
    is_async: bool
    doc: str

    async def call(self, value: Any) -> Any:
        """Call the function; a Multipart input's parts arrive as keyword arguments."""
        args, kwargs = ((), value) if self.parts_as_kwargs else ((value,), {})
        if self.is_async:
            return await self.func(*args, **kwargs)
        import functools

        from anyio import to_thread

        return await to_thread.run_sync(
            functools.partial(self.func, *args, **kwargs), abandon_on_cancel=True
        )

    @property
    def parts_as_kwargs(self) -> bool:
        return type(self.input).__name__ == "Multipart"


def _reserved(name: str, route: str) -> str | None:
    """Why an API may not have ``name`` or ``route`` (see the module docstring), or None."""
    if route in RESERVED_ROUTES:
        return f"route {route} is one the tiffin server answers itself"
    if name in RESERVED_NAMES:
        return f"{name!r} is the name of the server's own route /{name}"
    if route == SWAGGER_STATIC or route.startswith(SWAGGER_STATIC + "/"):
        return f"route {route} is where the server keeps Swagger UI's files"
    return None


class Service:
    """A named set of APIs and the runners they call.

    ``tiffin.Service("name", runners=[runner, ...])`` then ``@svc.api(input=..., output=...)``.
    The server initialises every runner at start-up and releases it at shutdown.
    """

    def __init__(
        self,
        name: str,
        *,
        runners: Sequence[Runner] | None = None,
        models: Sequence[Model] | None = None,
    ) -> None:
        self.name = validate_part(name, "service name")
        self.runners: list[Runner] = []
        seen: set[str] = set()
        for runner in runners or []:
            if not isinstance(runner, Runner):
                raise InvalidArgument(
                    f"Service {self.name!r}: runners must be tiffin.Runner objects, "
                    f"got {type(runner).__name__}"
                )
            if runner.name in seen:
                raise InvalidArgument(
                    f"Service {self.name!r} has two runners named {runner.name!r}; "
                    "pass name= to .to_runner() to tell them apart"
                )
            seen.add(runner.name)
            self.runners.append(runner)
        self.models = list(models or [])
        self.apis: dict[str, API] = {}
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []

    def api(
        self,
        *,
        input: IODescriptor,
        output: IODescriptor,
        route: str | None = None,
        name: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a function (sync or async) as ``POST /<name>``."""
        from tiffin.io import IODescriptor

        for role, descriptor in (("input", input), ("output", output)):
            if not isinstance(descriptor, IODescriptor):
                raise InvalidArgument(
                    f"{role}= must be a tiffin.io descriptor such as tiffin.io.NumpyNdarray(), "
                    f"got {type(descriptor).__name__}"
                )

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            api_name = name or func.__name__
            if not api_name.isidentifier():
                raise InvalidArgument(f"API name {api_name!r} must be a Python identifier")
            api_route = route or f"/{api_name}"
            if not api_route.startswith("/"):
                api_route = "/" + api_route
            if not _ROUTE_RE.match(api_route) or ".." in api_route:
                raise InvalidArgument(f"API {api_name!r}: route {api_route!r} is not a valid path")
            reserved = _reserved(api_name, api_route)
            if reserved:
                raise InvalidArgument(
                    f"API {api_name!r}: {reserved}; the server's own routes are "
                    f"{', '.join(sorted(RESERVED_ROUTES))} (MLflow's among them, answered when a "
                    "service serves an MLflow model); pass name= or route= to call it something "
                    "else"
                )
            if api_name in self.apis:
                raise InvalidArgument(f"Service {self.name!r} already has an API {api_name!r}")
            if any(a.route == api_route for a in self.apis.values()):
                raise InvalidArgument(f"Service {self.name!r}: two APIs on route {api_route}")
            self.apis[api_name] = API(
                name=api_name,
                route=api_route,
                func=func,
                input=input,
                output=output,
                is_async=inspect.iscoroutinefunction(func),
                doc=inspect.getdoc(func) or "",
            )
            return func

        return register

    def on_startup(self, func: Hook) -> Hook:
        """Run ``func`` (sync or async) once the runners are loaded, before serving."""
        self.startup_hooks.append(func)
        return func

    def on_shutdown(self, func: Hook) -> Hook:
        """Run ``func`` (sync or async) when the server stops, before runners are released."""
        self.shutdown_hooks.append(func)
        return func

    def apply_settings(self, settings: ServeSettings) -> None:
        """Apply the server's per-runner and per-API settings; a name the service does not
        have is an error naming the ones it has."""
        for name, overrides in settings.runners.items():
            runner = next((r for r in self.runners if r.name == name), None)
            if runner is None:
                raise InvalidArgument(
                    f"the settings configure runner {name!r}, but service {self.name!r} has "
                    f"runners {[r.name for r in self.runners]}"
                )
            runner.apply_settings(overrides)
        by_lower = {name.lower(): name for name in self.apis}
        unknown = sorted(
            name for name in settings.apis if name not in self.apis and name not in by_lower
        )
        if unknown:
            raise InvalidArgument(
                f"the settings configure API(s) {unknown}, but service {self.name!r} has APIs "
                f"{sorted(self.apis)}"
            )

    @property
    def asgi_app(self) -> Any:
        """A Starlette application serving this service (default settings)."""
        from tiffin.serving.app import build_app

        return build_app(self)

    def __repr__(self) -> str:
        runners = [r.name for r in self.runners]
        return f"Service(name={self.name!r}, apis={sorted(self.apis)}, runners={runners})"
