"""Bearer-token auth and CORS on the ASGI app (in process; the e2e test is in test_workers)."""

from __future__ import annotations

import pytest

import tiffin
from tests.test_serving_support import asgi_client
from tiffin.config import load_settings
from tiffin.serving.app import build_app

pytestmark = pytest.mark.anyio


def _service() -> tiffin.Service:
    svc = tiffin.Service("guarded")

    @svc.api(input=tiffin.io.JSON(), output=tiffin.io.JSON())
    def echo(value):
        return value

    return svc


def _app(**settings):
    return build_app(_service(), load_settings(overrides=settings, environ={}))


async def test_api_routes_need_the_key_and_health_does_not() -> None:
    async with asgi_client(_app(api_key="k3y")) as client:
        denied = await client.post("/echo", json={"a": 1})
        assert denied.status_code == 401
        assert denied.json() == {
            "error": "UNAUTHORIZED",
            "detail": "send the server's API key as 'Authorization: Bearer <key>'",
        }
        no_scheme = await client.post("/echo", json=1, headers={"Authorization": "k3y"})
        assert no_scheme.status_code == 401
        ok = await client.post("/echo", json={"a": 1}, headers={"Authorization": "Bearer k3y"})
        assert ok.status_code == 200 and ok.json() == {"a": 1}
        for path in ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json"):
            assert (await client.get(path)).status_code == 200, path


async def test_auth_metrics_guards_metrics_and_docs_too() -> None:
    async with asgi_client(_app(api_key="k3y", auth_metrics=True)) as client:
        for path in ("/metrics", "/docs.json", "/"):
            assert (await client.get(path)).status_code == 401, path
        assert (await client.get("/readyz")).status_code == 200
        auth = {"Authorization": "Bearer k3y"}
        assert (await client.get("/metrics", headers=auth)).status_code == 200


async def test_without_a_key_everything_is_open() -> None:
    async with asgi_client(_app()) as client:
        assert (await client.post("/echo", json=[1])).status_code == 200


async def test_cors_only_for_configured_origins() -> None:
    async with asgi_client(_app(cors_origins=["https://app.example"])) as client:
        preflight = await client.options(
            "/echo",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        simple = await client.post("/echo", json=1, headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.post("/echo", json=1, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    async with asgi_client(_app()) as client:
        plain = await client.post("/echo", json=1, headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in plain.headers


async def _websocket(app, headers=()):
    """What the app sends to a WebSocket request (a tiffin server has no WebSocket route)."""
    sent = []
    scope = {"type": "websocket", "path": "/echo", "raw_path": b"/echo", "query_string": b"",
             "headers": list(headers), "scheme": "ws", "server": ("t", 80), "client": ("c", 1),
             "subprotocols": [], "asgi": {"version": "3.0"}, "root_path": ""}  # fmt: skip
    messages = [{"type": "websocket.connect"}]

    async def receive():
        return messages.pop(0) if messages else {"type": "websocket.disconnect", "code": 1000}

    async def send(message):
        sent.append(message)

    async with asgi_client(app):
        await app(scope, receive, send)
    return sent


async def test_with_a_key_a_websocket_without_it_is_closed_with_1008() -> None:
    assert await _websocket(_app(api_key="k3y")) == [{"type": "websocket.close", "code": 1008}]
    authorized = await _websocket(_app(api_key="k3y"), [(b"authorization", b"Bearer k3y")])
    assert [m["type"] for m in authorized] == ["websocket.close"]  # no route: closed, not 1008
    assert authorized[0].get("code", 1000) != 1008
