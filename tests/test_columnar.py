"""Small CSV and Parquet bodies read without pandas (tiffin.io.columnar) give exactly what the
pandas readers give, and every body the plain readers are unsure of still goes to pandas."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from tiffin.exceptions import InvalidArgument
from tiffin.frameworks.mlflow.inputs import InputSchema
from tiffin.io import columnar
from tiffin.serving import mlflow_inputs


def tensor(dtype: str, width: int = 3) -> InputSchema:
    schema = InputSchema.from_signature(
        [{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": [-1, width]}}]
    )
    assert schema is not None
    return schema


MIXED = InputSchema.from_signature(
    [
        {"type": "long", "name": "n", "required": True},
        {"type": "integer", "name": "i", "required": True},
        {"type": "double", "name": "x", "required": True},
        {"type": "float", "name": "f", "required": True},
        {"type": "string", "name": "city", "required": True},
        {"type": "boolean", "name": "ok", "required": True},
    ]
)


@pytest.fixture
def pandas_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain readers turned off: what the pandas path gives."""
    monkeypatch.setattr(mlflow_inputs, "csv_rows", lambda body: None)
    monkeypatch.setattr(mlflow_inputs, "parquet_columns", lambda body: None)


@pytest.fixture
def no_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    """pandas' readers broken: only the plain readers can answer."""

    def broken(*args: object, **kwargs: object) -> None:
        raise AssertionError("pandas' reader was called")

    monkeypatch.setattr(pd, "read_csv", broken)
    monkeypatch.setattr(pd, "read_parquet", broken)


def parquet(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out, index=False)
    return out.getvalue()


def same(a: object, b: object) -> None:
    if isinstance(a, pd.DataFrame):
        assert isinstance(b, pd.DataFrame)
        pd.testing.assert_frame_equal(a, b)
    else:
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


CSV_CASES = [
    (b"a,b,c\n1.5,2,3\n4,5e3,-6.25\n", "float32"),
    (b"a,b,c\n1.5,2,3\n", "float64"),
    (b"a,b,c\n1,2,3\n-4,5,6\n", "int64"),
    (b"a,b,c\n1,2,3\n", "int32"),
    (b"a,b,c\n1,2,3\n", "uint8"),
]


