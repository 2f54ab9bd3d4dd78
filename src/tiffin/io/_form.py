"""multipart/form-data bodies: parse (on python-multipart's parser) and build.

The server has already read the body, so parsing works on bytes and keeps every part's
headers (starlette's ``request.form()`` drops the Content-Type of plain fields and caps them
at 1 MiB, which a tensor sent as a field would pass).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from tiffin.exceptions import InvalidArgument


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a multipart/form-data body."""

    name: str
    data: bytes
    content_type: str | None = None
    filename: str | None = None


def _header_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")  # what browsers send for non-ASCII file names
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_form(body: bytes, params: dict[str, str]) -> list[FormPart]:
    """The parts of a multipart/form-data ``body``; ``params`` are its Content-Type parameters."""
    from python_multipart.multipart import (
        MultipartParseError,
        MultipartParser,
        parse_options_header,
    )

    boundary = params.get("boundary")
    if not boundary:
        raise InvalidArgument(
            "multipart/form-data Content-Type has no boundary parameter; expected "
            "'multipart/form-data; boundary=...' as HTTP clients write it"
        )
    parts: list[FormPart] = []
    headers: list[tuple[bytes, bytes]] = []
    field, value = bytearray(), bytearray()
    chunks: list[bytes] = []
    ended = False

    def on_part_begin() -> None:
        headers.clear()
        chunks.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        headers.append((bytes(field).lower(), bytes(value)))
        field.clear()
        value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        found = dict(headers)
        _, options = parse_options_header(_header_text(found.get(b"content-disposition", b"")))
        name = options.get(b"name")
        if name is None:
            raise InvalidArgument(
                f"multipart part #{len(parts) + 1} has no name; expected a "
                "'Content-Disposition: form-data; name=\"...\"' header"
            )
        raw_type = found.get(b"content-type")
        filename = options.get(b"filename")
        parts.append(
            FormPart(
                name=_header_text(name),
                data=b"".join(chunks),
                content_type=raw_type.decode("latin-1").strip() if raw_type else None,
                filename=_header_text(filename) if filename is not None else None,
            )
        )

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary.encode("latin-1"),
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidArgument(f"request body is not valid multipart/form-data: {exc}") from exc
    if not ended:
        raise InvalidArgument(
            f"multipart/form-data body ends before its closing boundary '--{boundary}--' "
            f"(received {len(parts)} complete part(s))"
        )
    return parts


def _quote(text: str) -> str:
    # the escaping browsers apply to names in Content-Disposition (WHATWG HTML, form-data)
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def encode_form(parts: list[FormPart]) -> tuple[bytes, str]:
    """Build a multipart/form-data body: ``(body, content_type)``."""
    boundary = secrets.token_hex(16)
    delimiter = f"--{boundary}\r\n".encode("ascii")
    out = bytearray()
    for part in parts:
        out += delimiter
        disposition = f'form-data; name="{_quote(part.name)}"'
        if part.filename is not None:
            disposition += f'; filename="{_quote(part.filename)}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if part.content_type:
            out += f"Content-Type: {part.content_type}\r\n".encode("latin-1")
        out += b"\r\n"
        out += part.data
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode("ascii")
    return bytes(out), f"multipart/form-data; boundary={boundary}"
