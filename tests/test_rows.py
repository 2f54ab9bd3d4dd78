"""``tiffin.io.Rows``: what serve-model routes speak, JSON or .npy both ways, the answer's
form chosen by ``Accept``; and the client asking for .npy when it sends it."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pandas as pd
import pytest
import torch

from tiffin.client import APISpec, _headers_for
from tiffin.io import JSON, NumpyNdarray, Rows
from tiffin.io.spec import describe, rebuild
from tiffin.serving.model_service import ModelRows

NPY = "application/octet-stream"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_requests_decode_from_json_rows_columns_and_npy() -> None:
    rows = Rows()
    np.testing.assert_array_equal(rows.decode_request(b"[[1, 2], [3, 4]]", "application/json"),
                                  [[1, 2], [3, 4]])
    frame = rows.decode_request(b'{"a": [1, 2], "b": [3, 4]}', None)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["a", "b"]
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    decoded = rows.decode_request(_npy(x), "application/x-npy")
    assert decoded.dtype == np.float32 and decoded.tolist() == x.tolist()


def test_the_answer_is_npy_when_accept_prefers_it_and_the_result_is_an_array() -> None:
    rows = Rows()
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    body, media_type = rows.encode_response(x, accept=f"{NPY}, application/json;q=0.5")
    assert media_type == NPY
    assert np.load(io.BytesIO(body)).dtype == np.float32
    body, media_type = rows.encode_response(x, accept="application/json")
    assert media_type == "application/json" and orjson.loads(body) == x.tolist()
    assert rows.encode_response(x)[1] == "application/json"  # no Accept: JSON, as before
    # tensors (bfloat16 as float32), Series and numeric frames have an .npy form
    tensor = torch.ones(2, 2, dtype=torch.bfloat16)
    body, media_type = rows.encode_response(tensor, accept=NPY)
    assert media_type == NPY and np.load(io.BytesIO(body)).dtype == np.float32
    assert rows.encode_response(pd.Series([1, 2]), accept=NPY)[1] == NPY
    assert rows.encode_response(pd.DataFrame({"a": [1.0], "b": [2.0]}), accept=NPY)[1] == NPY
    # a table of mixed columns has none: JSON, saying so
    mixed = pd.DataFrame({"label": ["cat"], "score": [0.9]})
    body, media_type = rows.encode_response(mixed, accept=NPY)
    assert media_type == "application/json"
    assert orjson.loads(body) == [{"label": "cat", "score": 0.9}]


def test_a_client_sends_arrays_as_npy_and_reads_either_answer() -> None:
    rows = Rows()
    x = np.arange(4, dtype=np.int32).reshape(2, 2)
    body, content_type = rows.encode_request(x)
    assert content_type == NPY and np.load(io.BytesIO(body)).dtype == np.int32
    assert rows.encode_request(torch.ones(2))[1] == NPY
    assert rows.encode_request([[1, 2]])[1] == "application/json"
    assert rows.decode_response(_npy(x), NPY).tolist() == x.tolist()
    assert rows.decode_response(b"[1, 2]", "application/json") == [1, 2]


def test_serve_model_descriptors_reach_clients_as_rows() -> None:
    described = describe(ModelRows({"type": "array"}, mlflow_model=True))
    assert described == {"type": "Rows", "args": {}}
    assert type(rebuild(described)) is Rows
    assert describe(NumpyNdarray(dtype="float32"))["type"] == "NumpyNdarray"


def test_the_client_asks_for_npy_only_when_it_sends_npy_to_an_api_that_answers_it() -> None:
    rows_api = APISpec("predict", "/predict", Rows(), Rows())
    assert _headers_for(rows_api, NPY) == {"content-type": NPY,
                                           "accept": f"{NPY}, application/json;q=0.5"}
    assert _headers_for(rows_api, "application/json") == {"content-type": "application/json"}
    json_api = APISpec("echo", "/echo", NumpyNdarray(), JSON())
    assert "accept" not in _headers_for(json_api, NPY)


@pytest.mark.parametrize("body", [b"\x93NUMPYgarbage", b"not json"])
def test_bad_bodies_are_400s(body: bytes) -> None:
    from tiffin.exceptions import InvalidArgument

    content_type = NPY if body.startswith(b"\x93") else "application/json"
    with pytest.raises(InvalidArgument):
        Rows().decode_request(body, content_type)