@pytest.mark.parametrize(("body", "dtype"), CSV_CASES)
def test_csv_tensor_matches_pandas(
    body: bytes, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = tensor(dtype)
    plain = mlflow_inputs.from_csv(body, schema)
    monkeypatch.setattr(mlflow_inputs, "csv_rows", lambda body: None)
    same(plain, mlflow_inputs.from_csv(body, schema))
    assert plain.dtype == np.dtype(dtype)


MIXED_CSV = b'n,i,x,f,city,ok,extra\n3,4,1.5,2.25,Oslo,True,9\n-7,0,2,1e3,"Lima,Peru",false,8\n'


def test_csv_columns_match_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = mlflow_inputs.from_csv(MIXED_CSV, MIXED)
    assert list(plain.columns) == ["n", "i", "x", "f", "city", "ok"]  # extra dropped
    numeric = [str(plain[c].dtype) for c in ("n", "i", "x", "f", "ok")]
    assert numeric == ["int64", "int32", "float64", "float32", "bool"]
    assert plain["city"].tolist() == ["Oslo", "Lima,Peru"]
    monkeypatch.setattr(mlflow_inputs, "csv_rows", lambda body: None)
    same(plain, mlflow_inputs.from_csv(MIXED_CSV, MIXED))


@pytest.mark.parametrize(
    "body",
    [b"a,b,c\n1,2,3\n4,5,6\n", b"a,b\n1.5,x\n2,y\n", b"a,b\n1,True\n2,false\n", b"a\n1\n2.5\n"],
)
def test_csv_without_signature_matches_pandas(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = mlflow_inputs.from_csv(body, None)
    monkeypatch.setattr(mlflow_inputs, "csv_rows", lambda body: None)
    same(plain, mlflow_inputs.from_csv(body, None))


def test_small_plain_csv_never_reaches_pandas(no_pandas: None) -> None:
    assert mlflow_inputs.from_csv(CSV_CASES[0][0], tensor("float32")).shape == (2, 3)
    assert len(mlflow_inputs.from_csv(MIXED_CSV, MIXED)) == 2
    assert mlflow_inputs.from_csv(b"a,b\n1,2\n", None).shape == (1, 2)


@pytest.mark.parametrize(
    "body",
    [
        b"a,b,c\n1,,3\n",  # an empty cell: null to pandas
        b"a,b,c\n1,NA,3\n",  # a missing-value word
        b"a,b,c\n1, 2,3\n",  # whitespace
        b"a,b,c\n1_0,2,3\n",  # Python reads 1_0 as ten, pandas as text
        b"a,b,c\n1,2\n",  # a short row
        b"a,a,c\n1,2,3\n",  # duplicate names: pandas renames them
        b"a,b,c\r\n1,2,3\r\n",  # carriage returns
        b"a,b,c\n",  # no rows
    ],
)
def test_unsure_csv_goes_to_pandas(body: bytes) -> None:
    assert columnar.csv_rows(body) is None


def test_big_csv_goes_to_pandas() -> None:
    body = b"a\n" + b"1\n" * columnar.SMALL
    assert columnar.csv_rows(body) is None


def test_csv_value_a_type_cannot_hold_is_still_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"3\.5"):
        mlflow_inputs.from_csv(b"a,b,c\n1,2,3.5\n", tensor("int64"))
    with pytest.raises(InvalidArgument, match="column 'i'"):
        mlflow_inputs.from_csv(b"n,i,x,f,city,ok\n1,2.5,1,1,a,True\n", MIXED)
    with pytest.raises(InvalidArgument, match="column 'ok'"):
        mlflow_inputs.from_csv(b"n,i,x,f,city,ok\n1,2,1,1,a,maybe\n", MIXED)


PARQUET_FRAMES = [
    pd.DataFrame(np.arange(6, dtype="float32").reshape(2, 3), columns=["a", "b", "c"]),
    pd.DataFrame(np.arange(6, dtype="int64").reshape(2, 3), columns=["a", "b", "c"]),
]


@pytest.mark.parametrize("frame", PARQUET_FRAMES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_parquet_tensor_matches_pandas(
    frame: pd.DataFrame, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, schema = parquet(frame), tensor(dtype)
    try:
        plain = mlflow_inputs.from_parquet(body, schema)
    except InvalidArgument as exc:  # float32 -> int64 is refused both ways
        monkeypatch.setattr(mlflow_inputs, "parquet_columns", lambda body: None)
        with pytest.raises(InvalidArgument):
            mlflow_inputs.from_parquet(body, schema)
        assert "int64" in str(exc)
        return
    monkeypatch.setattr(mlflow_inputs, "parquet_columns", lambda body: None)
    same(plain, mlflow_inputs.from_parquet(body, schema))


MIXED_FRAME = pd.DataFrame(
    {
        "n": np.array([3, -7], dtype="int64"),
        "i": np.array([4, 0], dtype="int32"),
        "x": [1.5, 2.0],
        "f": np.array([2.25, 1e3], dtype="float32"),
        "city": ["Oslo", "Lima"],
        "ok": [True, False],
    }
)


def test_parquet_columns_and_unsigned_match_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    body = parquet(MIXED_FRAME)
    plain_mixed = mlflow_inputs.from_parquet(body, MIXED)
    plain_unsigned = mlflow_inputs.from_parquet(body, None)
    monkeypatch.setattr(mlflow_inputs, "parquet_columns", lambda body: None)
    same(plain_mixed, mlflow_inputs.from_parquet(body, MIXED))
    same(plain_unsigned, mlflow_inputs.from_parquet(body, None))


def test_small_plain_parquet_never_reaches_pandas(no_pandas: None) -> None:
    assert mlflow_inputs.from_parquet(parquet(MIXED_FRAME), MIXED).shape == (2, 6)
    assert mlflow_inputs.from_parquet(parquet(PARQUET_FRAMES[0]), tensor("float32")).shape == (2, 3)


def test_unsure_parquet_goes_to_pandas() -> None:
    with_null = pd.DataFrame({"a": [1.0, None], "s": ["x", None]})
    indexed = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.Index(["r1", "r2"], name="row"))
    dates = pd.DataFrame({"d": pd.to_datetime(["2026-01-01"])})
    out = io.BytesIO()
    indexed.to_parquet(out)
    assert columnar.parquet_columns(parquet(with_null)) is None
    assert columnar.parquet_columns(out.getvalue()) is None
    assert columnar.parquet_columns(parquet(dates)) is None
    assert columnar.parquet_columns(b"not parquet at all") is None


# -- serving's columnar mode: dicts of columns, one frame per batch ----------------------------

MIXED_SPECS = [
    {"type": "long", "name": "n", "required": True},
    {"type": "integer", "name": "i", "required": True},
    {"type": "double", "name": "x", "required": True},
    {"type": "float", "name": "f", "required": True},
    {"type": "string", "name": "city", "required": True},
    {"type": "boolean", "name": "ok", "required": True},
]
ROWS = [[3, 4, 1.5, 2.25, "Oslo", True], [-7, 0, 2.0, 1e3, "Lima", False]]


def test_columnar_mode_gives_typed_dicts_a_runner_merges_into_one_frame() -> None:
    from tiffin.runner import containers

    served = InputSchema.from_signature(MIXED_SPECS, columnar=True)
    runner_side = InputSchema.from_signature(MIXED_SPECS)
    assert served is not None and runner_side is not None
    names = [s["name"] for s in MIXED_SPECS]
    one = mlflow_inputs.from_invocation(
        {"dataframe_split": {"columns": names, "data": ROWS[:1]}}, served
    )
    two = mlflow_inputs.from_invocation(
        {"dataframe_records": [dict(zip(names, ROWS[1], strict=True))]}, served
    )
    for part in (one, two):
        assert isinstance(part, dict) and list(part) == names
        assert all(isinstance(v, np.ndarray) and v.ndim == 1 for v in part.values())
    assert one["i"].dtype == np.int32 and one["f"].dtype == np.float32
    assert containers.batch_key(one, 0) == containers.batch_key(two, 0)  # they share a batch
    merged = containers.concat([one, two], 0)
    expected = runner_side.from_inputs(ROWS)  # what the model got before: one frame of both
    same(runner_side.convert(merged), expected)
    # a frame still where an index was sent (the model may answer with it)
    indexed = mlflow_inputs.from_invocation(
        {"dataframe_split": {"columns": names, "data": ROWS, "index": [7, 9]}}, served
    )
    assert isinstance(indexed, pd.DataFrame) and indexed.index.tolist() == [7, 9]


def test_columnar_mode_for_small_csv_bodies() -> None:
    served = InputSchema.from_signature(MIXED_SPECS, columnar=True)
    out = mlflow_inputs.from_csv(MIXED_CSV, served)
    assert isinstance(out, dict) and out["city"].tolist() == ["Oslo", "Lima,Peru"]
    assert out["ok"].tolist() == [True, False]


def test_unsigned_tables_stay_columns_until_the_runnable_frames_them() -> None:
    from tiffin.frameworks.mlflow.tables import unsigned
    from tiffin.runner import containers

    records = [{"a": 1, "b": 2.5, "c": "x"}, {"a": 3, "b": 4.0, "c": "y"}]
    bodies = [
        {"dataframe_records": records},
        {"dataframe_split": {"columns": ["a", "b", "c"], "data": [[1, 2.5, "x"], [3, 4.0, "y"]]}},
        {"inputs": records},
        {"instances": {"a": [1, 3], "b": [2.5, 4.0], "c": ["x", "y"]}},
    ]
    parts = [mlflow_inputs.from_invocation(body, None, columnar=True) for body in bodies]
    for part in parts:
        assert part == {"a": [1, 3], "b": [2.5, 4.0], "c": ["x", "y"]}
    merged = containers.concat(parts[:2], 0)
    same(unsigned(merged), pd.DataFrame(records + records))
    assert isinstance(mlflow_inputs.from_invocation(bodies[0], None), pd.DataFrame)  # not asked


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": {"columns": ["a"], "data": [[1]], "index": [5]}},  # an index
        {"dataframe_records": [{"a": 1}, {"b": 2}]},  # records with other keys
        {"dataframe_records": [{"a": [1, 2]}]},  # a cell holding a list
        {"inputs": {"a": [1, 2], "b": [3]}},  # columns of different lengths (400 below)
        {"inputs": [[1, 2], [3, 4]]},  # nested lists: an ndarray, as MLflow
    ],
)
def test_unsigned_tables_that_are_not_plain_columns_are_built_as_before(body: dict) -> None:
    try:
        out = mlflow_inputs.from_invocation(body, None, columnar=True)
    except InvalidArgument:
        assert "inputs" in body
        return
    assert not isinstance(out, dict)


