"""Random CSV and Parquet bodies: tiffin's plain readers (tiffin.io.columnar, through
tiffin.serving.mlflow_inputs) give exactly the frame pandas' readers give -- same columns,
dtypes and values -- or leave the body to pandas. Seeded, so a failure replays."""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiffin.frameworks.mlflow.cells import unsigned_cells
from tiffin.frameworks.mlflow.runnable import as_model_input
from tiffin.io import columnar
from tiffin.runner.containers import Table
from tiffin.serving import mlflow_inputs

# -- CSV, a model without a signature: pd.read_csv's default types ----------------------------

WORDS = ["Oslo", "x", "a1", "1a", "True", "false", "TRUE", "yes", "inf", "-Infinity", "NAN"]
WORDS += ["1e", "1.5.2", "0x1F", "+5", "--1", "1e400", "é", "-", ".", "e5", "Nan", "none"]


def _number(rng: random.Random) -> str:
    pick = rng.randrange(9)
    if pick == 0:
        return str(rng.randint(-(2**63), 2**63 - 1))  # 19 digits: int64's edge
    if pick == 1:
        return str(rng.randint(-1000, 1000))
    if pick == 2:
        return "0" + str(rng.randint(0, 99))  # leading zeros
    if pick == 3:
        return repr(rng.uniform(-1e6, 1e6))
    if pick == 4:
        return repr(struct_double(rng))
    if pick == 5:
        return f"{rng.uniform(-10, 10):.{rng.randint(0, 20)}e}"
    if pick == 6:
        return rng.choice(["1.", ".5", "-.5", "-0", "0.0", "1E5", "1e-5", "2e+03", "-0.0"])
    if pick == 7:
        return str(rng.randint(-(2**70), 2**70))  # beyond 64 bits
    return f"{rng.uniform(-1, 1):.17g}"


def struct_double(rng: random.Random) -> float:
    """A random finite double of any magnitude (random bits)."""
    while True:
        value = float(np.frombuffer(rng.randbytes(8), dtype=np.float64)[0])
        if np.isfinite(value):
            return value


def _cell(rng: random.Random, style: str) -> str:
    if style == "int":
        return str(rng.randint(-(10**6), 10**6))
    if style == "float":
        return repr(rng.uniform(-100, 100))
    if style == "bool":
        return rng.choice(["True", "False", "true", "false", "TRUE", "FALSE"])
    if style == "word":
        return rng.choice(WORDS[:4]) + str(rng.randint(0, 9))
    return _number(rng) if rng.random() < 0.7 else rng.choice(WORDS)


def _csv_body(rng: random.Random) -> bytes:
    width, rows = rng.randint(1, 6), rng.randint(1, 4)
    styles = [rng.choice(["int", "float", "bool", "word", "any", "any"]) for _ in range(width)]
    lines = [",".join(f"c{j}" for j in range(width))]
    for _ in range(rows):
        lines.append(",".join(_cell(rng, s) for s in styles))
    return ("\n".join(lines) + "\n").encode()


def _same_frame(ours: Any, body: bytes) -> None:
    expected = pd.read_csv(io.BytesIO(body))
    if isinstance(ours, Table):  # one block, framed by the runnable
        ours = as_model_input(ours, None)
    frame = pd.DataFrame(ours) if isinstance(ours, dict) else ours
    pd.testing.assert_frame_equal(frame, expected, check_exact=True)


@pytest.mark.parametrize("seed", range(4))
def test_unsigned_csv_matches_read_csv_or_falls_back(seed: int) -> None:
    rng = random.Random(seed)
    plain = 0
    for _ in range(250):
        body = _csv_body(rng)
        found = columnar.csv_rows(body)
        typed = None
        if found is not None:
            _, rows = found
            typed = unsigned_cells([list(c) for c in zip(*rows, strict=True)])
        for columnar_mode in (False, True):
            ours = mlflow_inputs.from_csv(body, None, columnar_mode)
            try:
                _same_frame(ours, body)
            except AssertionError as exc:
                raise AssertionError(f"{body!r} (plain: {typed is not None})") from exc
        plain += typed is not None
    assert plain > 50  # most bodies take the plain path: the test checks it


def test_unsigned_csv_dicts_are_what_the_runnable_frames() -> None:
    body = b"a,b,c,d\n1,2.5,True,Oslo\n-3,4,false,x\n"
    got = mlflow_inputs.from_csv(body, None, columnar=True)
    assert got == {"a": [1, -3], "b": [2.5, 4.0], "c": [True, False], "d": ["Oslo", "x"]}
    assert isinstance(mlflow_inputs.from_csv(body, None), pd.DataFrame)


