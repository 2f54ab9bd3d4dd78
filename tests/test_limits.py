"""Decode limits: what a body declares is measured before anything big is built."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from tiffin.exceptions import DecodedTooLarge, InvalidArgument
from tiffin.io import columnar, limits
from tiffin.io.limits import DECODE_LIMITS, DecodeLimits


@pytest.fixture
def small() -> DecodeLimits:
    token = DECODE_LIMITS.set(
        DecodeLimits(max_decoded_cells=100, max_columns=10, max_image_pixels=400)
    )
    yield DECODE_LIMITS.get()
    DECODE_LIMITS.reset(token)


def _npy(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype=np.uint8))
    return buffer.getvalue()


def _parquet(rows: int, columns: int) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame({f"c{i}": range(rows) for i in range(columns)}).to_parquet(buffer)
    return buffer.getvalue()


REFUSED = {
    "csv-wide-header": (
        limits.check_csv,
        b",".join(b"c%d" % i for i in range(11)) + b"\n1\n",
        "max_columns",
    ),
    "csv-many-rows": (limits.check_csv, b"a,b\n" + b"1,2\n" * 51, "max_decoded_cells"),
    # the small-CSV reader counts them from its own split (no quotes), before it splits cells
    "csv-rows-wide-header": (
        columnar.csv_rows,
        b",".join(b"c%d" % i for i in range(11)) + b"\n" + b",".join([b"1"] * 11) + b"\n",
        "max_columns",
    ),
    "csv-rows-many-rows": (columnar.csv_rows, b"a,b\n" + b"1,2\n" * 51, "max_decoded_cells"),
    "csv-rows-quoted": (columnar.csv_rows, b'"a",b\n' + b"1,2\n" * 51, "max_decoded_cells"),
    "records-new-keys": (limits.check_json_table, [{f"k{i}": 1} for i in range(11)], "max_columns"),
    "dict-of-dicts": (
        limits.check_json_table,
        {f"c{i}": {f"r{i}": 1, f"s{i}": 1} for i in range(10)},
        "max_decoded_cells",
    ),
    "split": (
        limits.check_json_table,
        {"columns": ["a", "b"], "data": [[1, 2]] * 51},
        "max_decoded_cells",
    ),
    "nested-lists": (limits.check_json_table, [[0] * 11] * 10, "max_decoded_cells"),
    "parquet": (limits.check_parquet, _parquet(60, 2), "max_decoded_cells"),
    "npy-header": (limits.check_npy, _npy((11, 10)), "max_decoded_cells"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_over_a_limit_is_a_413_that_names_the_setting(case: str, small: DecodeLimits) -> None:
    check, body, setting = REFUSED[case]
    with pytest.raises(DecodedTooLarge) as info:
        check(body)
    assert info.value.setting == setting and setting in str(info.value)
    assert info.value.http_status == 413


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_same_bodies_pass_under_the_default_limits(case: str) -> None:
    check, body, _setting = REFUSED[case]
    check(body)  # raises nothing


def test_an_npy_header_claiming_a_huge_array_is_refused_unread() -> None:
    """A header of a few dozen bytes may claim terabytes; nothing follows it here."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**10,)}
    )
    with pytest.raises(DecodedTooLarge, match="max_decoded_cells"):
        limits.check_npy(buffer.getvalue())


def test_images_are_measured_from_their_header(small: DecodeLimits) -> None:
    limits.check_image(20, 20)
    with pytest.raises(DecodedTooLarge, match="max_image_pixels"):
        limits.check_image(21, 20)


def test_malformed_bodies_are_left_to_their_parsers() -> None:
    limits.check_parquet(b"PAR1 not really")  # pandas words the error
    with pytest.raises(InvalidArgument, match=r"\.npy"):
        limits.check_npy(b"\x93NUMPY\x01\x00garbage")


def test_each_named_input_of_an_envelope_is_measured(small: DecodeLimits) -> None:
    """``{"inputs": {name: ...}}``: nested lists by their shape, a flat list by its length --
    also where the object looks like a split table (``data`` and at most two more keys), whose
    table count covers ``data`` only."""
    from tiffin.io.payloads import check_envelope

    check_envelope("inputs", {"a": [0.0] * 10, "b": [[0.0] * 10] * 10})  # within: nothing
    for body, name in (
        ({"a": [0.0], "b": [[0.0] * 11] * 10}, "'b'"),
        ({"data": [1.0], "x": [0.0] * 101}, "'x'"),
    ):
        with pytest.raises(DecodedTooLarge, match=f"the inputs input {name} would hold"):
            check_envelope("inputs", body)
