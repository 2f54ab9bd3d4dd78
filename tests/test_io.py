"""tiffin.io: the descriptor contract, content types, NumpyNdarray, JSON and Text.

Requests go through a real starlette app (``TestClient``), as the server will send them.
Tables are in test_io_tables.py; File, Image and Multipart in test_io_files.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pydantic
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tiffin.exceptions import InvalidOutput, TiffinError
from tiffin.io import JSON, IODescriptor, NumpyNdarray, Text
from tiffin.io.base import OFFLOAD_BYTES, check_content_type, negotiate

# --- the harness -------------------------------------------------------------------------


def post(
    descriptor: IODescriptor,
    *,
    out: IODescriptor | None = None,
    fn: Callable[[Any], Any] | None = None,
    **request: Any,
) -> httpx.Response:
    """POST to a one-route app that decodes with ``descriptor`` and answers through ``out``."""
    seen: list[Any] = []

    async def endpoint(req: Request) -> Response:
        try:
            value = await descriptor.from_request(req)
            seen.append(value)
            result = fn(value) if fn is not None else value
            return (out or descriptor).to_response(result, accept=req.headers.get("accept"))
        except TiffinError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.http_status)

    async def send() -> httpx.Response:
        app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/", **request)

    response = asyncio.run(send())
    response.extensions["seen"] = seen  # what the API function received
    return response


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["error"])


JSON_HEADERS = {"content-type": "application/json"}


# --- content types and negotiation -------------------------------------------------------


def test_content_type_defaults_and_wildcards() -> None:
    accepted = ("application/json", "image/*")
    assert check_content_type(None, accepted) == ("application/json", {})
    assert check_content_type("Image/PNG", accepted)[0] == "image/png"
    assert check_content_type("application/vnd.api+json", accepted)[0] == "application/vnd.api+json"
    assert check_content_type("application/json; charset=UTF-8", accepted)[1] == {
        "charset": "UTF-8"
    }


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/octet-stream", "application/octet-stream"),
        ("application/json;q=0.5, application/octet-stream", "application/octet-stream"),
        ("application/*;q=0.1, application/x-npy;q=0.9", "application/x-npy"),
        ("text/html", "application/json"),  # nothing fits: the default, not a 406
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    offered = ("application/json", "application/octet-stream", "application/x-npy")
    assert negotiate(accept, offered) == expected


def test_import_tiffin_io_is_light_and_tiffin_does_not_load_it() -> None:
    code = (
        "import sys, tiffin\n"
        "assert 'tiffin.io' not in sys.modules\n"
        "import tiffin.io\n"
        "heavy = {'numpy', 'pandas', 'PIL', 'pydantic', 'pyarrow'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- NumpyNdarray -------------------------------------------------------------------------


def test_ndarray_json_in_json_out() -> None:
    desc = NumpyNdarray(dtype="float32", shape=(-1, 2), enforce_dtype=True, enforce_shape=True)
    response = post(desc, content=b"[[1, 2], [3.5, 4]]", headers=JSON_HEADERS, fn=lambda a: a * 2)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == [[2.0, 4.0], [7.0, 8.0]]
    (arr,) = response.extensions["seen"]
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.float32
    assert arr.shape == (2, 2)


def test_ndarray_without_content_type_reads_json() -> None:
    response = post(NumpyNdarray(), content=b"[1, 2, 3]")
    assert response.json() == [1, 2, 3]


def test_ndarray_npy_in_npy_out() -> None:
    sent = np.arange(12, dtype=np.int16).reshape(3, 4)
    buffer = io.BytesIO()
    np.save(buffer, sent)
    response = post(
        NumpyNdarray(dtype="int32", shape=(3, 4), enforce_shape=True),
        content=buffer.getvalue(),
        headers={"content-type": "application/octet-stream", "accept": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    back = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert back.dtype == np.int32  # int16 -> int32 is a same_kind cast
    np.testing.assert_array_equal(back, sent)


def test_ndarray_large_npy_body_decodes_off_the_event_loop() -> None:
    sent = np.ones((OFFLOAD_BYTES // 8 + 10,), dtype=np.float64)
    buffer = io.BytesIO()
    np.save(buffer, sent)
    response = post(
        NumpyNdarray(dtype="float64"),
        content=buffer.getvalue(),
        headers={"content-type": "application/x-npy"},
        fn=lambda a: float(a.sum()),
        out=JSON(),
    )
    assert response.json() == float(sent.size)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[[1, 2], [3", "not valid JSON"),
        (b"", "request body is empty"),
        (b'{"inputs": [1]}', "received a JSON object with keys 'inputs'"),
        (b"[1, null]", "null"),
    ],
)
def test_ndarray_bad_json_is_400(body: bytes, expected: str) -> None:
    message = error_of(post(NumpyNdarray(), content=body, headers=JSON_HEADERS), 400)
    assert expected in message
    assert "expected" in message


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[[1, 2], [3]]", "row [1] has 1 element(s) but row [0] has 2"),
        (b"[1, [2]]", "element [1] is a list but element [0] is a scalar"),
        (b"[[[1], [2]], [[3], [4, 5]]]", "row [1][1] has 2 element(s) but row [0][0] has 1"),
    ],
)
@pytest.mark.parametrize("dtype", [None, "float32"])
def test_ndarray_ragged_is_always_400(body: bytes, detail: str, dtype: str | None) -> None:
    message = error_of(post(NumpyNdarray(dtype=dtype), content=body, headers=JSON_HEADERS), 400)
    assert message.startswith("ragged array")
    assert detail in message


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "image/png", "multipart/form-data"],
)
def test_ndarray_wrong_content_type_is_415(content_type: str) -> None:
    response = post(NumpyNdarray(), content=b"[1]", headers={"content-type": content_type})
    message = error_of(response, 415)
    assert repr(content_type) in message
    assert "application/json, application/octet-stream, application/x-npy" in message


def test_ndarray_non_utf8_charset_is_415() -> None:
    response = post(
        NumpyNdarray(),
        content=b"[1]",
        headers={"content-type": "application/json; charset=latin-1"},
    )
    message = error_of(response, 415)
    assert "'latin-1'" in message
    assert "UTF-8" in message
    ok = post(
        NumpyNdarray(), content=b"[1]", headers={"content-type": "application/json; charset=UTF-8"}
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("dtype", "body", "received"),
    [
        ("float32", b'["abc", "def"]', "<U3"),
        ("int32", b"[1.5, 2.0]", "float64"),  # floats into ints: not same_kind
        ("int8", b"[1, 1000]", "int64"),  # same_kind, but 1000 would wrap around
        ("uint8", b"[-1, 2]", "int64"),
        ("bool", b"[0, 1]", "int64"),
    ],
)
def test_ndarray_dtype_mismatch(dtype: str, body: bytes, received: str) -> None:
    enforced = NumpyNdarray(dtype=dtype, enforce_dtype=True)
    message = error_of(post(enforced, content=body, headers=JSON_HEADERS), 400)
    assert f"expected dtype {np.dtype(dtype)}" in message
    assert f"has dtype {received}" in message

    lenient = post(NumpyNdarray(dtype=dtype), content=body, headers=JSON_HEADERS)
    assert lenient.status_code == 200, lenient.text
    (arr,) = lenient.extensions["seen"]
    assert str(arr.dtype) == received  # passed on as parsed
    assert lenient.json() == orjson.loads(body)


@pytest.mark.parametrize(
    ("body", "dtype"),
    [
        (b"[1, 2]", "float32"),
        (b"[1.5]", "float16"),
        (b"[true, false]", "int64"),
        (b"[0, 255]", "uint8"),  # JSON has one integer type: the values decide
        (b"[1, -2]", "int8"),
    ],
)
def test_ndarray_same_kind_casts(body: bytes, dtype: str) -> None:
    response = post(NumpyNdarray(dtype=dtype, enforce_dtype=True), content=body)
    assert response.status_code == 200, response.text
    assert response.extensions["seen"][0].dtype == np.dtype(dtype)


def test_ndarray_null_is_nan_for_float_dtypes() -> None:
    response = post(NumpyNdarray(dtype="float64"), content=b"[[1, null], [2, 3]]")
    (arr,) = response.extensions["seen"]
    assert np.isnan(arr[0, 1])
    assert response.json() == [[1.0, None], [2.0, 3.0]]


@pytest.mark.parametrize(("shape", "body"), [((-1, 3), b"[[1, 2]]"), ((2,), b"[[1, 2]]")])
def test_ndarray_shape_mismatch(shape: tuple[int, ...], body: bytes) -> None:
    enforced = NumpyNdarray(shape=shape, enforce_shape=True)
    message = error_of(post(enforced, content=body, headers=JSON_HEADERS), 400)
    expected = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    assert f"expected shape {expected}" in message
    assert "has shape (1, 2)" in message
    lenient = post(NumpyNdarray(shape=shape), content=body, headers=JSON_HEADERS)
    assert lenient.status_code == 200
    assert lenient.extensions["seen"][0].shape == (1, 2)


def test_ndarray_bad_npy_is_400() -> None:
    headers = {"content-type": "application/octet-stream"}
    message = error_of(post(NumpyNdarray(), content=b"[[1, 2]]", headers=headers), 400)
    assert "not .npy data" in message
    assert "looks like JSON" in message
    truncated = io.BytesIO()
    np.save(truncated, np.arange(100))
    message = error_of(
        post(NumpyNdarray(), content=truncated.getvalue()[:-40], headers=headers), 400
    )
    assert "not a readable .npy array" in message
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    message = error_of(post(NumpyNdarray(), content=pickled.getvalue(), headers=headers), 400)
    assert "pickle" in message


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (np.arange(6).reshape(2, 3).T, [[0, 3], [1, 4], [2, 5]]),  # not C-contiguous
        (np.float32(2.5), 2.5),
        (np.array(7), 7),
        (np.array(["a", "b"]), ["a", "b"]),
        ([[1, 2]], [[1, 2]]),
        (np.array([np.nan, 1.0]), [None, 1.0]),
        (np.array(["2024-01-02"], dtype="datetime64[D]"), ["2024-01-02T00:00:00"]),
    ],
)
def test_ndarray_output_json(returned: Any, expected: Any) -> None:
    body, content_type = NumpyNdarray().encode_response(returned)
    assert content_type == "application/json"
    assert orjson.loads(body) == expected


def test_ndarray_output_that_does_not_fit_is_invalid_output() -> None:
    with pytest.raises(InvalidOutput, match="complex128"):
        NumpyNdarray().encode_response(np.array([1 + 2j]))
    body, _ = NumpyNdarray().encode_response(np.array([1 + 2j]), accept="application/x-npy")
    assert np.load(io.BytesIO(body))[0] == 1 + 2j
    with pytest.raises(InvalidOutput, match="Python objects"):
        NumpyNdarray().encode_response([{"a": 1}])
    with pytest.raises(InvalidOutput, match=r"expected shape \(-1, 4\)"):
        NumpyNdarray(shape=(-1, 4), enforce_shape=True).encode_response(np.zeros((2, 3)))
    response = post(NumpyNdarray(), out=NumpyNdarray(), content=b"[1]", fn=lambda _: object())
    assert response.status_code == 500


def test_ndarray_round_trip_through_the_client_pair() -> None:
    desc = NumpyNdarray(dtype="float32", shape=(-1, 3), enforce_dtype=True, enforce_shape=True)
    sent = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    body, content_type = desc.encode_request(sent)
    received = desc.decode_request(body, content_type)
    np.testing.assert_array_equal(received, sent)
    for accept in (None, "application/octet-stream"):
        body, content_type = desc.encode_response(received, accept=accept)
        back = desc.decode_response(body, content_type)
        assert back.dtype == np.float32
        np.testing.assert_array_equal(back, sent)


def test_ndarray_bad_arguments() -> None:
    with pytest.raises(TiffinError, match="not a numpy dtype"):
        NumpyNdarray(dtype="floaty")
    with pytest.raises(TiffinError, match="needs a dtype"):
        NumpyNdarray(enforce_dtype=True)
    with pytest.raises(TiffinError, match="needs a shape"):
        NumpyNdarray(enforce_shape=True)


def test_ndarray_openapi() -> None:
    desc = NumpyNdarray(dtype="float32", shape=(-1, 4), enforce_shape=True)
    body = desc.openapi_request_body()
    assert body["required"] is True
    assert set(body["content"]) == {
        "application/json",
        "application/octet-stream",
        "application/x-npy",
    }
    schema = body["content"]["application/json"]["schema"]
    assert schema["type"] == "array"
    assert "minItems" not in schema
    assert schema["items"] == {
        "type": "array",
        "items": {"type": "number"},
        "minItems": 4,
        "maxItems": 4,
    }
    assert body["content"]["application/octet-stream"]["schema"] == {
        "type": "string",
        "format": "binary",
    }
    assert desc.input_schema() == schema
    response = desc.openapi_response()
    assert response["description"]
    assert response["content"]["application/json"]["schema"] == schema
    assert NumpyNdarray().input_schema()["type"] == "array"


# --- JSON ---------------------------------------------------------------------------------


class Inner(pydantic.BaseModel):
    x: int


class Item(pydantic.BaseModel):
    name: str
    price: float
    inner: Inner


@dataclasses.dataclass
class Point:
    x: int
    y: float


def test_json_any_value() -> None:
    response = post(JSON(), json={"a": [1, 2, {"b": None}]}, fn=lambda v: {"got": v})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"got": {"a": [1, 2, {"b": None}]}}
    plus_json = post(JSON(), content=b"[1]", headers={"content-type": "application/problem+json"})
    assert plus_json.json() == [1]


def test_json_pydantic_model_in_and_out() -> None:
    payload = {"name": "tea", "price": 2.5, "inner": {"x": 3}}
    response = post(JSON(pydantic_model=Item), json=payload, fn=lambda item: item)
    assert response.status_code == 200, response.text
    (item,) = response.extensions["seen"]
    assert isinstance(item, Item)
    assert item.inner.x == 3
    assert response.json() == payload


def test_json_pydantic_validation_failure_is_one_readable_400() -> None:
    payload = {"name": "tea", "price": "lots", "inner": {"x": "q"}}
    message = error_of(post(JSON(Item), json=payload), 400)
    assert message.startswith("request body does not match Item: 2 validation error(s)")
    assert "price: Input should be a valid number" in message
    assert "(received 'lots')" in message
    assert "inner.x: Input should be a valid integer" in message
    message = error_of(post(JSON(Item), json={"price": 1, "inner": {"x": 1}}), 400)
    assert "name: Field required" in message
    message = error_of(post(JSON(Item), json=[1, 2]), 400)
    assert "does not match Item" in message


@pytest.mark.parametrize("model", [None, Item])
def test_json_malformed_and_empty_are_400(model: type | None) -> None:
    message = error_of(post(JSON(model), content=b'{"name": ', headers=JSON_HEADERS), 400)
    assert "not valid JSON" in message
    message = error_of(post(JSON(model), content=b"", headers=JSON_HEADERS), 400)
    assert "empty" in message


def test_json_wrong_content_type_and_charset_are_415() -> None:
    message = error_of(post(JSON(), content=b"{}", headers={"content-type": "text/csv"}), 415)
    assert "'text/csv'" in message
    assert "application/json" in message
    headers = {"content-type": "application/json; charset=utf-16"}
    assert "utf-16" in error_of(post(JSON(), content=b"{}", headers=headers), 415)


def test_json_accepts_a_byte_order_mark() -> None:
    assert post(JSON(), content=b'\xef\xbb\xbf{"a": 1}', headers=JSON_HEADERS).json() == {"a": 1}


def test_json_output_types() -> None:
    returned = {
        "array": np.arange(3),
        "slice": np.arange(6).reshape(2, 3)[:, ::2],
        "scalar": np.float32(1.5),
        "int": np.int64(4),
        "model": Inner(x=1),
        "point": Point(1, 2.0),
        "set": {5},
        "longdouble": np.ones(2, dtype=np.longdouble),
        "reversed_dates": np.array(["2020-01-01", "2021-01-01"], dtype="datetime64[s]")[::-1],
        1: "non-string key",
    }
    body, _ = JSON().encode_response(returned)
    assert orjson.loads(body) == {
        "array": [0, 1, 2],
        "slice": [[0, 2], [3, 5]],
        "scalar": 1.5,
        "int": 4,
        "model": {"x": 1},
        "point": {"x": 1, "y": 2.0},
        "set": [5],
        "longdouble": [1.0, 1.0],
        "reversed_dates": ["2021-01-01T00:00:00", "2020-01-01T00:00:00"],
        "1": "non-string key",
    }
    assert orjson.loads(JSON().encode_response(Item(name="a", price=1, inner=Inner(x=2)))[0]) == {
        "name": "a",
        "price": 1.0,
        "inner": {"x": 2},
    }
    with pytest.raises(InvalidOutput, match="cannot encode the API's return value"):
        JSON().encode_response({"f": object()})
    response = post(JSON(), json={}, fn=lambda _: {"bad": object()})
    assert "cannot encode" in error_of(response, 500)


def test_json_round_trip_through_the_client_pair() -> None:
    desc = JSON(Item)
    item = Item(name="a", price=1.5, inner=Inner(x=2))
    body, content_type = desc.encode_request(item)
    assert content_type == "application/json"
    assert desc.decode_request(body, content_type) == item
    body, content_type = desc.encode_response(item)
    assert desc.decode_response(body, content_type) == item
    plain = JSON()
    assert plain.decode_response(*plain.encode_request({"a": [1, None]})) == {"a": [1, None]}


def test_json_openapi_inlines_nested_models() -> None:
    body = JSON(Item).openapi_request_body()
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert "$defs" not in orjson.dumps(schema).decode()
    assert "$ref" not in orjson.dumps(schema).decode()
    assert schema["properties"]["inner"]["properties"]["x"]["type"] == "integer"
    assert "$defs" in JSON(Item).input_schema()  # the standalone JSON schema keeps them
    response = JSON(Item).openapi_response()
    assert response["content"]["application/json"]["schema"] == schema
    assert JSON().openapi_request_body()["content"]["application/json"]["schema"] == {
        "description": "any JSON value"
    }


# --- Text ---------------------------------------------------------------------------------


def test_text_in_and_out() -> None:
    response = post(
        Text(), content="héllo".encode(), headers={"content-type": "text/plain"}, fn=str.upper
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "HÉLLO"
    assert post(Text(), content=b"").text == ""  # the empty string is a valid text


def test_text_bad_input() -> None:
    message = error_of(
        post(Text(), content=b"ok \xff", headers={"content-type": "text/plain"}), 400
    )
    assert "not valid UTF-8" in message
    assert "offset 3" in message
    assert "text/plain" in error_of(post(Text(), json={"a": 1}), 415)
    headers = {"content-type": "text/plain; charset=iso-8859-1"}
    assert "iso-8859-1" in error_of(post(Text(), content=b"x", headers=headers), 415)
    assert "expects a str" in error_of(post(Text(), content=b"x", fn=len), 500)


def test_text_round_trip_and_openapi() -> None:
    body, content_type = Text().encode_request("naïve")
    assert Text().decode_request(body, content_type) == "naïve"
    assert Text().decode_response(*Text().encode_response("naïve")) == "naïve"
    assert Text().openapi_request_body() == {
        "required": True,
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    assert Text().openapi_response()["content"] == {"text/plain": {"schema": {"type": "string"}}}
