"""``tiffin.Service``: the page's ``Service(name, runners=[...])`` and ``@svc.api``, hooks, and
runners that are initialised when the server starts (in process, through the ASGI app)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette

import tiffin
from tests.test_serving_support import asgi_client
from tiffin.exceptions import InvalidArgument
from tiffin.io import JSON, NumpyNdarray, Text
from tiffin.serving.app import build_app
from tiffin.serving.service import MLFLOW_ROUTES, RESERVED_ROUTES, Service


class Doubler(tiffin.Runnable):
    loaded = 0

    def __init__(self) -> None:
        type(self).loaded += 1

    @tiffin.Runnable.method(batchable=True)
    def predict(self, x: Any) -> Any:
        return x * 2


class Broken(tiffin.Runnable):
    def __init__(self) -> None:
        raise RuntimeError("weights file is corrupt")

    @tiffin.Runnable.method
    def predict(self, x: Any) -> Any:
        return x


# -- construction --------------------------------------------------------------------------


def test_service_takes_runners_as_on_the_page() -> None:
    runner = tiffin.Runner(Doubler, name="doubler")
    svc = tiffin.Service("mlflow_pytorch_mnist", runners=[runner])
    assert svc.name == "mlflow_pytorch_mnist"
    assert svc.runners == [runner]
    assert svc.apis == {}
    assert repr(svc) == "Service(name='mlflow_pytorch_mnist', apis=[], runners=['doubler'])"
    assert tiffin.Service("positional_only_name").runners == []


def test_service_rejects_what_is_not_a_runner_and_twin_names() -> None:
    with pytest.raises(InvalidArgument, match=r"tiffin\.Runner objects, got str"):
        Service("svc", runners=["doubler"])  # type: ignore[list-item]
    one, two = tiffin.Runner(Doubler, name="same"), tiffin.Runner(Doubler, name="same")
    with pytest.raises(InvalidArgument, match="two runners named 'same'"):
        Service("svc", runners=[one, two])
    with pytest.raises(InvalidArgument):
        Service("no spaces allowed")


def test_api_defaults_to_the_function_name_and_detects_async() -> None:
    svc = Service("svc")

    @svc.api(input=JSON(), output=JSON())
    def predict(obj: Any) -> Any:
        """Predict things.

        More words."""
        return obj

    @svc.api(input=Text(), output=Text(), route="v2/echo", name="echo")
    async def echo_async(text: str) -> str:
        return text

    assert predict({"a": 1}) == {"a": 1}  # the decorator hands the function back
    api = svc.apis["predict"]
    assert (api.route, api.is_async) == ("/predict", False)
    assert api.doc == "Predict things.\n\nMore words."
    echo = svc.apis["echo"]
    assert (echo.route, echo.is_async) == ("/v2/echo", True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"route": "/livez"}, "answers itself"),
        ({"route": "/metrics"}, "answers itself"),
        ({"route": "/"}, "answers itself"),
        ({"route": "/a b"}, "not a valid path"),
        ({"route": "/../etc"}, "not a valid path"),
        ({"name": "not-an-identifier"}, "Python identifier"),
    ],
)
def test_api_rejects_bad_routes_and_names(kwargs: dict[str, str], message: str) -> None:
    svc = Service("svc")
    with pytest.raises(InvalidArgument, match=message):
        svc.api(input=JSON(), output=JSON(), **{"name": "x", **kwargs})(lambda x: x)


def test_api_rejects_twins_and_non_descriptors() -> None:
    svc = Service("svc")
    svc.api(input=JSON(), output=JSON(), name="a")(lambda x: x)
    with pytest.raises(InvalidArgument, match="already has an API 'a'"):
        svc.api(input=JSON(), output=JSON(), name="a")(lambda x: x)
    with pytest.raises(InvalidArgument, match="two APIs on route /a"):
        svc.api(input=JSON(), output=JSON(), name="b", route="/a")(lambda x: x)
    with pytest.raises(InvalidArgument, match=r"input= must be a tiffin\.io descriptor"):
        svc.api(input=dict, output=JSON())  # type: ignore[arg-type]
    assert {"/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/"} <= RESERVED_ROUTES
    assert {"/invocations", "/ping", "/health", "/version"} == MLFLOW_ROUTES <= RESERVED_ROUTES


@pytest.mark.parametrize(
    "name",
    ["health", "ping", "version", "livez", "readyz", "healthz", "metrics", "invocations", "docs"],
)
def test_an_api_named_or_routed_like_a_route_of_the_server_is_refused_when_defined(
    name: str,
) -> None:
    """MLflow's routes too, on a service that serves no MLflow model: an API's validity must
    not depend on the model behind it, and the refusal comes where the API is written."""
    svc = Service("svc")
    with pytest.raises(InvalidArgument, match=f"/{name}") as named:
        svc.api(input=JSON(), output=JSON(), name=name)(lambda x: x)
    assert "pass name= or route=" in str(named.value)
    with pytest.raises(InvalidArgument, match=f"route /{name} is one the tiffin server answers"):
        svc.api(input=JSON(), output=JSON(), name="other", route=f"/{name}")(lambda x: x)
    with pytest.raises(InvalidArgument, match=f"'{name}' is the name of the server's own route"):
        svc.api(input=JSON(), output=JSON(), name=name, route="/elsewhere")(lambda x: x)
    with pytest.raises(InvalidArgument, match="Swagger UI"):
        svc.api(input=JSON(), output=JSON(), name="x", route="/static/swagger-ui/x")(lambda x: x)
    assert svc.apis == {}


def test_sync_apis_run_off_the_event_loop_thread() -> None:
    svc = Service("svc")
    seen: dict[str, str] = {}

    @svc.api(input=JSON(), output=JSON())
    def where(obj: Any) -> Any:
        seen["sync"] = threading.current_thread().name
        return obj

    @svc.api(input=JSON(), output=JSON())
    async def where_async(obj: Any) -> Any:
        seen["async"] = threading.current_thread().name
        return obj

    async def main() -> None:
        await svc.apis["where"].call(1)
        await svc.apis["where_async"].call(1)
        seen["loop"] = threading.current_thread().name

    asyncio.run(main())
    assert seen["async"] == seen["loop"]
    assert seen["sync"] != seen["loop"]


def test_asgi_app_is_a_starlette_app() -> None:
    assert isinstance(Service("svc").asgi_app, Starlette)


# -- start-up and shutdown -----------------------------------------------------------------


@pytest.mark.anyio
async def test_runners_initialise_when_the_server_starts_then_hooks_run_in_order() -> None:
    runner = tiffin.Runner(Doubler, name="doubler")
    svc = Service("svc", runners=[runner])
    events: list[str] = []

    @svc.on_startup
    def first() -> None:
        events.append(f"sync startup, runner initialised={(runner.backend is not None)}")

    @svc.on_startup
    async def second() -> None:
        events.append("async startup")

    @svc.on_shutdown
    async def bye() -> None:
        events.append(f"shutdown, runner initialised={(runner.backend is not None)}")

    @svc.api(input=NumpyNdarray(dtype="float64"), output=NumpyNdarray())
    def predict(arr: np.ndarray) -> np.ndarray:
        return runner.predict.run(arr)  # the page's blocking call, from a sync API

    app = build_app(svc)
    loaded = Doubler.loaded
    assert not (runner.backend is not None)  # building the app loads nothing
    async with asgi_client(app) as client:
        assert Doubler.loaded == loaded + 1
        assert (await client.post("/predict", json=[1, 2])).json() == [2.0, 4.0]
        assert events == ["sync startup, runner initialised=True", "async startup"]
    assert events[-1] == "shutdown, runner initialised=True"  # hooks before the release
    assert not (runner.backend is not None)


@pytest.mark.anyio
async def test_a_runner_that_fails_to_load_leaves_the_server_unready_and_logs_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/readyz and the APIs say only that the start failed (they are open routes: no paths,
    no exception text); the log says why, with the user's own frames."""
    svc = Service("svc", runners=[tiffin.Runner(Broken, name="broken")])
    svc.api(input=JSON(), output=JSON(), name="predict")(lambda x: x)
    fatal: list[BaseException] = []
    app = build_app(svc)
    app.state.tiffin.on_fatal = fatal.append
    async with asgi_client(app, ready=False) as client:
        assert (await client.get("/livez")).status_code == 200
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.text) == (503, "failed to start; see the server log\n")
        response = await client.post("/predict", json=[1])
        assert response.status_code == 503
        assert response.json() == {
            "error": "NOT_READY", "detail": "the service failed to start; the server log says why"
        }
    assert [str(exc) for exc in fatal] == ["weights file is corrupt"]
    logged = next(r.getMessage() for r in caplog.records if "failed to start" in r.getMessage())
    assert "RuntimeError: weights file is corrupt" in logged
    assert f'File "{__file__}"' in logged and "in __init__" in logged
    assert "/tiffin/" not in logged and "asyncio" not in logged