@pytest.mark.parametrize(
    "column",
    [["inf"], ["1", "True"], ["9223372036854775808"], ["1e"], ["+5"], ["1e400"]],
)
def test_unsigned_csv_cells_pandas_may_read_otherwise_fall_back(column: list[str]) -> None:
    assert unsigned_cells([column]) is None


def _numbers_body(rng: random.Random) -> bytes:
    """Only numbers: every cell pointed (floats), every cell an integer, or a mix."""
    width, rows = rng.randint(1, 40), rng.randint(1, 5)
    style = rng.choice(["float", "int", "mixed", "number"])
    lines = [",".join(f"f{j}" for j in range(width))]
    for _ in range(rows):
        if style == "float":
            cells = [rng.choice([repr(rng.uniform(-9, 9)),
                                 f"{rng.uniform(-1, 1):.{rng.randint(0, 19)}e}",
                                 rng.choice(["1.", ".5", "-.5", "-0.0", "7E3", "1e-5"])])
                     for _ in range(width)]  # fmt: skip
        elif style == "int":
            cells = [str(rng.randint(-(10**rng.randint(0, 18)), 10**rng.randint(0, 18)))
                     for _ in range(width)]  # fmt: skip
        elif style == "mixed":
            cells = [rng.choice([str(rng.randint(-9, 9)), repr(rng.uniform(-9, 9))])
                     for _ in range(width)]  # fmt: skip
        else:
            cells = [_number(rng) for _ in range(width)]
        lines.append(",".join(cells))
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("seed", range(3))
def test_unsigned_csv_of_numbers_is_one_block_as_read_csv_types_it(seed: int) -> None:
    """Bodies of numbers only: all pointed or all integers come as one Table (one regular
    expression over the body), others as before; each is the frame pandas reads, exactly."""
    rng = random.Random(100 + seed)
    blocks = 0
    for _ in range(200):
        body = _numbers_body(rng)
        ours = mlflow_inputs.from_csv(body, None, columnar=True)
        try:
            _same_frame(ours, body)
        except AssertionError as exc:
            raise AssertionError(repr(body)) from exc
        blocks += isinstance(ours, Table)
    assert blocks > 60  # the one-block path is taken (and so checked)


def _split_body(rng: random.Random) -> bytes:
    """Bodies that test where a split at newlines and commas could part from csv.reader."""
    pieces = ["a", "b", "1", "2.5", "", ",", "\n", "\n\n", "\x0b", "\x0c", "\u2028", "\x1c", "é",
              "'", "\\", "#", ";", "x|y"]  # fmt: skip
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 24))).encode()


def test_csv_rows_without_quotes_are_csv_readers_rows() -> None:
    """A body without quotes is split at newlines and commas: the rows (or the refusal) are
    those of the standard library's csv reader."""
    import csv

    rng = random.Random(7)
    read = 0
    for _ in range(3000):
        body = _split_body(rng)
        found = columnar.csv_rows(body)
        lines = list(csv.reader(io.StringIO(body.decode())))
        if found is not None:
            read += 1
            assert [found[0], *found[1]] == lines, body
        else:  # refused: csv's rows fail the same checks (ragged, empty cells, one line)
            width = len(lines[0]) if lines else 0
            assert (len(lines) < 2 or not width or len(set(lines[0])) != width
                    or any(len(r) != width or not all(r) for r in lines[1:])
                    or "" in lines[0]), body  # fmt: skip
    assert read > 100


def layout(frame: pd.DataFrame) -> list[Any]:
    """Whether each of the frame's blocks is C-contiguous (None: not a numpy block), in no
    particular order of the blocks."""
    blocks = [b.values for b in frame._mgr.blocks]
    found = [v.flags["C_CONTIGUOUS"] if hasattr(v, "flags") else None for v in blocks]
    return sorted(found, key=str)


# -- Parquet: pd.read_parquet, for every column type, encoding and layout -------------------

TYPES = [
    pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(),
    pa.uint64(), pa.float32(), pa.float64(), pa.bool_(), pa.string(), pa.large_string(),
]  # fmt: skip


def _values(rng: np.random.Generator, dtype: pa.DataType, n: int, nulls: bool) -> pa.Array:
    if pa.types.is_boolean(dtype):
        data: Any = (rng.random(n) < 0.5).tolist()
    elif pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        data = [str(rng.choice(["Oslo", "Lima", "", "é"])) for _ in range(n)]
    elif pa.types.is_floating(dtype):
        data = rng.normal(size=n).astype(dtype.to_pandas_dtype()).tolist()
    else:
        info = np.iinfo(dtype.to_pandas_dtype())
        data = rng.integers(info.min, info.max, size=n, dtype=info.dtype, endpoint=True).tolist()
    if nulls and n:
        data[int(rng.integers(n))] = None
    return pa.array(data, type=dtype)