# -- tables of one dtype for a model without a signature: one block per batch ------------------

ONE_DTYPE_BODIES = [
    {"inputs": {"a": [1.5, -2.0], "b": [3.25, 4.0]}},
    {"dataframe_split": {"columns": ["a", "b"], "data": [[1.5, 3.25], [-2.0, 4.0]]}},
    {"dataframe_records": [{"a": 1.5, "b": 3.25}, {"a": -2.0, "b": 4.0}]},
    {"instances": [{"a": 1.5, "b": 3.25}, {"a": -2.0, "b": 4.0}]},
    {"inputs": {"a": [1, -2], "b": [3, 2**63 - 1]}},  # int64, its top included
]


@pytest.mark.parametrize("body", ONE_DTYPE_BODIES)
def test_unsigned_cells_of_one_type_come_as_the_block_pandas_frames(body: dict) -> None:
    """Every cell a float (or every one an int64): a Table, framed by the runnable as pandas
    frames the dict of columns (same columns, dtype and values), merged as an array."""
    from tiffin.frameworks.mlflow.runnable import as_model_input
    from tiffin.frameworks.mlflow.tables import unsigned
    from tiffin.runner import containers

    got = mlflow_inputs.from_invocation(body, None, columnar=True)
    assert type(got) is containers.Table and got.names == ("a", "b")
    envelope = next(iter(body.values()))
    if "dataframe_split" in body:
        envelope = [dict(zip(envelope["columns"], row, strict=True)) for row in envelope["data"]]
    elif isinstance(envelope, dict):
        rows = zip(*envelope.values(), strict=True)
        envelope = [dict(zip(envelope, row, strict=True)) for row in rows]
    same(as_model_input(got, None), unsigned(envelope))
    merged = containers.concat([got, got], 0)
    framed, expected = as_model_input(merged, None), unsigned(envelope + envelope)
    same(framed, expected)
    # laid out alike (each block C-contiguous), so that a model computes in the same order
    assert [b.values.flags.c_contiguous for b in framed._mgr.blocks] == [
        b.values.flags.c_contiguous for b in expected._mgr.blocks
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": {"a": [1, 2], "b": [2.5, 3.0]}},  # int64 and float64 columns
        {"inputs": {"a": [1, 2**63]}},  # beyond int64: pandas makes uint64
        {"inputs": {"a": [1.5, 2.0], "b": [True, False]}},
    ],
)
def test_unsigned_cells_of_several_types_stay_columns(body: dict) -> None:
    from tiffin.frameworks.mlflow.tables import unsigned

    got = mlflow_inputs.from_invocation(body, None, columnar=True)
    assert type(got) is dict
    same(unsigned(got), unsigned(body["inputs"]))


