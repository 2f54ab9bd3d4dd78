"""``Image``: image files in, ``PIL.Image.Image`` to the API; images or arrays back out."""

from __future__ import annotations

import io
from typing import Any

from tiffin.exceptions import (
    DecodedTooLarge,
    InvalidArgument,
    InvalidOutput,
    TiffinError,
    missing_dependency,
)
from tiffin.io._form import FormPart, parse_form
from tiffin.io.base import (
    BINARY_SCHEMA,
    MULTIPART_TYPE,
    IODescriptor,
    check_content_type,
    parse_media_type,
    require_body,
)
from tiffin.io.file import OCTET_TYPE, file_payload, file_request_body, pick_file_part
from tiffin.io.limits import check_image
from tiffin.io.limits import current as current_limits

__all__ = [
    "Image",
    "encode_image",
    "read_image",
]


def _pil() -> Any:
    try:
        from PIL import Image as PILImage
    except ImportError as exc:
        raise missing_dependency("Pillow", "image") from exc
    return PILImage


def _format_for(mime_type: str) -> str:
    """Pillow's format name (``JPEG``) for a MIME type (``image/jpeg``)."""
    pil = _pil()
    for attempt in range(2):
        for format_name, mime in pil.MIME.items():
            if mime == mime_type:
                return str(format_name)
        if attempt == 0:
            pil.init()  # load every plugin, then look again
    raise InvalidOutput(f"Pillow cannot write {mime_type!r} images")


def encode_image(obj: Any, mime_type: str, error: type[TiffinError]) -> bytes:
    pil = _pil()
    if not isinstance(obj, pil.Image):
        try:
            obj = pil.fromarray(obj)
        except (TypeError, ValueError, AttributeError) as exc:
            raise error(
                f"expected a PIL.Image.Image or an image-shaped uint8 array; received "
                f"{type(obj).__qualname__} ({exc})"
            ) from exc
    format_name = _format_for(mime_type)
    if format_name == "JPEG" and obj.mode not in ("RGB", "L", "CMYK"):
        obj = obj.convert("RGB")  # JPEG has no alpha channel or palette
    buffer = io.BytesIO()
    try:
        obj.save(buffer, format=format_name)
    except (OSError, ValueError, KeyError) as exc:
        raise error(f"cannot write a {obj.mode} image as {mime_type}: {exc}") from exc
    return buffer.getvalue()


def read_image(data: bytes, content_type: str | None) -> Any:
    pil = _pil()
    try:
        image = pil.open(io.BytesIO(data))  # reads the header only
        check_image(*image.size)
        image.load()
    except pil.DecompressionBombError as exc:  # Pillow's own bound, far above ours
        limit = current_limits().max_image_pixels
        raise DecodedTooLarge(
            f"the image is over Pillow's decompression-bomb bound ({exc}), far over "
            f"max_image_pixels={limit:,}; send a smaller image",
            setting="max_image_pixels",
        ) from exc
    except (pil.UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "no known image format" if isinstance(exc, pil.UnidentifiedImageError) else exc
        raise InvalidArgument(
            f"not an image Pillow can read ({reason}); expected image bytes (JPEG, PNG, ...), "
            f"received {len(data)} bytes of {content_type or 'unlabelled data'} "
            f"starting {data[:8]!r}"
        ) from exc
    return image


class Image(IODescriptor):
    """A ``PIL.Image.Image`` converted to ``pil_mode`` (None keeps the file's own mode).

    Any ``image/*`` body (or octet-stream, or one file in a multipart form) is read;
    ``mime_type`` is the format responses are written in.
    """

    request_media_types = ("image/*", OCTET_TYPE, MULTIPART_TYPE)

    def __init__(self, pil_mode: str | None = "RGB", mime_type: str = "image/jpeg") -> None:
        if not parse_media_type(mime_type)[0].startswith("image/"):
            raise InvalidArgument(f"Image: mime_type {mime_type!r} is not an image/* type")
        self.pil_mode = pil_mode
        self.mime_type = mime_type
        self.response_media_types = (mime_type,)

    def _convert(self, image: Any) -> Any:
        if self.pil_mode is None or image.mode == self.pil_mode:
            return image
        try:
            return image.convert(self.pil_mode)
        except ValueError as exc:
            raise InvalidArgument(
                f"cannot convert the {image.mode} image to mode {self.pil_mode!r}: {exc}"
            ) from exc

    def decode_request(self, body: bytes, content_type: str | None) -> Any:
        media_type, params = check_content_type(content_type, self.request_media_types)
        if media_type == MULTIPART_TYPE:
            return self.decode_part(pick_file_part(parse_form(body, params)))
        require_body(body, "image bytes (JPEG, PNG, ...)")
        return self._convert(read_image(body, content_type))

    def decode_part(self, part: FormPart) -> Any:
        if part.content_type is not None:
            check_content_type(part.content_type, self.request_media_types[:2])
        if not part.data:
            raise InvalidArgument(f"image part {part.name!r} is empty; expected image bytes")
        return self._convert(read_image(part.data, part.content_type))

    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        return encode_image(obj, self.mime_type, InvalidOutput), self.mime_type

    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        """Images go as PNG (lossless); bytes, paths and files go as they are."""
        if (
            isinstance(obj, bytes | bytearray | memoryview)
            or hasattr(obj, "read")
            or (hasattr(obj, "__fspath__"))
        ):
            data, content_type, _ = file_payload(obj, InvalidArgument)
            return data, content_type or OCTET_TYPE
        return encode_image(obj, "image/png", InvalidArgument), "image/png"

    def decode_response(self, body: bytes, content_type: str | None) -> Any:
        return read_image(body, content_type)

    def input_schema(self) -> dict[str, Any]:
        return dict(BINARY_SCHEMA)

    def openapi_request_body(self) -> dict[str, Any]:
        return file_request_body(self.request_media_types)
