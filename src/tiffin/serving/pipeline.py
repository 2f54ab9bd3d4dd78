"""The one request path of the APIs and ``/invocations``.

A POST to an API route or to ``/invocations`` goes through these steps, in this order,
whichever middleware the server has and whichever way it arrived (the app's short path or
Starlette's router):

1. readiness: until every runner has loaded, the route's not-ready answer (503, Retry-After);
2. the route's content-type check, before any of the body is read (``/invocations``; an API's
   input descriptor checks the content type when it decodes);
3. the body, read whole; more than ``max_body_size`` bytes is a 413, refused without buffering
   the rest;
4. decode, in a worker thread when the body is at least :data:`~tiffin.io.base.OFFLOAD_BYTES`
   (so one large payload does not stall the event loop), inline otherwise;
5. the call, under the route's deadline (:mod:`~tiffin.serving.deadlines`): past it, the call
   is cancelled and the answer is a 504;
6. encode.

Any exception raised in steps 3-6 becomes a response in the route's error shape
(:mod:`~tiffin.serving.errors`). A pipeline answers a Response and sends nothing: the app
sends it and writes the access log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response

from tiffin.exceptions import InvalidArgument, PayloadTooLarge
from tiffin.io.base import OFFLOAD_BYTES
from tiffin.serving.deadlines import deadline
from tiffin.serving.errors import Expired

if TYPE_CHECKING:
    from starlette.types import Receive, Scope

    from tiffin.serving.app import AppState

__all__ = ["Respond", "pipeline", "read_body"]

#: a route's pipeline: the request (scope and receive) -> its response
Respond = Callable[["Scope", "Receive"], Awaitable[Response]]


def pipeline(
    state: AppState,
    *,
    where: str,
    decode: Callable[[bytes, str | None], Any],
    call: Callable[[Any], Awaitable[Any]],
    encode: Callable[..., Response],
    timeout: float,
    not_ready: Callable[[], Response],
    errors: Callable[..., Response],
    check: Callable[[str | None], str | Response] | None = None,
) -> Respond:
    """One route's request path (see the module docstring).

    ``decode(body, content_type)`` makes the call's argument; ``call(value)`` is awaited under
    the deadline of ``timeout`` seconds; ``encode(result, accept=...)`` makes the response
    (``accept`` is the request's Accept header). ``check(content_type)``, if given, answers the
    content type ``decode`` gets instead, or a Response that refuses the request.
    ``errors(exc, where=..., scope=...)`` is the route's error shape; ``where`` names the route
    in errors and in the log. ``not_ready()`` answers until the server is ready.
    """
    limit = state.settings.max_body_size

    async def respond(scope: Scope, receive: Receive) -> Response:
        if not state.ready:
            return not_ready()
        content_type = accept = length = None
        for name, value in scope["headers"]:  # the first of each, as Headers.get answers
            if name == b"content-type":
                if content_type is None:
                    content_type = value.decode("latin-1")
            elif name == b"accept":
                if accept is None:
                    accept = value.decode("latin-1")
            elif name == b"content-length" and length is None:
                length = value.decode("latin-1")
        if check is not None:
            checked = check(content_type)
            if isinstance(checked, Response):
                return checked
            content_type = checked
        try:
            body = await read_body(receive, length, limit)
            if len(body) >= OFFLOAD_BYTES:
                value = await asyncio.to_thread(decode, body, content_type)
            else:
                value = decode(body, content_type)
            try:
                async with deadline(timeout) as clock:
                    result = await call(value)
            except TimeoutError as exc:
                if clock.expired():
                    raise Expired(where, timeout) from exc
                raise  # the call's own TimeoutError: not the deadline
            return encode(result, accept=accept)
        except Exception as exc:
            return errors(exc, where=where, scope=scope)

    return respond


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body; more than ``limit`` bytes (by the Content-Length header ``declared``, or
    counted as it arrives) is a PayloadTooLarge, raised before the rest is read."""
    if declared is not None:
        if not declared.isdigit():
            raise InvalidArgument(f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {declared} bytes is over the {limit}-byte limit "
                "(max_body_size, --max-body-size)"
            )
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"request body is over the {limit}-byte limit (max_body_size, "
                    "--max-body-size)"
                )
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
