"""The IO descriptor contract, and the content-type handling every descriptor shares.

A descriptor turns an HTTP body into the Python value an API function takes, and the
function's return value back into a body. The work is done by four pure functions on bytes
(``decode_request``/``encode_response`` on the server, ``encode_request``/``decode_response``
in a client); ``from_request`` and ``to_response`` adapt the server pair to starlette.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument, UnsupportedMediaType

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from tiffin.io._form import FormPart

__all__ = [
    "BINARY_SCHEMA",
    "JSON_TYPE",
    "MULTIPART_TYPE",
    "OFFLOAD_BYTES",
    "IODescriptor",
    "check_content_type",
    "is_textual",
    "media_schema",
    "media_type_matches",
    "negotiate",
    "parse_media_type",
    "require_body",
]

#: bodies at least this big are decoded in a worker thread, so one large payload does not
#: stall every other request on the event loop; smaller ones decode inline (no thread hop).
#: 256 KiB: what a JSON parse of that size costs (milliseconds) is worth a thread hop (tens
#: of microseconds); the one-row requests of the short path are far below it
OFFLOAD_BYTES = 256 * 1024

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
BINARY_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary"}
_UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def parse_media_type(value: str | None, *, verbatim: bool = False) -> tuple[str, dict[str, str]]:
    """``'Application/JSON; charset="UTF-8"'`` -> ``('application/json', {'charset': 'UTF-8'})``.

    ``verbatim``: parameter values as written (quotes kept), and a parameter without ``=``
    kept with an empty value -- how MLflow's scoring server reads a Content-Type.
    """
    if not value:
        return "", {}
    media_type, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        key, sep, val = item.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip() if verbatim else val.strip().strip('"')
        elif verbatim and key.strip():
            params[key.strip().lower()] = ""
    return media_type.strip().lower(), params


def media_type_matches(media_type: str, pattern: str) -> bool:
    """Whether ``pattern`` covers ``media_type`` (``*/*``, ``image/*``, ``+json`` suffixes)."""
    if pattern == "*/*" or media_type == pattern:
        return True
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    if pattern == JSON_TYPE:  # RFC 6839: application/vnd.example+json is JSON
        return media_type.startswith("application/") and media_type.endswith("+json")
    return False


def is_textual(media_type: str) -> bool:
    return media_type.startswith("text/") or media_type_matches(media_type, JSON_TYPE)


def check_content_type(
    content_type: str | None, accepted: Sequence[str]
) -> tuple[str, dict[str, str]]:
    """The request's media type and parameters, or a 415 that lists what is accepted.

    A request without a Content-Type is read as the first accepted type. Text types must be
    UTF-8: a ``charset`` parameter naming anything else is a 415.
    """
    media_type, params = parse_media_type(content_type)
    if not media_type:
        return accepted[0], {}
    if not any(media_type_matches(media_type, pattern) for pattern in accepted):
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not accepted here; "
            f"send one of: {', '.join(accepted)}"
        )
    charset = params.get("charset")
    if charset is not None and is_textual(media_type) and charset.lower() not in _UTF8_NAMES:
        raise UnsupportedMediaType(
            f"charset {charset!r} is not supported; expected UTF-8 "
            f"(Content-Type: {media_type}; charset=utf-8)"
        )
    return media_type, params


def negotiate(accept: str | None, offered: Sequence[str]) -> str:
    """The offered media type an Accept header prefers; the first offered when none fits.

    Answering with the default beats a 406: a client that asked for something odd still
    gets a body whose Content-Type says what it is.
    """
    if not accept:
        return offered[0]
    best, best_q = offered[0], 0.0
    ranges: list[tuple[str, float]] = []
    for item in accept.split(","):
        media_range, params = parse_media_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if media_range:
            ranges.append((media_range, q))
    for candidate in offered:
        # the most specific range that covers the candidate decides its quality
        matching = [(r, q) for r, q in ranges if media_type_matches(candidate, r)]
        if not matching:
            continue
        _, q = max(matching, key=lambda rq: (rq[0] != "*/*", not rq[0].endswith("/*"), rq[1]))
        if q > best_q:
            best, best_q = candidate, q
    return best


def media_schema(media_type: str, json_schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema for one media type of a descriptor."""
    if media_type_matches(media_type, JSON_TYPE):
        return json_schema
    if media_type.startswith("text/"):
        return {"type": "string"}
    return dict(BINARY_SCHEMA)


def require_body(body: bytes, expected: str) -> None:
    if not body:
        raise InvalidArgument(f"request body is empty; expected {expected}")


class IODescriptor(ABC):
    """Decodes a request body into an API argument and encodes the API's return value."""

    #: media types a request body may have; the first is assumed when a request names none
    request_media_types: tuple[str, ...] = (JSON_TYPE,)
    #: media types a response can be written as; the first is the default
    response_media_types: tuple[str, ...] = (JSON_TYPE,)

    # --- the server side -------------------------------------------------------------
    async def from_request(self, request: Request) -> Any:
        """Decode and validate the body of ``request`` (already read by the server)."""
        body = await request.body()
        content_type = request.headers.get("content-type")
        if len(body) >= OFFLOAD_BYTES:
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(self.decode_request, body, content_type)
        return self.decode_request(body, content_type)

    def to_response(
        self, obj: Any, status_code: int = 200, *, accept: str | None = None
    ) -> Response:
        """Encode an API function's return value; ``accept`` is the request's Accept header."""
        from starlette.responses import Response

        body, content_type = self.encode_response(obj, accept=accept)
        return Response(body, status_code=status_code, headers={"content-type": content_type})

    @abstractmethod
    def decode_request(self, body: bytes, content_type: str | None) -> Any:
        """Request body -> API argument; 400 (InvalidArgument) or 415 on bad input."""

    @abstractmethod
    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        """API return value -> (body, content type); InvalidOutput if it does not fit."""

    def decode_part(self, part: FormPart) -> Any:
        """One part of a multipart/form-data request -> API argument."""
        return self.decode_request(part.data, part.content_type)

    # --- the client side -------------------------------------------------------------
    @abstractmethod
    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        """A value a client sends -> (body, content type)."""

    @abstractmethod
    def decode_response(self, body: bytes, content_type: str | None) -> Any:
        """A response body a client received -> Python value."""

    # --- documentation ---------------------------------------------------------------
    @abstractmethod
    def input_schema(self) -> dict[str, Any]:
        """JSON schema of the payload's JSON form."""

    def output_schema(self) -> dict[str, Any]:
        """JSON schema of the response's JSON form."""
        return self.input_schema()

    def openapi_request_body(self) -> dict[str, Any]:
        """OpenAPI 3.1 requestBody object."""
        schema = self.input_schema()
        content = {mt: {"schema": media_schema(mt, schema)} for mt in self.request_media_types}
        return {"required": True, "content": content}

    def openapi_response(self) -> dict[str, Any]:
        """OpenAPI 3.1 response object for a 200."""
        schema = self.output_schema()
        content = {mt: {"schema": media_schema(mt, schema)} for mt in self.response_media_types}
        return {"description": "Successful Response", "content": content}

    def part_schema(self) -> dict[str, Any]:
        """Schema of this descriptor's value as one field of a multipart form."""
        return media_schema(self.request_media_types[0], self.input_schema())

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_")
        )
        return f"{type(self).__name__}({fields})"
