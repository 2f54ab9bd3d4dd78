"""Parquet bodies of a layout seen before (tiffin.io.parquet_layouts) are read without pyarrow,
to exactly what pyarrow reads; every other body, and every byte that would change what a body
means, stays pyarrow's."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiffin.exceptions import DecodedTooLarge
from tiffin.frameworks.mlflow.inputs import InputSchema
from tiffin.io import columnar
from tiffin.io import parquet_layouts as layouts
from tiffin.io.limits import DECODE_LIMITS, DecodeLimits
from tiffin.serving import mlflow_inputs


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    """No layout learned before the test, none left after it."""
    layouts._layouts.clear()
    layouts._attempts.clear()
    yield
    layouts._layouts.clear()
    layouts._attempts.clear()


def pyarrow_read(body: bytes) -> Any:
    return columnar._parquet_columns(body)


def write(frame: pd.DataFrame | pa.Table, **options: Any) -> bytes:
    out = io.BytesIO()
    if isinstance(frame, pa.Table):
        pq.write_table(frame, out, **options)
    else:
        frame.to_parquet(out, index=False, **options)
    return out.getvalue()


def assert_same(got: Any, want: Any) -> None:
    """The same columns, bit for bit; or None from both (a body pandas must read)."""
    if want is None:
        assert got is None
    else:
        assert layouts._same(got, want), (got, want)


def frames(rng: np.random.Generator, rows: int, kinds: str) -> pd.DataFrame:
    """A frame of columns by letter: f float32, d float64, l int64, i int32, b bool, s str
    (three letters: one layout whatever the values)."""
    make = {
        "f": lambda: rng.standard_normal(rows).astype("float32"),
        "d": lambda: rng.standard_normal(rows) * 10.0 ** rng.integers(-300, 300),
        "l": lambda: rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64),
        "i": lambda: rng.integers(-(2**31), 2**31 - 1, rows).astype("int32"),
        "b": lambda: rng.random(rows) < 0.5,
        "s": lambda: rng.choice(["red", "grn", "blu", "éa"], rows, replace=False),
    }
    return pd.DataFrame({f"c{j}_{k}": make[k]() for j, k in enumerate(kinds)})


LAYOUTS = {
    "32 float32": ("f" * 32, 1, {}),
    "mixed": ("ldfisb", 1, {}),
    "no dictionary": ("ldfisb", 1, {"use_dictionary": False}),
    "uncompressed": ("ldfisb", 1, {"compression": None}),
    "no statistics": ("ldfisb", 1, {"write_statistics": False}),
    "three distinct rows": ("dlb", 3, {"compression": None}),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_a_layout_seen_twice_reads_later_bodies_without_pyarrow(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kinds, rows, options = LAYOUTS[name]
    rng = np.random.default_rng(7)
    first, second, *later = [write(frames(rng, rows, kinds), **options) for _ in range(6)]
    assert len({len(b) for b in [first, second, *later]}) == 1  # one layout
    wanted = [pyarrow_read(body) for body in later]
    for body in (first, second):
        assert_same(columnar.parquet_columns(body), pyarrow_read(body))
    assert layouts.read(second) is not None  # learned at its second sighting

    def refused(body: bytes) -> None:
        raise AssertionError("pyarrow read a body of a known layout")

    monkeypatch.setattr(columnar, "_parquet_reader", refused)
    for body, want in zip(later, wanted, strict=True):
        assert_same(columnar.parquet_columns(body), want)


def special_rows(rng: np.random.Generator) -> Iterator[pd.DataFrame]:
    """One-row frames of edge values: NaN, infinities, -0.0, int64's ends, one-letter words."""
    floats = [np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, -1.0]
    singles = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, 3.4028235e38, -1.0]
    ints = [-(2**63), 2**63 - 1, 0, -1, 1]
    for _ in range(40):
        yield pd.DataFrame({
            "d": [rng.choice(floats)], "f": np.array([rng.choice(singles)], dtype="float32"),
            "l": np.array([rng.choice(ints)], dtype="int64"), "b": [bool(rng.integers(2))],
            "s": [str(rng.choice(["a", "b", "é", "z"]))],
        })  # fmt: skip


def test_every_body_reads_as_pyarrow_reads_it() -> None:
    """Edge values (some change the layout: pandas writes NaN as a null, which pandas' reader
    must restore): whatever path reads a body, the answer is pyarrow's."""
    rng = np.random.default_rng(11)
    known = 0
    for frame in special_rows(rng):
        arrow = pa.table({name: pa.array(frame[name].to_numpy()) for name in frame})  # NaN kept
        for body in (write(frame), write(arrow)):
            if layouts.read(body) is not None:
                known += 1
            assert_same(columnar.parquet_columns(body), pyarrow_read(body))
    assert known > 20


def _mutations(body: bytes) -> Iterator[tuple[int, bytes]]:
    for position in range(len(body)):
        for flip in (0x01, 0x80, 0xFF):
            changed = bytearray(body)
            changed[position] ^= flip
            yield position, bytes(changed)