@pytest.mark.anyio
async def test_a_failing_startup_hook_also_fails_the_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = Service("svc")

    @svc.on_startup
    async def boom() -> None:
        raise ValueError("no database at postgres://admin:hunter2@db")

    async with asgi_client(build_app(svc), ready=False) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "hunter2" not in ready.text
    logged = next(r.getMessage() for r in caplog.records if "failed to start" in r.getMessage())
    assert "ValueError: no database" in logged and "in boom" in logged


@pytest.mark.anyio
async def test_a_start_that_fails_before_serving_tells_the_server_in_one_line() -> None:
    """An API worker loads before it listens: its failed start reaches uvicorn as one line
    with the user's file and line, not Starlette's traceback of tiffin's frames."""
    svc = Service("svc", runners=[tiffin.Runner(Broken, name="broken")])
    app = build_app(svc, load_before_serving=True)
    sent: list[Any] = []
    messages = [{"type": "lifespan.startup"}]

    async def receive() -> Any:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(30)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    with pytest.raises(Exception, match="the service failed to start"):
        await asyncio.wait_for(app(scope, receive, send), 10)
    [failed] = sent
    assert failed["type"] == "lifespan.startup.failed"
    assert failed["message"].startswith(
        "the service failed to start: RuntimeError: weights file is corrupt ("
    )
    assert f"{__file__}, line " in failed["message"] and "\n" not in failed["message"]