def test_unsigned_csv_of_numbers_of_one_type_comes_as_a_table() -> None:
    from tiffin.frameworks.mlflow.runnable import as_model_input
    from tiffin.runner.containers import Table

    body = b"a,b,c\n1.5,2,3\n4,5e3,-6.25\n"
    got = mlflow_inputs.from_csv(body, None, columnar=True)
    assert type(got) is Table and got.names == ("a", "b", "c")
    same(as_model_input(got, None), pd.read_csv(io.BytesIO(body)))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_unsigned_parquet_of_one_dtype_comes_as_a_table_framed_as_read_parquet(dtype: str) -> None:
    """The file's own dtype kept (float32 stays float32), as pd.read_parquet frames it; a file
    of several dtypes still comes as the frame."""
    from tiffin.frameworks.mlflow.runnable import as_model_input
    from tiffin.runner.containers import Table

    frame = pd.DataFrame(np.arange(6).reshape(2, 3).astype(dtype), columns=["a", "b", "c"])
    body = parquet(frame)
    got = mlflow_inputs.from_parquet(body, None, columnar=True)
    assert type(got) is Table and got.values.dtype == np.dtype(dtype)
    same(as_model_input(got, None), pd.read_parquet(io.BytesIO(body)))
    mixed = parquet(MIXED_FRAME)
    same(mlflow_inputs.from_parquet(mixed, None, columnar=True), pd.read_parquet(io.BytesIO(mixed)))
