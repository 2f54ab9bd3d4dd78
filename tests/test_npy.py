"""``.npy`` bodies read with one parse of numpy's usual header (tiffin.io.npy)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tiffin.exceptions import DecodedTooLarge
from tiffin.io import npy
from tiffin.io.limits import DECODE_LIMITS, DecodeLimits
from tiffin.io.npy import read_npy

DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", ">f8", "<i4",
          ">u2", "c8", "c16"]  # fmt: skip
SHAPES = [(), (0,), (5,), (1, 32), (0, 3), (2, 3, 4), (3, 1, 1, 2)]


def _saved(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=False)
    else:
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


def _same(found: np.ndarray, expected: np.ndarray) -> None:
    assert found.dtype == expected.dtype and found.shape == expected.shape
    np.testing.assert_array_equal(found, expected)
    assert found.flags.f_contiguous == expected.flags.f_contiguous
    assert found.flags.c_contiguous == expected.flags.c_contiguous
    assert found.flags.writeable


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_numpys_own_header_is_read_once_and_gives_what_numpy_load_gives(
    dtype: str, shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(len(shape))
    values = (rng.standard_normal(shape) * 100).astype(dtype)
    for array in (values, np.asfortranarray(values)):
        body = _saved(array)
        assert npy._header(body) is not None  # the short path, not numpy's reader
        _same(read_npy(body), np.load(io.BytesIO(body), allow_pickle=False))


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_header_version(version: tuple[int, int]) -> None:
    array = np.arange(12, dtype="f4").reshape(3, 4)
    body = _saved(array, version)
    assert npy._header(body) is not None
    _same(read_npy(body), array)


def test_other_headers_and_dtypes_go_through_numpys_reader() -> None:
    strings = np.array(["a", "bc"])
    structured = np.zeros(2, dtype=[("x", "f8"), ("y", "i4")])
    dates = np.array(["2026-01-01"], dtype="datetime64[D]")
    for array in (strings, structured, dates):
        body = _saved(array)
        assert npy._header(body) is None
        _same(read_npy(body), array)
    # another writer's spacing: numpy's reader reads it
    header = b"{'descr':'<f8','fortran_order':False,'shape':(2,)}"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    body += np.array([1.5, 2.5]).tobytes()
    assert npy._header(body) is None
    _same(read_npy(body), np.array([1.5, 2.5]))


def test_bytes_after_the_data_are_ignored_and_too_few_are_numpys_error() -> None:
    body = _saved(np.arange(4, dtype="i8"))
    _same(read_npy(body + b"extra"), np.arange(4))
    with pytest.raises(ValueError, match=r"[Ee]xpected|EOF|cannot reshape|size"):
        read_npy(body[:-8])


def test_an_object_array_is_refused_as_numpy_refuses_it() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        read_npy(buffer.getvalue())


def test_a_header_declaring_too_many_elements_is_refused_before_any_allocation() -> None:
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (10**6, 10**6)  # 8 TB declared, nothing follows
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    assert npy._header(buffer.getvalue()) is not None
    with pytest.raises(DecodedTooLarge, match="max_decoded_cells"):
        read_npy(buffer.getvalue())
    token = DECODE_LIMITS.set(DecodeLimits(max_decoded_cells=10))
    try:
        with pytest.raises(DecodedTooLarge, match="max_decoded_cells"):
            read_npy(_saved(np.zeros((3, 4))))
        _same(read_npy(_saved(np.zeros((2, 5)))), np.zeros((2, 5)))
    finally:
        DECODE_LIMITS.reset(token)
