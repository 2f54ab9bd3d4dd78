"""Optional bearer-token auth for a server's API routes (``--api-key`` / ``TIFFIN_API_KEY``).

Health and readiness checks (``/livez``, ``/readyz``, ``/healthz``, MLflow's ``/ping``,
``/health``, ``/version``) never need the key, so orchestrators can probe the server; the
metrics and documentation routes need it only with ``auth_metrics: true``. Every other route
(the APIs, ``/invocations``) answers 401 without ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

ALWAYS_OPEN = frozenset({"/livez", "/readyz", "/healthz", "/ping", "/health", "/version"})
DOCS = frozenset({"/metrics", "/docs.json", "/", "/docs"})
_BODY = orjson.dumps(
    {
        "error": "UNAUTHORIZED",
        "detail": "send the server's API key as 'Authorization: Bearer <key>'",
    }
)


class BearerAuthMiddleware:
    """Pure ASGI: compare the bearer token in constant time; 401 JSON when it is wrong."""

    def __init__(self, app: ASGIApp, api_key: str, protect_docs: bool = False) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.protect_docs = protect_docs

    def _open(self, path: str) -> bool:
        if path in ALWAYS_OPEN:
            return True
        if self.protect_docs:
            return False
        return path in DOCS or path.startswith("/static/swagger-ui/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or self._open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BODY)).encode()),
                    (b"www-authenticate", b'Bearer realm="tiffin"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BODY})
