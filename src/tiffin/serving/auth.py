"""Optional bearer-token auth (``--api-key`` / ``TIFFIN_API_KEY``).

Who needs the key is the route table's ``access`` (:mod:`~tiffin.serving.routes`): the
health and readiness routes (``/livez``, ``/readyz``, ``/healthz``, MLflow's ``/ping``,
``/health``, ``/version``) never do, so orchestrators can probe the server; the metrics and
documentation routes (Swagger UI's files included) only with ``auth_metrics: true``; every
other route (the APIs, ``/invocations``, any unknown path) answers 401 without
``Authorization: Bearer <key>``, compared in constant time. CORS preflights (``OPTIONS``)
pass without it. The check comes before CORS, so a 401 carries no CORS headers. A tiffin
server has no WebSocket route: with a key set, a WebSocket without it is closed at once with
code 1008 (policy violation), before anything else sees it.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

import orjson

from tiffin.serving.routes import SWAGGER_STATIC, Access, paths_with

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ALWAYS_OPEN", "DOCS", "BearerAuthMiddleware", "BearerKey"]

ALWAYS_OPEN = paths_with(Access.OPEN)
DOCS = paths_with(Access.DOCS)
_STATIC = SWAGGER_STATIC + "/"
_POLICY_VIOLATION = 1008  # RFC 6455: the WebSocket close code of a refused request
_BODY = orjson.dumps(
    {
        "error": "UNAUTHORIZED",
        "detail": "send the server's API key as 'Authorization: Bearer <key>'",
    }
)
_HEADERS = (
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"www-authenticate", b'Bearer realm="tiffin"'),
)


class BearerKey:
    """The server's API key, and which paths need it."""

    def __init__(self, api_key: str, protect_docs: bool = False) -> None:
        self.expected = f"Bearer {api_key}".encode()
        self.protect_docs = protect_docs

    def is_open(self, path: str) -> bool:
        """Whether ``path`` answers without the key."""
        if path in ALWAYS_OPEN:
            return True
        if self.protect_docs:
            return False
        return path in DOCS or path.startswith(_STATIC)

    def authorized(self, scope: Scope) -> bool:
        """Whether the request carries the key."""
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return hmac.compare_digest(given, self.expected)

    @staticmethod
    async def refuse(send: Send) -> None:
        """Answer 401 with tiffin's error body."""
        await send({"type": "http.response.start", "status": 401, "headers": list(_HEADERS)})
        await send({"type": "http.response.body", "body": _BODY})


class BearerAuthMiddleware:
    """Pure ASGI, for the requests the app does not serve itself: 401 JSON without the key."""

    def __init__(self, app: ASGIApp, key: BearerKey) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.key
        if scope["type"] == "websocket" and not key.authorized(scope):
            await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
            return
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or key.is_open(scope["path"])
            or key.authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        await key.refuse(send)
