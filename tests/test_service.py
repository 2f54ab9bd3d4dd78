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
        ({"route": "/livez"}, "reserved"),
        ({"route": "/metrics"}, "reserved"),
        ({"route": "/"}, "reserved"),
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
    assert {"/invocations", "/ping", "/health", "/version"} == MLFLOW_ROUTES


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
async def test_a_runner_that_fails_to_load_leaves_the_server_unready_and_says_why() -> None:
    svc = Service("svc", runners=[tiffin.Runner(Broken, name="broken")])
    svc.api(input=JSON(), output=JSON(), name="predict")(lambda x: x)
    fatal: list[BaseException] = []
    app = build_app(svc)
    app.state.tiffin.on_fatal = fatal.append
    async with asgi_client(app, ready=False) as client:
        assert (await client.get("/livez")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "weights file is corrupt" in ready.text
        response = await client.post("/predict", json=[1])
        assert response.status_code == 503
        assert "weights file is corrupt" in response.json()["detail"]
    assert [str(exc) for exc in fatal] == ["weights file is corrupt"]


@pytest.mark.anyio
async def test_a_failing_startup_hook_also_fails_the_start() -> None:
    svc = Service("svc")

    @svc.on_startup
    async def boom() -> None:
        raise ValueError("no database")

    async with asgi_client(build_app(svc), ready=False) as client:
        assert "no database" in (await client.get("/readyz")).text