def _parquet_body(rng: np.random.Generator) -> bytes:
    n, width = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    uniform = rng.random() < 0.4
    types = [TYPES[int(rng.integers(len(TYPES)))]] * width if uniform else [
        TYPES[int(rng.integers(len(TYPES)))] for _ in range(width)
    ]
    nulls = rng.random() < 0.15
    table = pa.table({f"c{j}": _values(rng, t, n, nulls) for j, t in enumerate(types)})
    if rng.random() < 0.6:  # as pandas writes it: its metadata in the schema
        table = pa.Table.from_pandas(table.to_pandas(), preserve_index=False)
    out = io.BytesIO()
    pq.write_table(
        table, out,
        row_group_size=int(rng.integers(1, 4)),
        compression=str(rng.choice(["snappy", "none", "zstd", "gzip"])),
        use_dictionary=bool(rng.random() < 0.7),
        data_page_version=str(rng.choice(["1.0", "2.0"])),
    )  # fmt: skip
    return out.getvalue()


@pytest.mark.parametrize("seed", range(3))
def test_unsigned_parquet_matches_read_parquet_or_falls_back(seed: int) -> None:
    rng = np.random.default_rng(seed)
    plain = 0
    for _ in range(150):
        body = _parquet_body(rng)
        ours = mlflow_inputs.from_parquet(body, None)
        expected = pd.read_parquet(io.BytesIO(body))
        pd.testing.assert_frame_equal(ours, expected, check_exact=True)
        assert layout(ours) == layout(expected)  # the model reads memory in the same order
        plain += columnar.parquet_columns(body) is not None
    assert plain > 50


def test_parquet_of_one_number_type_comes_as_one_2d_array() -> None:
    frame = pd.DataFrame(np.arange(6, dtype="float32").reshape(3, 2), columns=["a", "b"])
    out = io.BytesIO()
    frame.to_parquet(out, index=False, row_group_size=2)  # two row groups
    names, columns, rows = columnar.parquet_columns(out.getvalue()) or ([], None, 0)
    assert names == ["a", "b"] and rows == 3
    assert isinstance(columns, np.ndarray) and columns.dtype == np.float32
    np.testing.assert_array_equal(columns, frame.to_numpy())


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"a": pd.array([1, 2], dtype="Int64")}),  # pandas restores Int64
        pd.DataFrame({"s": pd.array(["x", "y"], dtype="string")}),  # and its string dtype
        pd.DataFrame({"a": [1.0]}).rename_axis("features", axis="columns"),  # a named axis
        pd.DataFrame({"a": [1.0, 2.0, 3.0]}).iloc[1:],  # a range from 1
        pd.DataFrame({"a": [1.0]}).rename_axis("row"),  # a named range
        pd.DataFrame({"c": pd.Categorical(["x"])}),
    ],
)
def test_parquet_whose_pandas_metadata_restores_more_goes_to_pandas(frame: pd.DataFrame) -> None:
    out = io.BytesIO()
    frame.to_parquet(out)  # the index as pandas keeps it: a range in the metadata
    assert columnar.parquet_columns(out.getvalue()) is None
    body = out.getvalue()
    pd.testing.assert_frame_equal(
        mlflow_inputs.from_parquet(body, None), pd.read_parquet(io.BytesIO(body))
    )


# -- a model without a signature: the frame of a dict of columns, per batch -------------------


def _column(rng: random.Random, style: str, n: int) -> list[Any]:
    if style == "float":
        return [rng.uniform(-1e3, 1e3) for _ in range(n)]
    if style == "int":
        return [rng.randint(-(2**63), 2**63 - 1) for _ in range(n)]
    pool: list[Any] = [1.5, 2, True, "x", None, float("nan"), 2**64, -(2**63)]
    return [rng.choice(pool) for _ in range(n)]


@pytest.mark.parametrize("seed", range(3))
def test_unsigned_dicts_of_columns_frame_as_pandas_frames_them(seed: int) -> None:
    from tiffin.frameworks.mlflow.tables import unsigned

    rng = random.Random(seed)
    for _ in range(200):
        n, width = rng.randint(1, 5), rng.randint(1, 6)
        style = rng.choice(["float", "int", "mixed"])
        columns = {f"c{j}": _column(rng, style, n) for j in range(width)}
        if rng.random() < 0.2:  # one column of another kind among them
            columns["odd"] = _column(rng, rng.choice(["float", "int", "mixed"]), n)
        ours, expected = unsigned(columns), pd.DataFrame(columns)
        pd.testing.assert_frame_equal(ours, expected, check_exact=True)
        # the same memory layout, so that a model computes in the same order
        assert layout(ours) == layout(expected)