@pytest.mark.parametrize("options", [{}, {"compression": None, "use_dictionary": False}])
def test_a_changed_byte_is_read_as_pyarrow_reads_it_or_left_to_pyarrow(options: dict) -> None:
    """Every byte of a learned body changed three ways: a body the layout still reads is one
    pyarrow reads to the same columns (values and statistics changed); any other change (a
    length, a type, an offset, an encoding, a level) is not read by the layout."""
    rng = np.random.default_rng(3)
    first, second = (write(frames(rng, 1, "ldfisb"), **options) for _ in range(2))
    for body in (first, second):
        columnar.parquet_columns(body)
    [layout] = layouts._layouts[(len(second), second[-8:-4])]
    read = 0
    for _position, body in _mutations(second):
        got = layout.read(body)
        if got is None:
            continue
        read += 1
        assert_same(got, pyarrow_read(body))
    variable = len(layout.variable)
    assert 6 * 4 <= variable < len(second) // 4  # values at least; never most of the file
    assert 0 < read <= 3 * variable


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "zstd"},
        {"write_page_index": True},
        {"data_page_version": "2.0"},
        {"write_page_checksum": True},
    ],
)
def test_layouts_this_module_does_not_read_stay_pyarrows(options: dict) -> None:
    rng = np.random.default_rng(5)
    for _ in range(4):
        body = write(frames(rng, 1, "dls"), **options)
        assert_same(columnar.parquet_columns(body), pyarrow_read(body))
    assert not layouts._layouts


def test_float16_and_small_ints_stay_pyarrows() -> None:
    """Columns Arrow reads as another type than the file stores (int8 in an INT32, a float16
    in fixed-length bytes) are read by pyarrow's rules."""
    for _ in range(3):
        table = pa.table({"a": pa.array([3], pa.int8()), "b": pa.array([-1], pa.int16())})
        body = write(table)
        assert_same(columnar.parquet_columns(body), pyarrow_read(body))
    assert not layouts._layouts


def test_decode_limits_hold_for_a_learned_layout() -> None:
    rng = np.random.default_rng(9)
    bodies = [write(frames(rng, 1, "dddd")) for _ in range(3)]
    for body in bodies[:2]:
        columnar.parquet_columns(body)
    assert layouts.read(bodies[2]) is not None
    token = DECODE_LIMITS.set(DecodeLimits(max_columns=3))
    try:
        with pytest.raises(DecodedTooLarge, match="max_columns"):
            columnar.parquet_columns(bodies[2])
    finally:
        DECODE_LIMITS.reset(token)


def test_learning_is_tried_a_few_times_per_key_and_the_cache_stays_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tried = []
    real = layouts.Layout

    def counted(*args: Any) -> layouts.Layout:
        tried.append(1)
        return real(*args)

    monkeypatch.setattr(layouts, "Layout", counted)
    body = write(frames(np.random.default_rng(1), 1, "dd"), compression="zstd")
    for _ in range(20):  # a layout it cannot read, sent again and again
        columnar.parquet_columns(body)
    assert len(tried) == 4
    for width in range(1, 60):  # many layouts, each seen twice
        body = write(pd.DataFrame({f"c{j}": [float(j)] for j in range(width)}))
        columnar.parquet_columns(body)
        columnar.parquet_columns(body)
    assert 0 < len(layouts._layouts) <= layouts._KEEP
    assert len(layouts._attempts) <= layouts._SEEN


def test_one_row_parquet_requests_of_other_values_give_pyarrows_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What /invocations hands a float32 tensor model and a column model for a stream of one-row
    Parquet bodies is what the pandas path gives for each."""
    tensor = InputSchema.from_signature(
        [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 32]}}]
    )
    columns = InputSchema.from_signature(
        [{"type": "double", "name": f"c{j}_d", "required": True} for j in range(4)]
    )
    rng = np.random.default_rng(2)
    cases = [(tensor, "f" * 32), (columns, "dddd")]
    sent = [(schema, write(frames(rng, 1, kinds))) for schema, kinds in cases for _ in range(8)]
    got = [mlflow_inputs.from_parquet(body, schema) for schema, body in sent]
    assert len(layouts._layouts) == 2
    monkeypatch.setattr(mlflow_inputs, "parquet_columns", lambda body: None)
    for (schema, body), value in zip(sent, got, strict=True):
        want = mlflow_inputs.from_parquet(body, schema)
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(value, want)
        else:
            assert value.dtype == want.dtype and value.tobytes() == want.tobytes()


def test_a_footer_of_unexpected_types_is_not_learned_and_raises_nothing() -> None:
    """A footer whose fields hold other Thrift types than Parquet's (here the schema a list
    of integers) is never learned, whatever it trips over: the body stays pyarrow's."""
    footer = bytes([
        0x29, 0x15, 0x02,  # field 2 (schema): a list of one i32
        0x16, 0x02,  # field 3 (num_rows): 1
        0x19, 0x1C, 0x19, 0x0C, 0x00,  # field 4 (row_groups): one group of no columns
        0x00,
    ])  # fmt: skip
    body = b"PAR1" + footer + len(footer).to_bytes(4, "little") + b"PAR1"
    for _ in range(3):
        layouts.learn(body, ["a"], np.zeros((1, 1)), 1)
    assert not layouts._layouts
