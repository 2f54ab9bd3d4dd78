"""The one request path of the APIs and ``/invocations``.

A POST to an API route or to ``/invocations`` goes through these steps, in this order,
whichever middleware the server has and whichever way it arrived (the app's short path or
Starlette's router):

1. readiness: until every runner has loaded, the route's not-ready answer (503, Retry-After);
2. capacity: with ``max_concurrent_requests`` requests of this worker already in the pipeline,
   a 503 with Retry-After at once, before any of the body is read;
3. the route's content-type check, before any of the body is read (``/invocations``; an API's
   input descriptor checks the content type when it decodes);
4. the deadline starts: the route's timeout (:mod:`~tiffin.serving.deadlines`) counts from
   here -- the request's headers have arrived -- and covers steps 5-7; past it, whatever is
   under way is cancelled and the answer is a 504 (a body that trickles in holds nothing for
   longer than that);
5. the body, read whole; more than ``max_body_size`` bytes is a 413, refused without buffering
   the rest;
6. decode under the server's decode limits (:data:`~tiffin.io.limits.DECODE_LIMITS`, set from
   the settings for each request), in a worker thread when the body is at least
   :data:`~tiffin.io.base.OFFLOAD_BYTES` (so one large payload does not stall the event loop;
   the thread sees the same limits), inline otherwise;
7. the call; a sync API function also gets the deadline as
   :data:`~tiffin.runner.runner.REQUEST_DEADLINE`, so a blocking ``runner.<method>.run()``
   gives up at it (:class:`~tiffin.serving.service.API` runs it in a thread the deadline can
   abandon);
8. encode.

Any exception raised in steps 5-8 becomes a response in the route's error shape
(:mod:`~tiffin.serving.errors`). A pipeline answers a Response and sends nothing: the app
sends it and writes the access log line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response

from tiffin.exceptions import InvalidArgument, Overloaded, PayloadTooLarge
from tiffin.io.base import OFFLOAD_BYTES
from tiffin.io.limits import DECODE_LIMITS, DecodeLimits
from tiffin.runner.runner import REQUEST_DEADLINE
from tiffin.serving.deadlines import deadline
from tiffin.serving.errors import Expired

if TYPE_CHECKING:
    from starlette.types import Receive, Scope

    from tiffin.serving.app import AppState

__all__ = ["InFlight", "Respond", "pipeline", "read_body"]

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
    blocking: bool = False,
) -> Respond:
    """One route's request path (see the module docstring).

    ``decode(body, content_type)`` makes the call's argument; ``call(value)`` is awaited under
    the deadline of ``timeout`` seconds; ``encode(result, accept=...)`` makes the response
    (``accept`` is the request's Accept header). ``check(content_type)``, if given, answers the
    content type ``decode`` gets instead, or a Response that refuses the request.
    ``errors(exc, where=..., scope=...)`` is the route's error shape; ``where`` names the route
    in errors and in the log. ``not_ready()`` answers until the server is ready. ``blocking``:
    the call blocks a thread (a sync API function), so it gets the deadline as
    ``REQUEST_DEADLINE``.
    """
    settings = state.settings
    limit = settings.max_body_size
    limits = DecodeLimits(
        max_decoded_cells=settings.max_decoded_cells,
        max_columns=settings.max_columns,
        max_image_pixels=settings.max_image_pixels,
    )
    capacity = settings.max_concurrent_requests
    gate = state.in_flight
    set_limits, reset_limits = DECODE_LIMITS.set, DECODE_LIMITS.reset

    async def respond(scope: Scope, receive: Receive) -> Response:
        if not state.ready:
            return not_ready()
        if gate.count >= capacity:
            return errors(gate.refusal(capacity), where=where, scope=scope)
        gate.count += 1
        try:
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
            # set here, reset below: an in-process client runs the app in its own task
            limits_token = set_limits(limits)  # a thread the decode runs in copies it
            deadline_token = (
                # a thread that waits on a runner gives up when the request does
                REQUEST_DEADLINE.set(time.monotonic() + timeout) if blocking else None
            )
            try:
                try:
                    async with deadline(timeout) as clock:
                        body = await read_body(receive, length, limit)
                        if len(body) >= OFFLOAD_BYTES:
                            value = await asyncio.to_thread(decode, body, content_type)
                        else:
                            value = decode(body, content_type)
                        result = await call(value)
                except TimeoutError as exc:
                    if clock.expired():
                        raise Expired(where, timeout) from exc
                    raise  # the call's own TimeoutError: not the deadline
                return encode(result, accept=accept)
            except Exception as exc:
                return errors(exc, where=where, scope=scope)
            finally:
                reset_limits(limits_token)
                if deadline_token is not None:
                    REQUEST_DEADLINE.reset(deadline_token)
        finally:
            gate.count -= 1

    return respond


class InFlight:
    """The requests one worker has in its pipelines now, against ``max_concurrent_requests``."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def alone(self) -> bool:
        """Whether at most one request is in the pipelines (the one asking)."""
        return self.count <= 1

    @staticmethod
    def refusal(capacity: int) -> Overloaded:
        return Overloaded(
            f"this server is handling its limit of {capacity} concurrent requests "
            "(max_concurrent_requests); retry shortly",
            retry_after=1.0,
        )


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
