"""tiffin.io File, Image and Multipart: raw bodies, multipart forms and images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image as PILImage

from tests.test_io import error_of, post
from tiffin.exceptions import InvalidArgument, InvalidOutput, TiffinError
from tiffin.io import JSON, File, FileData, Image, Multipart, NumpyNdarray, Text
from tiffin.io._form import FormPart, encode_form, parse_form


def png_bytes(mode: str = "RGB", size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    color: Any = (255, 0, 0, 128) if mode == "RGBA" else (255, 0, 0)
    PILImage.new(mode, size, color=color).save(buffer, format="PNG")
    return buffer.getvalue()


# --- multipart parsing -------------------------------------------------------------------


def test_form_round_trip_keeps_every_header() -> None:
    parts = [
        FormPart("meta", b'{"a": 1}', "application/json"),
        FormPart("file", b"\r\n--not-a-boundary\r\n\x00\xff", "image/png", 'café "1".png'),
        FormPart("empty", b""),
    ]
    body, content_type = encode_form(parts)
    boundary = content_type.split("boundary=")[1]
    back = parse_form(body, {"boundary": boundary})
    assert back[0] == parts[0]
    assert back[1].data == parts[1].data
    assert back[1].filename == "café %221%22.png"  # quoted as browsers do
    assert back[2] == parts[2]


def test_form_errors() -> None:
    with pytest.raises(InvalidArgument, match="no boundary"):
        parse_form(b"--x\r\n", {})
    body, content_type = encode_form([FormPart("a", b"1")])
    boundary = content_type.split("boundary=")[1]
    with pytest.raises(InvalidArgument, match="ends before its closing boundary"):
        parse_form(body[:-10], {"boundary": boundary})
    nameless = f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{boundary}--\r\n"
    with pytest.raises(InvalidArgument, match="has no name"):
        parse_form(nameless.encode(), {"boundary": boundary})


# --- File ---------------------------------------------------------------------------------


def test_file_raw_body() -> None:
    response = post(
        File(),
        content=b"%PDF-1.7 ...",
        headers={"content-type": "application/pdf"},
        fn=lambda f: f.read().upper(),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"%PDF-1.7 ..."
    (received,) = response.extensions["seen"]
    assert isinstance(received, FileData)
    assert received.content_type == "application/pdf"
    assert received.filename is None


def test_file_from_a_multipart_upload() -> None:
    files = {"upload": ("report.pdf", b"%PDF data", "application/pdf")}
    response = post(File(mime_type="application/pdf"), files=files, data={"note": "hi"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert response.content == b"%PDF data"
    (received,) = response.extensions["seen"]
    assert received.filename == "report.pdf"
    assert received.content_type == "application/pdf"
    assert received.read() == b"%PDF data"


def test_file_bad_input() -> None:
    pdf_only = File(mime_type="application/pdf")
    message = error_of(post(pdf_only, content=b"x", headers={"content-type": "text/plain"}), 415)
    assert "application/pdf, application/octet-stream, multipart/form-data" in message
    files = {"upload": ("a.txt", b"x", "text/plain")}
    assert "'text/plain'" in error_of(post(pdf_only, files=files), 415)
    assert "request body is empty" in error_of(post(File(), content=b""), 400)
    two = {"one": ("a.bin", b"1"), "two": ("b.bin", b"2")}
    message = error_of(post(File(), files=two), 400)
    assert "expected one file in the multipart form; received 2 (parts: 'one', 'two')" in message
    assert "is empty" in error_of(post(File(), files={"f": ("a.bin", b"")}), 400)


def test_file_outputs(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_bytes(b"<p>")
    assert File().encode_response(path) == (b"<p>", "text/html")
    received = FileData(b"abc", "a.csv", "text/csv")
    received.read()
    assert File().encode_response(received) == (b"abc", "text/csv")
    assert File(mime_type="x/y").encode_response(bytearray(b"z")) == (b"z", "x/y")
    with pytest.raises(InvalidOutput, match="expected bytes, a path or a binary file object"):
        File().encode_response("text")


def test_file_round_trip_and_openapi() -> None:
    desc = File(mime_type="application/pdf")
    body, content_type = desc.encode_request(b"%PDF")
    assert content_type == "application/pdf"
    assert desc.decode_request(body, content_type).read() == b"%PDF"
    back = desc.decode_response(*desc.encode_response(b"%PDF"))
    assert (back.read(), back.content_type) == (b"%PDF", "application/pdf")
    content = desc.openapi_request_body()["content"]
    assert content["application/pdf"]["schema"] == {"type": "string", "format": "binary"}
    assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert list(desc.openapi_response()["content"]) == ["application/pdf"]
    assert "*/*" in File().openapi_request_body()["content"]


# --- Image --------------------------------------------------------------------------------


def test_image_body_in_png_out() -> None:
    response = post(
        Image(mime_type="image/png"),
        content=png_bytes("RGBA"),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    (received,) = response.extensions["seen"]
    assert received.mode == "RGB"  # converted to pil_mode
    assert received.size == (4, 3)
    assert PILImage.open(io.BytesIO(response.content)).getpixel((0, 0)) == (255, 0, 0)


def test_image_multipart_upload_and_array_output() -> None:
    files = {"image": ("cat.png", png_bytes(), "image/png")}
    response = post(Image(pil_mode=None), files=files, fn=np.asarray)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    decoded = PILImage.open(io.BytesIO(response.content))
    assert (decoded.format, decoded.size) == ("JPEG", (4, 3))


def test_image_bad_input() -> None:
    message = error_of(
        post(Image(), content=b"not an image", headers={"content-type": "image/png"}), 400
    )
    assert "not an image Pillow can read" in message
    assert "received 12 bytes of image/png" in message
    truncated = png_bytes(size=(64, 64))[:60]
    assert "not an image" in error_of(post(Image(), content=truncated), 400)
    message = error_of(
        post(Image(), content=png_bytes(), headers={"content-type": "text/plain"}), 415
    )
    assert "image/*, application/octet-stream, multipart/form-data" in message
    assert "empty" in error_of(post(Image(), content=b""), 400)
    files = {"image": ("a.txt", b"hello", "text/plain")}
    assert "'text/plain'" in error_of(post(Image(), files=files), 415)


def test_image_outputs() -> None:
    rgba = PILImage.new("RGBA", (2, 2))
    body, content_type = Image().encode_response(rgba)  # JPEG has no alpha: converted
    assert content_type == "image/jpeg"
    assert PILImage.open(io.BytesIO(body)).mode == "RGB"
    with pytest.raises(InvalidOutput, match=r"PIL\.Image\.Image"):
        Image().encode_response({"not": "an image"})
    with pytest.raises(TiffinError, match=r"not an image/\* type"):
        Image(mime_type="text/plain")


def test_image_round_trip_and_openapi() -> None:
    desc = Image(mime_type="image/png")
    sent = PILImage.new("RGB", (3, 2), color=(1, 2, 3))
    body, content_type = desc.encode_request(sent)
    assert content_type == "image/png"
    received = desc.decode_request(body, content_type)
    assert received.tobytes() == sent.tobytes()
    back = desc.decode_response(*desc.encode_response(received))
    assert back.tobytes() == sent.tobytes()
    assert desc.encode_request(b"raw")[1] == "application/octet-stream"
    content = desc.openapi_request_body()["content"]
    assert set(content) == {"image/*", "application/octet-stream", "multipart/form-data"}
    assert desc.openapi_response()["content"] == {
        "image/png": {"schema": {"type": "string", "format": "binary"}}
    }


# --- Multipart ----------------------------------------------------------------------------


def test_multipart_parts_decoded_by_their_descriptors() -> None:
    desc = Multipart(arr=NumpyNdarray(dtype="float32"), meta=JSON(), photo=Image())
    files = {
        "arr": (None, b"[[1, 2]]", "application/json"),
        "meta": (None, b'{"k": "v"}'),  # no Content-Type: the descriptor's default
        "photo": ("p.png", png_bytes(), "image/png"),
    }

    def api(parts: dict[str, Any]) -> dict[str, Any]:
        return {"arr": parts["arr"] * 2, "meta": {"got": parts["meta"]}, "photo": parts["photo"]}

    response = post(desc, files=files, fn=api)
    assert response.status_code == 200, response.text
    (parts,) = response.extensions["seen"]
    assert parts["arr"].dtype == np.float32
    assert parts["meta"] == {"k": "v"}
    assert parts["photo"].size == (4, 3)
    back = desc.decode_response(response.content, response.headers["content-type"])
    np.testing.assert_array_equal(back["arr"], [[2.0, 4.0]])
    assert back["meta"] == {"got": {"k": "v"}}
    assert back["photo"].format == "JPEG"


def test_multipart_npy_part() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.eye(2))
    files = {"arr": ("a.npy", buffer.getvalue(), "application/octet-stream"), "note": (None, b"hi")}
    response = post(Multipart(arr=NumpyNdarray(), note=Text()), files=files)
    assert response.status_code == 200, response.text
    assert response.extensions["seen"][0]["note"] == "hi"


@pytest.mark.parametrize(
    ("files", "status", "expected"),
    [
        (
            {"arr": (None, b"[1]")},
            400,
            "missing part(s) 'meta'; expected parts 'arr', 'meta', received 'arr'",
        ),
        (
            {"arr": (None, b"[1]"), "meta": (None, b"{}"), "extra": (None, b"1")},
            400,
            "unexpected part(s) 'extra'",
        ),
        ({"arr": (None, b"[[1], [2, 3]]"), "meta": (None, b"{}")}, 400, "part 'arr': ragged array"),
        (
            {"arr": (None, b"[1]"), "meta": (None, b"{")},
            400,
            "part 'meta': request body is not valid JSON",
        ),
        (
            {"arr": (None, b"[1]", "text/plain"), "meta": (None, b"{}")},
            415,
            "part 'arr': Content-Type",
        ),
    ],
)
def test_multipart_bad_parts(files: dict[str, Any], status: int, expected: str) -> None:
    desc = Multipart(arr=NumpyNdarray(), meta=JSON())
    assert expected in error_of(post(desc, files=files), status)


def test_multipart_bad_bodies() -> None:
    desc = Multipart(a=Text())
    message = error_of(post(desc, json={"a": "x"}), 415)
    assert "'application/json' is not accepted here; send one of: multipart/form-data" in message
    headers = {"content-type": "multipart/form-data"}
    assert "no boundary" in error_of(post(desc, content=b"--x", headers=headers), 400)
    assert "empty" in error_of(post(desc, content=b"", headers=headers), 400)
    body, content_type = desc.encode_request({"a": "x"})
    truncated = post(desc, content=body[:-8], headers={"content-type": content_type})
    assert "closing boundary" in error_of(truncated, 400)


def test_multipart_output_that_does_not_fit() -> None:
    desc = Multipart(a=Text(), b=JSON())
    with pytest.raises(InvalidOutput, match="missing 'b', unexpected 'c'"):
        desc.encode_response({"a": "x", "c": 1})
    with pytest.raises(InvalidOutput, match="dict of parts"):
        desc.encode_response(["x"])
    with pytest.raises(TiffinError, match="cannot be nested"):
        Multipart(inner=Multipart(a=Text()))
    with pytest.raises(TiffinError, match="must be an IO descriptor"):
        Multipart(a="text")  # type: ignore[arg-type]


def test_multipart_round_trip_and_openapi() -> None:
    desc = Multipart(arr=NumpyNdarray(dtype="int64"), doc=File(), note=Text())
    value = {"arr": np.arange(3), "doc": b"\x00\x01", "note": "hé"}
    body, content_type = desc.encode_request(value)
    received = desc.decode_request(body, content_type)
    np.testing.assert_array_equal(received["arr"], value["arr"])
    assert received["doc"].read() == b"\x00\x01"
    assert received["doc"].filename == "doc"
    assert received["note"] == "hé"
    back = desc.decode_response(*desc.encode_response(received))
    np.testing.assert_array_equal(back["arr"], value["arr"])
    assert back["doc"].read() == b"\x00\x01"
    assert back["note"] == "hé"

    request_body = desc.openapi_request_body()
    assert request_body["required"] is True
    form = request_body["content"]["multipart/form-data"]
    assert form["schema"]["required"] == ["arr", "doc", "note"]
    assert form["schema"]["properties"]["arr"]["type"] == "array"
    assert form["schema"]["properties"]["doc"] == {"type": "string", "format": "binary"}
    assert form["encoding"]["note"] == {"contentType": "text/plain"}
    assert desc.openapi_response()["content"]["multipart/form-data"]["schema"] == form["schema"]
    assert orjson.loads(orjson.dumps(desc.input_schema()))["properties"]["note"] == {
        "type": "string"
    }
