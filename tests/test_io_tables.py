"""tiffin.io.PandasDataFrame: every JSON orient, CSV, Parquet, columns, dtypes and shapes."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pandas as pd
import pytest

from tests.test_io import JSON_HEADERS, error_of, post
from tiffin.exceptions import InvalidArgument, InvalidOutput, TiffinError
from tiffin.io import PandasDataFrame

FRAME = pd.DataFrame({"a": [1, 2, 3], "b": [1.5, 2.5, None], "c": ["x", "y", "z"]})
ORIENTS = ["records", "split", "index", "columns", "values", "table"]
STRINGS = str(pd.Series(["x"]).dtype)  # "str" on pandas 3, "object" before


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.to_parquet(buffer, engine="pyarrow")
    return buffer.getvalue()


def test_records_in_records_out() -> None:
    desc = PandasDataFrame(columns=["a", "b"], dtype={"a": "float32"}, enforce_dtype=True)
    rows = [{"b": 1.5, "a": 1}, {"b": 2.5, "a": 2}]
    response = post(desc, json=rows, fn=lambda df: df.assign(total=df.a + df.b))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == [
        {"a": 1.0, "b": 1.5, "total": 2.5},
        {"a": 2.0, "b": 2.5, "total": 4.5},
    ]
    (df,) = response.extensions["seen"]
    assert list(df.columns) == ["a", "b"]  # in the configured order
    assert str(df.a.dtype) == "float32"


@pytest.mark.parametrize("sent", ORIENTS)
@pytest.mark.parametrize("configured", ["records", "split", "values"])
def test_every_orient_is_read_whatever_is_configured(sent: str, configured: str) -> None:
    desc = PandasDataFrame(orient=configured, columns=["a", "b", "c"])
    body = FRAME.to_json(orient=sent).encode()
    df = desc.decode_request(body, "application/json")
    pd.testing.assert_frame_equal(df, FRAME, check_dtype=False)


@pytest.mark.parametrize("sent", ORIENTS)
def test_every_orient_over_http(sent: str) -> None:
    response = post(
        PandasDataFrame(orient="split", columns=["a", "b", "c"]),
        content=FRAME.to_json(orient=sent).encode(),
        headers=JSON_HEADERS,
    )
    assert response.status_code == 200, response.text
    assert response.json()["columns"] == ["a", "b", "c"]
    assert response.json()["data"][1] == [2, 2.5, "y"]


def test_index_and_columns_orients_tell_apart() -> None:
    by_index = {"r1": {"a": 1, "b": 2}, "r2": {"a": 3, "b": 4}}
    body = orjson.dumps(by_index)
    message = error_of(post(PandasDataFrame(), content=body, headers=JSON_HEADERS), 400)
    assert "ambiguous" in message
    assert "'columns'" in message
    assert "'index'" in message
    for desc in (PandasDataFrame(orient="index"), PandasDataFrame(columns=["a", "b"])):
        df = desc.decode_request(body, None)
        assert list(df.columns) == ["a", "b"]
        assert list(df.index) == ["r1", "r2"]
    df = PandasDataFrame(orient="columns").decode_request(body, None)
    assert list(df.columns) == ["r1", "r2"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"a": [1, 2], "b": [3, 4]}, {"a": [1, 2], "b": [3, 4]}),  # a dict of columns
        ({"a": 1, "b": "x"}, {"a": [1], "b": ["x"]}),  # one record
        ([], {}),
    ],
)
def test_other_table_shapes(body: Any, expected: dict[str, list[Any]]) -> None:
    df = PandasDataFrame().decode_request(orjson.dumps(body), None)
    assert df.to_dict(orient="list") == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'[{"a": 1', "not valid JSON"),
        (b"", "request body is empty"),
        (b"[1, 2, 3]", "a JSON array of numbers is not a table"),
        (b"[[1, 2], [3]]", "orient 'values': row [1] has 1 item(s), expected a list of 2"),
        (b'[{"a": 1}, [1]]', "orient 'records': row [1] is a JSON array"),
        (b'{"a": [1, 2], "b": [3]}', "lists of one length; received 'a': 2, 'b': 1"),
        (b'{"columns": ["a"], "data": [[1, 2]]}', "orient 'split'"),
        (b'{"schema": {"fields": 3}, "data": [1]}', "orient 'table'"),
        (b'{"a": {"x": 1}, "b": [1]}', "mix objects, arrays and scalars"),
        (b'"a table"', "received a JSON string"),
    ],
)
def test_bad_json_tables_are_400(body: bytes, expected: str) -> None:
    message = error_of(post(PandasDataFrame(), content=body, headers=JSON_HEADERS), 400)
    assert expected in message


def test_values_orient_takes_column_names_from_the_descriptor() -> None:
    df = PandasDataFrame(orient="values", columns=["x", "y"]).decode_request(b"[[1, 2]]", None)
    assert df.to_dict(orient="records") == [{"x": 1, "y": 2}]
    with pytest.raises(InvalidArgument, match=r"rows have 3 item\(s\), expected 2"):
        PandasDataFrame(columns=["x", "y"]).decode_request(b"[[1, 2, 3]]", None)


def test_csv_in_csv_out() -> None:
    response = post(
        PandasDataFrame(columns=["a", "b"]),
        content=b"b,a\n1,x\n2,y\n",
        headers={"content-type": "text/csv; charset=utf-8", "accept": "text/csv"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv"
    assert response.text == "a,b\nx,1\ny,2\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"a,b\n1,2\n3,4,5\n", "Expected 2 fields in line 3, saw 3"),
        (b"\xff\xfe\x00garbage", "not valid CSV"),
    ],
)
def test_bad_csv_is_400(body: bytes, expected: str) -> None:
    headers = {"content-type": "text/csv"}
    message = error_of(post(PandasDataFrame(), content=body, headers=headers), 400)
    assert "not valid CSV" in message
    assert expected in message
    assert "\n" not in message


def test_csv_in_latin1_is_415() -> None:
    headers = {"content-type": "text/csv; charset=latin-1"}
    assert "latin-1" in error_of(post(PandasDataFrame(), content=b"a\n1\n", headers=headers), 415)


@pytest.mark.parametrize(
    "content_type",
    ["application/vnd.apache.parquet", "application/x-parquet", "application/octet-stream"],
)
def test_parquet_in_parquet_out(content_type: str) -> None:
    response = post(
        PandasDataFrame(),
        content=parquet_bytes(FRAME),
        headers={"content-type": content_type, "accept": "application/vnd.apache.parquet"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(response.content)), FRAME)


def test_bad_parquet_is_400() -> None:
    headers = {"content-type": "application/x-parquet"}
    message = error_of(post(PandasDataFrame(), content=b"PAR1 not really", headers=headers), 400)
    assert "not a valid Parquet file" in message
    assert "application/x-parquet" in message


def test_wrong_content_type_is_415() -> None:
    message = error_of(
        post(PandasDataFrame(), content=b"x", headers={"content-type": "text/plain"}), 415
    )
    assert "application/json, text/csv, application/vnd.apache.parquet" in message


def test_missing_and_extra_columns() -> None:
    rows = [{"a": 1, "z": 2}]
    message = error_of(post(PandasDataFrame(columns=["a", "b", "c"]), json=rows), 400)
    assert "missing column(s) 'b', 'c'" in message
    assert "expected columns 'a', 'b', 'c', received 'a', 'z'" in message
    lenient = post(PandasDataFrame(columns=["a"]), json=rows)
    assert lenient.json() == [{"a": 1}]  # extras dropped
    strict = PandasDataFrame(columns=["a"], enforce_shape=True)
    assert "unexpected column(s) 'z'" in error_of(post(strict, json=rows), 400)


@pytest.mark.parametrize(
    ("dtype", "rows", "column", "received"),
    [
        ("float32", [{"a": "x"}], "a", STRINGS),
        ({"a": "int64"}, [{"a": 1.5}], "a", "float64"),  # would truncate silently in pandas
        ({"a": "int64"}, [{"a": 1}, {"a": None}], "a", "float64"),  # NaN has no int form
    ],
)
def test_dtype_mismatch(dtype: Any, rows: list[dict[str, Any]], column: str, received: str) -> None:
    enforced = PandasDataFrame(dtype=dtype, enforce_dtype=True)
    message = error_of(post(enforced, json=rows), 400)
    assert f"column {column!r} has dtype {received}" in message
    target = dtype if isinstance(dtype, str) else dtype[column]
    assert f"expected dtype {target}" in message
    lenient = post(PandasDataFrame(dtype=dtype), json=rows)
    assert lenient.status_code == 200
    assert str(lenient.extensions["seen"][0][column].dtype) == received


def test_dtype_conversions_that_work() -> None:
    desc = PandasDataFrame(dtype={"a": "float32", "b": "str"}, enforce_dtype=True)
    df = desc.decode_request(b'[{"a": 1, "b": 2}, {"a": "2.5", "b": 3}]', None)
    assert str(df.a.dtype) == "float32"
    assert df.a.tolist() == [1.0, 2.5]
    assert df.b.tolist() == ["2", "3"]


def test_shape_mismatch() -> None:
    rows = [{"a": 1, "b": 2}]
    enforced = PandasDataFrame(shape=(-1, 3), enforce_shape=True)
    message = error_of(post(enforced, json=rows), 400)
    assert "has shape (1, 2), expected shape (-1, 3)" in message
    assert post(PandasDataFrame(shape=(-1, 3)), json=rows).status_code == 200


def test_outputs() -> None:
    desc = PandasDataFrame(orient="split")
    body, content_type = desc.encode_response(FRAME)
    assert content_type == "application/json"
    assert orjson.loads(body)["columns"] == ["a", "b", "c"]
    body, _ = desc.encode_response(FRAME["a"])
    assert orjson.loads(body) == [1, 2, 3]  # a Series is a JSON list
    body, _ = desc.encode_response(FRAME["a"], accept="text/csv")
    assert body == b"a\n1\n2\n3\n"
    body, _ = PandasDataFrame().encode_response([[1, 2]])
    assert orjson.loads(body) == [{"0": 1, "1": 2}]
    with pytest.raises(InvalidOutput, match="not a table"):
        desc.encode_response(42)
    with pytest.raises(InvalidOutput, match="missing column"):
        PandasDataFrame(columns=["q"]).encode_response(FRAME)
    response = post(PandasDataFrame(), json=[{"a": 1}], fn=lambda _: "not a frame")
    assert response.status_code == 500


@pytest.mark.parametrize("orient", ORIENTS)
def test_round_trip_through_the_client_pair(orient: str) -> None:
    desc = PandasDataFrame(orient=orient, columns=["a", "b", "c"])
    body, content_type = desc.encode_request(FRAME)
    received = desc.decode_request(body, content_type)
    pd.testing.assert_frame_equal(received, FRAME, check_dtype=False)
    for accept in (None, "text/csv", "application/vnd.apache.parquet"):
        body, content_type = desc.encode_response(received, accept=accept)
        back = desc.decode_response(body, content_type)
        pd.testing.assert_frame_equal(back, FRAME, check_dtype=False)
    series = desc.decode_response(*desc.encode_response(FRAME["a"]))
    assert series.tolist() == [1, 2, 3]


def test_bad_arguments() -> None:
    with pytest.raises(TiffinError, match="orient 'rows' is not one of"):
        PandasDataFrame(orient="rows")
    with pytest.raises(TiffinError, match="needs a dtype"):
        PandasDataFrame(enforce_dtype=True)
    with pytest.raises(TiffinError, match=r"must be \(rows, columns\)"):
        PandasDataFrame(shape=(1, 2, 3))


def test_openapi() -> None:
    desc = PandasDataFrame(columns=["a", "b"])
    body = desc.openapi_request_body()
    assert body["required"] is True
    assert list(body["content"]) == [
        "application/json",
        "text/csv",
        "application/vnd.apache.parquet",
        "application/x-parquet",
        "application/octet-stream",
    ]
    schema = body["content"]["application/json"]["schema"]
    assert schema["type"] == "array"
    assert schema["items"]["required"] == ["a", "b"]
    assert body["content"]["text/csv"]["schema"] == {"type": "string"}
    assert body["content"]["application/x-parquet"]["schema"]["format"] == "binary"
    response = desc.openapi_response()
    assert set(response["content"]) == {
        "application/json",
        "text/csv",
        "application/vnd.apache.parquet",
    }
    for orient in ORIENTS:
        assert PandasDataFrame(orient=orient).input_schema()["description"].endswith(repr(orient))


def test_json_descriptor_writes_pandas_values() -> None:
    from tiffin.io import JSON

    returned = {
        "frame": pd.DataFrame({"x": [1, 2]}),
        "series": pd.Series([1.5, None]),
        "when": pd.Timestamp("2024-05-06 07:08"),
        "missing": pd.NA,
    }
    assert orjson.loads(JSON().encode_response(returned)[0]) == {
        "frame": [{"x": 1}, {"x": 2}],
        "series": [1.5, None],
        "when": "2024-05-06T07:08:00",
        "missing": None,
    }
