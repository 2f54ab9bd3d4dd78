"""Direct HTTP (tiffin.ray.direct) without Ray: uvicorn in a running event loop on a port that
several servers share, stopping with its open requests answered. The Ray test
(tests/test_ray.py) runs it inside real ingress replicas."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import tiffin
from tests.conftest import free_port
from tests.test_serving_support import asgi_client
from tiffin.config import ServeSettings
from tiffin.exceptions import AddressInUse
from tiffin.ray.direct import DirectHTTP
from tiffin.serving.app import build_app

pytestmark = pytest.mark.anyio
SETTINGS = ServeSettings(api_timeout_s=30)


def _app(name: str, release: asyncio.Event | None = None) -> Starlette:
    async def who(request: Request) -> PlainTextResponse:
        return PlainTextResponse(name)

    async def slow(request: Request) -> PlainTextResponse:
        assert release is not None
        await release.wait()
        return PlainTextResponse(f"{name} after all")

    return Starlette(routes=[Route("/who", who), Route("/slow", slow)])


async def _until(done: object, what: str, timeout: float = 30) -> None:
    """Poll until ``done()``; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        await asyncio.sleep(0.01)


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def test_servers_share_one_port_and_keep_the_host_process_signals() -> None:
    port = free_port()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    first, second = DirectHTTP(SETTINGS, "127.0.0.1", port), DirectHTTP(SETTINGS, "127.0.0.1", port)
    await first.start(_app("first"))
    await second.start(_app("second"))
    try:
        # the signals stay the host's (a Ray worker's): uvicorn installed none of its own
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
        seen = set()
        for _ in range(64):  # a new connection each: the kernel spreads them by address hash
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                answer = await client.get("/who")
            assert answer.status_code == 200
            seen.add(answer.text)
        assert seen == {"first", "second"}
    finally:
        await first.stop()
        await second.stop()
    assert _refused(port)


async def test_a_stop_stops_listening_and_answers_what_it_holds() -> None:
    port = free_port()
    release = asyncio.Event()
    server = DirectHTTP(SETTINGS, "127.0.0.1", port)
    await server.start(_app("only", release))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        held = asyncio.create_task(client.get("/slow"))
        await _until(lambda: server._server is not None and server._server.server_state.tasks,
                     "request in the server")  # fmt: skip
        stopping = asyncio.create_task(server.stop())
        await _until(lambda: _refused(port), "closed listener")
        assert not held.done() and not stopping.done()  # the open request is still waited for
        release.set()
        answer = await held
        await stopping
    assert (answer.status_code, answer.text) == (200, "only after all")
    assert not server.failed()  # it was told to stop
    await server.stop()  # a second stop is a no-op


async def test_a_server_that_stopped_by_itself_is_failed() -> None:
    """What the ingress replica's health check reads (Serve then replaces the replica)."""
    port = free_port()
    server = DirectHTTP(SETTINGS, "127.0.0.1", port)
    await server.start(_app("short-lived"))
    assert not server.failed()
    assert server._task is not None
    server._task.cancel()  # uvicorn's task ends without a stop
    await _until(lambda: server.failed(), "failed server")
    await server.stop()


async def test_an_address_something_else_holds_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AddressInUse, match=f"cannot listen on 127.0.0.1:{port}"):
            await DirectHTTP(SETTINGS, "127.0.0.1", port).start(_app("late"))


async def test_a_listener_of_the_apps_own_stops_while_the_app_still_answers() -> None:
    """An ingress replica's direct listener stops before the app turns 'not ready' (which
    would answer whatever still arrives with 503s) and before the service's own shutdown."""
    service = tiffin.Service("stopping")
    app = build_app(service, SETTINGS)
    state = app.state.tiffin
    seen: list[tuple[str, bool]] = []

    async def stop_listener() -> None:
        seen.append(("listener", state.ready))

    state.stop_first.append(stop_listener)
    service.shutdown_hooks.append(lambda: seen.append(("service", state.ready)))
    async with asgi_client(app) as client:
        assert (await client.get("/readyz")).status_code == 200
    assert seen == [("listener", True), ("service", False)]
