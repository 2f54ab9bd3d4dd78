"""``File``: raw bytes, sent as the body or as one file of a multipart form."""

from __future__ import annotations

import io
import mimetypes
import os
from pathlib import Path
from typing import Any

from tiffin.exceptions import InvalidArgument, InvalidOutput, TiffinError
from tiffin.io._form import FormPart, parse_form
from tiffin.io.base import (
    BINARY_SCHEMA,
    MULTIPART_TYPE,
    IODescriptor,
    check_content_type,
    parse_media_type,
    require_body,
)

__all__ = [
    "OCTET_TYPE",
    "File",
    "FileData",
    "file_payload",
    "file_request_body",
    "pick_file_part",
]

OCTET_TYPE = "application/octet-stream"


class FileData(io.BytesIO):
    """A received file: a ``BytesIO`` with the ``filename`` and ``content_type`` it came with."""

    def __init__(
        self, data: bytes = b"", filename: str | None = None, content_type: str | None = None
    ) -> None:
        super().__init__(data)
        self.filename = filename
        self.content_type = content_type

    def __repr__(self) -> str:
        return (
            f"FileData({len(self.getbuffer())} bytes, filename={self.filename!r}, "
            f"content_type={self.content_type!r})"
        )


def pick_file_part(parts: list[FormPart]) -> FormPart:
    """The one file in a form: its only part with a filename, else its only part."""
    files = [part for part in parts if part.filename is not None]
    candidates = files or parts
    if len(candidates) != 1:
        names = ", ".join(repr(part.name) for part in parts) or "none"
        raise InvalidArgument(
            f"expected one file in the multipart form; received {len(candidates)} (parts: {names})"
        )
    return candidates[0]


def file_payload(obj: Any, error: type[TiffinError]) -> tuple[bytes, str | None, str | None]:
    """``(data, content_type, filename)`` of bytes, a path or a binary file object."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj), None, None
    if isinstance(obj, os.PathLike):
        path = Path(obj)
        return path.read_bytes(), mimetypes.guess_type(path.name)[0], path.name
    read = getattr(obj, "read", None)
    if callable(read):
        data = obj.getvalue() if isinstance(obj, io.BytesIO) else read()
        if isinstance(data, bytes | bytearray):
            name = getattr(obj, "filename", None) or os.path.basename(str(getattr(obj, "name", "")))
            return bytes(data), getattr(obj, "content_type", None), name or None
    raise error(
        f"expected bytes, a path or a binary file object; received {type(obj).__qualname__}"
    )


class File(IODescriptor):
    """A file-like :class:`FileData`. ``mime_type`` limits what is accepted and labels output."""

    def __init__(self, mime_type: str | None = None) -> None:
        if mime_type is not None and "/" not in parse_media_type(mime_type)[0]:
            raise InvalidArgument(f"File: mime_type {mime_type!r} is not a media type like 'a/b'")
        self.mime_type = mime_type
        if mime_type is None:
            self.request_media_types = (OCTET_TYPE, MULTIPART_TYPE, "*/*")
            self.response_media_types = (OCTET_TYPE,)
        else:
            accepted = dict.fromkeys((mime_type, OCTET_TYPE, MULTIPART_TYPE))
            self.request_media_types = tuple(accepted)
            self.response_media_types = (mime_type,)

    def _check_part_type(self, part: FormPart) -> None:
        if part.content_type is not None:
            accepted = tuple(t for t in self.request_media_types if t != MULTIPART_TYPE)
            check_content_type(part.content_type, accepted)

    def decode_request(self, body: bytes, content_type: str | None) -> Any:
        media_type, params = check_content_type(content_type, self.request_media_types)
        if media_type == MULTIPART_TYPE:
            return self.decode_part(pick_file_part(parse_form(body, params)))
        require_body(body, "the file's bytes")
        return FileData(body, None, content_type)

    def decode_part(self, part: FormPart) -> Any:
        self._check_part_type(part)
        if not part.data:
            raise InvalidArgument(f"file part {part.name!r} is empty; expected the file's bytes")
        return FileData(part.data, part.filename, part.content_type)

    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        data, content_type, _ = file_payload(obj, InvalidOutput)
        return data, self.mime_type or content_type or OCTET_TYPE

    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        data, content_type, _ = file_payload(obj, InvalidArgument)
        return data, self.mime_type or content_type or OCTET_TYPE

    def decode_response(self, body: bytes, content_type: str | None) -> Any:
        return FileData(body, None, content_type)

    def input_schema(self) -> dict[str, Any]:
        return dict(BINARY_SCHEMA)

    def openapi_request_body(self) -> dict[str, Any]:
        return file_request_body(self.request_media_types)


def file_request_body(media_types: tuple[str, ...]) -> dict[str, Any]:
    """Binary body under each media type; multipart documents one ``file`` field."""
    content: dict[str, Any] = {}
    for media_type in media_types:
        if media_type == MULTIPART_TYPE:
            content[media_type] = {
                "schema": {
                    "type": "object",
                    "properties": {"file": dict(BINARY_SCHEMA)},
                    "required": ["file"],
                }
            }
        else:
            content[media_type] = {"schema": dict(BINARY_SCHEMA)}
    return {"required": True, "content": content}
