"""``Multipart``: a multipart/form-data body with one part per named descriptor."""

from __future__ import annotations

from typing import Any

from tiffin.exceptions import InvalidArgument, InvalidOutput, TiffinError
from tiffin.io._form import FormPart, encode_form, parse_form
from tiffin.io.base import MULTIPART_TYPE, IODescriptor, check_content_type, is_textual

__all__ = [
    "Multipart",
]


def _names(names: Any) -> str:
    return ", ".join(repr(name) for name in names) or "none"


class Multipart(IODescriptor):
    """``Multipart(arr=NumpyNdarray(), meta=JSON())`` gives the API ``{"arr": ..., "meta": ...}``.

    Every named part is required, a name not declared is a 400, and each part is decoded by
    its own descriptor (a part without a Content-Type is read as that descriptor's default).
    """

    request_media_types = (MULTIPART_TYPE,)
    response_media_types = (MULTIPART_TYPE,)

    def __init__(self, **descriptors: IODescriptor) -> None:
        if not descriptors:
            raise InvalidArgument("Multipart needs at least one named descriptor")
        for name, descriptor in descriptors.items():
            if not isinstance(descriptor, IODescriptor):
                raise InvalidArgument(
                    f"Multipart part {name!r} must be an IO descriptor, "
                    f"received {type(descriptor).__qualname__}"
                )
            if isinstance(descriptor, Multipart):
                raise InvalidArgument(f"Multipart part {name!r}: Multipart cannot be nested")
        self.descriptors = descriptors

    def _parts_by_name(
        self, parts: list[FormPart], error: type[TiffinError]
    ) -> dict[str, FormPart]:
        found: dict[str, FormPart] = {}
        for part in parts:
            if part.name in found:
                raise error(f"multipart part {part.name!r} was sent more than once; expected one")
            found[part.name] = part
        expected = list(self.descriptors)
        missing = [name for name in expected if name not in found]
        if missing:
            raise error(
                f"multipart form is missing part(s) {_names(missing)}; expected parts "
                f"{_names(expected)}, received {_names(found)}"
            )
        unexpected = [name for name in found if name not in self.descriptors]
        if unexpected:
            raise error(
                f"multipart form has unexpected part(s) {_names(unexpected)}; expected parts "
                f"{_names(expected)}"
            )
        return found

    def decode_request(self, body: bytes, content_type: str | None) -> dict[str, Any]:
        _, params = check_content_type(content_type, self.request_media_types)
        if not body:
            raise InvalidArgument(
                f"request body is empty; expected a multipart form with parts "
                f"{_names(self.descriptors)}"
            )
        parts = self._parts_by_name(parse_form(body, params), InvalidArgument)
        values: dict[str, Any] = {}
        for name, descriptor in self.descriptors.items():
            try:
                values[name] = descriptor.decode_part(parts[name])
            except InvalidArgument as exc:
                raise exc.prefixed(f"part {name!r}: ") from exc
        return values

    def _encode(self, obj: Any, error: type[TiffinError], request: bool) -> tuple[bytes, str]:
        if not isinstance(obj, dict):
            raise error(
                f"Multipart expects a dict of parts {_names(self.descriptors)}; "
                f"received {type(obj).__qualname__}"
            )
        missing = [name for name in self.descriptors if name not in obj]
        unexpected = [name for name in obj if name not in self.descriptors]
        if missing or unexpected:
            raise error(
                f"Multipart expects parts {_names(self.descriptors)}; missing {_names(missing)}, "
                f"unexpected {_names(unexpected)}"
            )
        parts = []
        for name, descriptor in self.descriptors.items():
            if request:
                data, content_type = descriptor.encode_request(obj[name])
            else:
                data, content_type = descriptor.encode_response(obj[name])
            media_type = content_type.split(";", 1)[0].strip()
            filename = None
            if not is_textual(media_type):  # binary parts travel as files
                filename = getattr(obj[name], "filename", None) or name
            parts.append(FormPart(name, data, content_type, filename))
        return encode_form(parts)

    def encode_response(self, obj: Any, *, accept: str | None = None) -> tuple[bytes, str]:
        return self._encode(obj, InvalidOutput, request=False)

    def encode_request(self, obj: Any) -> tuple[bytes, str]:
        return self._encode(obj, InvalidArgument, request=True)

    def decode_response(self, body: bytes, content_type: str | None) -> dict[str, Any]:
        _, params = check_content_type(content_type, self.response_media_types)
        parts = self._parts_by_name(parse_form(body, params), InvalidArgument)
        return {
            name: descriptor.decode_response(parts[name].data, parts[name].content_type)
            for name, descriptor in self.descriptors.items()
        }

    def input_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {name: d.input_schema() for name, d in self.descriptors.items()},
            "required": list(self.descriptors),
        }

    def output_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {name: d.output_schema() for name, d in self.descriptors.items()},
            "required": list(self.descriptors),
        }

    def _form_content(self) -> dict[str, Any]:
        schema = {
            "type": "object",
            "properties": {name: d.part_schema() for name, d in self.descriptors.items()},
            "required": list(self.descriptors),
        }
        encoding = {
            name: {"contentType": ", ".join(d.request_media_types)}
            for name, d in self.descriptors.items()
        }
        return {MULTIPART_TYPE: {"schema": schema, "encoding": encoding}}

    def openapi_request_body(self) -> dict[str, Any]:
        return {"required": True, "content": self._form_content()}

    def openapi_response(self) -> dict[str, Any]:
        return {"description": "Successful Response", "content": self._form_content()}
