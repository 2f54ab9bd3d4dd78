"""The access log: one structured line and one metrics observation per HTTP request.

Lines are built from a LogRecord template (no ``LogRecord.__init__`` and ``findCaller`` per
request) and their JSON text is made only if a formatter asks for it. The full middleware stack
uses :class:`AccessLogMiddleware`; the server's short path for API POSTs calls
:func:`record_access` itself.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from tiffin.serving.app import AppState

__all__ = ["ERROR_ID_KEY", "AccessLogMiddleware", "access_logger", "record_access"]

access_logger = logging.getLogger("tiffin.access")

#: where an error id travels from the endpoint to the access log
ERROR_ID_KEY = "tiffin.error_id"

_RECORD_TEMPLATE = logging.LogRecord(
    "tiffin.access", logging.INFO, __file__, 0, "%s", None, None, "access_log"
).__dict__
_LOGGING_STARTED = getattr(logging, "_startTime", time.time())


def _access_record(fields: dict[str, Any]) -> logging.LogRecord:
    """The access log's LogRecord for ``fields``: what ``logger.info`` would make, from a
    template instead of LogRecord.__init__ and findCaller (half the cost of a line)."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    values = record.__dict__
    values.update(_RECORD_TEMPLATE)
    now = time.time()
    values["created"] = now
    values["msecs"] = (now - int(now)) * 1000 // 1
    values["relativeCreated"] = (now - _LOGGING_STARTED) * 1000
    values["args"] = (_AccessLine(fields),)
    values["access"] = fields
    return record


class _AccessLine:
    """The text form of an access log line, made only if a formatter asks for it."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return orjson.dumps(self.fields).decode()


class AccessLogMiddleware:
    """Pure ASGI: one structured log line and one metrics observation per HTTP request."""

    def __init__(self, app: ASGIApp, state: AppState, routes: frozenset[str]) -> None:
        self.app = app
        self.state = state
        self.known = routes

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
            record_access(self.state, self.known, scope, status, time.perf_counter() - started)


def record_access(
    state: AppState, known: frozenset[str], scope: Scope, status: int, elapsed: float
) -> None:
    """One request's metrics and access log line."""
    path = scope["path"]
    route = path if path in known else "<other>"
    state.metrics.observe_request(route, scope["method"], status, elapsed)
    if state.settings.access_log and access_logger.isEnabledFor(logging.INFO):
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": path,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "client": (scope.get("client") or ("", 0))[0],
        }
        error_id = scope.get(ERROR_ID_KEY)
        if error_id is not None:
            fields["error_id"] = error_id
        access_logger.handle(_access_record(fields))
