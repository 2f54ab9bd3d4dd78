"""The access log: one structured line and one metrics observation per HTTP request.

Where logging is as the server sets it up -- the line would reach one handler that takes
lines unformatted (:class:`~tiffin.process.logs.BufferedStreamHandler`), past no filter -- a
line is handed to it as its time and fields, formatted when the handler writes its lines, to
the text its record would have given. Else (another handler, a filter, a test's capture) the
line is a LogRecord, built from a template (no ``LogRecord.__init__`` and ``findCaller`` per
request), whose JSON text is made only if a formatter asks for it. The full middleware stack
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


def _access_record(fields: dict[str, Any], now: float | None = None) -> logging.LogRecord:
    """The access log's LogRecord for ``fields`` (at ``now``, default: now): what
    ``logger.info`` would make, from a template instead of LogRecord.__init__ and findCaller
    (half the cost of a line)."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    values = record.__dict__
    values.update(_RECORD_TEMPLATE)
    if now is None:
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


class _AccessLines:
    """The kind of the lines handed to the handler unformatted
    (:class:`~tiffin.process.logs.LineKind`)."""

    name = "tiffin.access"
    levelname = "INFO"

    @staticmethod
    def message(fields: dict[str, Any]) -> str:
        return orjson.dumps(fields).decode()

    @staticmethod
    def record(created: float, fields: dict[str, Any]) -> logging.LogRecord:
        return _access_record(fields, created)


_ACCESS_LINES = _AccessLines()


def _sink() -> Any:
    """The one handler an access line's record would reach, when it takes lines unformatted
    (``pend``) and no filter, disabled logger or other handler is on the way; else None."""
    logger: logging.Logger | None = access_logger
    found = None
    while logger is not None:
        if logger.filters or logger.disabled:
            return None
        for handler in logger.handlers:
            if found is not None:
                return None
            found = handler
        if not logger.propagate:
            break
        logger = logger.parent
    if found is None or found.filters or found.level > logging.INFO:
        return None
    return found if hasattr(found, "pend") else None


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
        sink = _sink()
        if sink is not None:
            sink.pend(_ACCESS_LINES, time.time(), fields)
        else:
            access_logger.handle(_access_record(fields))
