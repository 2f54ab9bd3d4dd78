"""``Text``: UTF-8 text/plain in and out."""

from __future__ import annotations

from typing import Any

from tiffin.exceptions import InvalidArgument, InvalidOutput
from tiffin.io.base import IODescriptor, check_content_type

__all__ = [
    "TEXT_TYPE",
    "Text",
]

TEXT_TYPE = "text/plain"
_TEXT_UTF8 = "text/plain; charset=utf-8"


def _decode(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{what} is not valid UTF-8: byte {body[exc.start : exc.start + 1]!r} at offset "
            f"{exc.start} ({exc.reason}); expected UTF-8 text"
        ) from exc


class Text(IODescriptor):
    """A ``str``. An empty body is the empty string (a valid text)."""

    request_media_types = (TEXT_TYPE,)
    response_media_types = (TEXT_TYPE,)

    def decode_request(self, body: bytes, content_type: str | None) -> str:
        check_content_type(content_type, self.request_media_types)
        return _decode(body, "request body")

    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        if not isinstance(obj, str):
            raise InvalidOutput(
                f"the API returned {type(obj).__qualname__}; Text output expects a str"
            )
        return obj.encode("utf-8"), _TEXT_UTF8

    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        if not isinstance(obj, str):
            raise InvalidArgument(f"Text sends a str; received {type(obj).__qualname__}")
        return obj.encode("utf-8"), _TEXT_UTF8

    def decode_response(self, body: bytes, content_type: str | None) -> str:
        return _decode(body, "response body")

    def input_schema(self) -> dict[str, Any]:
        return {"type": "string"}
