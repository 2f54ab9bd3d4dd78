"""Merging and splitting batch payloads, per payload type."""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple

import numpy as np
import pandas as pd
import pytest
import torch

from tiffin.exceptions import InvalidArgument
from tiffin.runner import containers
from tiffin.runner.containers import batch_key, concat, count_rows, split


def roundtrip(payloads: list, dim: int) -> list:
    sizes = [count_rows(p, dim) for p in payloads]
    return split(concat(payloads, dim), sizes, dim)


@pytest.mark.parametrize(
    ("dim", "shapes"),
    [
        (0, [(2, 3), (1, 3), (4, 3)]),
        (1, [(3, 2, 5), (3, 1, 5), (3, 4, 5)]),
        (-1, [(3, 2), (3, 1), (3, 4)]),
        (-2, [(2, 5), (1, 5), (4, 5)]),
    ],
)
def test_ndarray_roundtrip_any_dim(dim: int, shapes: list[tuple[int, ...]]) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=shape) for shape in shapes]
    merged = concat(arrays, dim)
    assert count_rows(merged, dim) == sum(count_rows(a, dim) for a in arrays) == 7
    pieces = split(merged, [count_rows(a, dim) for a in arrays], dim)
    for piece, original in zip(pieces, arrays, strict=True):
        np.testing.assert_array_equal(piece, original)
        assert np.shares_memory(piece, merged)  # split returns views, no copies


def test_single_payload_is_not_copied() -> None:
    array = np.arange(6).reshape(3, 2)
    frame = pd.DataFrame({"x": [1, 2]})
    rows = [1, 2, 3]
    tensor = torch.zeros(2, 3)
    for payload in (array, frame, rows, tensor):
        assert concat([payload], 0) is payload
        assert split(payload, [count_rows(payload, 0)], 0)[0] is payload


def test_ndarray_mismatches_are_clear_errors() -> None:
    with pytest.raises(InvalidArgument, match="cannot merge"):
        concat([np.zeros((2, 3)), np.zeros((2, 4))], 0)
    with pytest.raises(InvalidArgument, match="out of range"):
        count_rows(np.zeros((2, 3)), 2)
    with pytest.raises(InvalidArgument, match="out of range"):
        count_rows(np.array(1.0), 0)
    with pytest.raises(InvalidArgument, match="different types"):
        concat([np.zeros((2, 3)), [[0, 0, 0]]], 0)


def test_dataframe_callers_keep_their_index() -> None:
    first = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}, index=[10, 11])
    second = pd.DataFrame({"a": [3.0], "b": ["z"]}, index=[10])
    third = pd.DataFrame({"a": [4.0, 5.0, 6.0], "b": ["p", "q", "r"]}, index=[7, 8, 9])
    merged = concat([first, second, third], 0)
    assert list(merged.index) == [10, 11, 10, 7, 8, 9]
    result = merged.assign(c=merged["a"] * 2)  # a model that returns its input, extended
    pieces = split(result, [2, 1, 3], 0)
    for piece, original in zip(pieces, [first, second, third], strict=True):
        pd.testing.assert_frame_equal(piece[["a", "b"]], original)
        assert list(piece["c"]) == [v * 2 for v in original["a"]]


def test_series_roundtrip_keeps_index() -> None:
    first = pd.Series([1, 2], index=["a", "b"])
    second = pd.Series([3], index=["c"])
    pieces = roundtrip([first, second], 0)
    pd.testing.assert_series_equal(pieces[0], first)
    pd.testing.assert_series_equal(pieces[1], second)


def test_dataframe_mismatches_and_dims() -> None:
    with pytest.raises(InvalidArgument, match="cannot merge"):
        concat([pd.DataFrame({"a": [1]}), pd.DataFrame({"b": [1]})], 0)
    with pytest.raises(InvalidArgument, match="dimension 0 only"):
        count_rows(pd.DataFrame({"a": [1]}), 1)
    with pytest.raises(InvalidArgument, match="dimension 0 only"):
        concat([pd.Series([1]), pd.Series([2])], 1)


def test_list_roundtrip() -> None:
    pieces = roundtrip([[1, 2], [3], [], [4, 5, 6]], 0)
    assert pieces == [[1, 2], [3], [], [4, 5, 6]]
    with pytest.raises(InvalidArgument, match="dimension 0 only"):
        count_rows([1, 2], 1)


def test_dict_of_arrays_and_lists() -> None:
    first = {"x": np.zeros((2, 3)), "ids": [1, 2]}
    second = {"x": np.ones((1, 3)), "ids": [3]}
    merged = concat([first, second], 0)
    assert merged["x"].shape == (3, 3) and merged["ids"] == [1, 2, 3]
    back = split(merged, [2, 1], 0)
    np.testing.assert_array_equal(back[1]["x"], second["x"])
    assert back[0]["ids"] == [1, 2] and back[1]["ids"] == [3]
    with pytest.raises(InvalidArgument, match="different row counts"):
        count_rows({"x": np.zeros((2, 3)), "ids": [1]}, 0)
    with pytest.raises(InvalidArgument, match="cannot merge"):
        concat([first, {"y": np.zeros((1, 3)), "ids": [3]}], 0)
    with pytest.raises(InvalidArgument, match="empty dict"):
        count_rows({}, 0)


def test_a_dict_of_columns_takes_the_short_path_to_the_same_answers() -> None:
    """An object of plain lists (a table's columns, the usual dict payload) is counted, keyed
    and merged without walking each column; the answers are those of the general walk."""
    first = {"a": [1.0, 2.0], "b": ["x", "y"]}
    second = {"a": [3.0], "b": ["z"]}
    mixed = {"a": [1.0], "b": np.array(["x"])}  # not all lists: the general walk
    assert count_rows(first, 0) == 2 and count_rows(second, 0) == 1
    assert (
        batch_key(first, 0)
        == batch_key(second, 0)
        == ("dict", (("a", ("list",)), ("b", ("list",))))
    )
    assert batch_key(first, 0) != batch_key(mixed, 0)
    assert batch_key(first, 0) != batch_key({"b": ["x"], "a": [1.0]}, 0)  # order is a key too
    merged = concat([first, second], 0)
    assert merged == {"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]}
    assert merged["a"] is not first["a"]  # callers' lists are left as they were
    assert first == {"a": [1.0, 2.0], "b": ["x", "y"]}
    assert split(merged, [2, 1], 0) == [first, second]
    with pytest.raises(InvalidArgument, match=r"different row counts \[1, 2\]"):
        count_rows({"a": [1, 2], "b": [3]}, 0)
    with pytest.raises(InvalidArgument, match="dimension 0 only"):
        count_rows(first, 1)
    with pytest.raises(InvalidArgument, match="dimension 0 only"):
        batch_key(first, 1)
    with pytest.raises(InvalidArgument, match="cannot merge"):
        concat([first, {"a": [1.0], "c": ["z"]}], 0)


def test_tuple_outputs_split_per_element() -> None:
    labels = np.array([0, 1, 1])
    scores = [0.1, 0.9, 0.8]
    pieces = split((labels, scores), [1, 2], 0)
    assert isinstance(pieces[0], tuple)
    np.testing.assert_array_equal(pieces[1][0], [1, 1])
    assert pieces[1][1] == [0.9, 0.8]

    Out = namedtuple("Out", ["label", "score"])
    named = split(Out(labels, scores), [2, 1], 0)
    assert isinstance(named[0], Out) and named[1].score == [0.8]
    merged = concat([Out(np.zeros(1), [1]), Out(np.ones(2), [2, 3])], 0)
    assert isinstance(merged, Out) and merged.score == [1, 2, 3]


@pytest.mark.parametrize(
    ("dim", "shapes"),
    [(0, [(2, 3, 4), (1, 3, 4)]), (1, [(2, 1, 4), (2, 3, 4)]), (-1, [(2, 3, 4), (2, 3, 2)])],
)
def test_torch_tensor_roundtrip(dim: int, shapes: list[tuple[int, ...]]) -> None:
    tensors = [torch.randn(*shape) for shape in shapes]
    merged = concat(tensors, dim)
    pieces = split(merged, [count_rows(t, dim) for t in tensors], dim)
    for piece, original in zip(pieces, tensors, strict=True):
        assert torch.equal(piece, original)
        assert piece.untyped_storage().data_ptr() == merged.untyped_storage().data_ptr()
    with pytest.raises(InvalidArgument, match="cannot merge"):
        concat([torch.zeros(2, 3), torch.zeros(2, 4)], 0)


@pytest.mark.parametrize("payload", ["text", 3, 2.5, {1, 2}, None, b"bytes"])
def test_unsupported_payloads(payload: object) -> None:
    with pytest.raises(InvalidArgument, match="cannot batch a payload of type"):
        count_rows(payload, 0)
    with pytest.raises(InvalidArgument, match="cannot batch a payload of type"):
        batch_key(payload, 0)


def test_split_checks_row_counts() -> None:
    with pytest.raises(InvalidArgument, match="one output row per input row"):
        split(np.zeros((3, 2)), [1, 1], 0)
    with pytest.raises(InvalidArgument, match="one output row per input row"):
        split([1, 2, 3], [4], 0)
    with pytest.raises(InvalidArgument, match="empty list of payloads"):
        concat([], 0)


def test_signature_ignores_rows_only() -> None:
    assert batch_key(np.zeros((2, 3)), 0) == batch_key(np.zeros((5, 3)), 0)
    assert batch_key(np.zeros((2, 3)), 0) != batch_key(np.zeros((2, 4)), 0)
    assert batch_key(np.zeros((2, 3)), 0) != batch_key(np.zeros((2, 3), dtype=np.float32), 0)
    assert batch_key(np.zeros((3, 2)), 1) == batch_key(np.zeros((3, 7)), -1)
    assert batch_key(pd.DataFrame({"a": [1]}), 0) != batch_key(pd.DataFrame({"b": [1]}), 0)
    assert batch_key(torch.zeros(2, 3), 0) == batch_key(torch.zeros(9, 3), 0)
    assert batch_key([1], 0) == batch_key([1, 2, 3], 0)
    assert batch_key({"x": np.zeros((1, 2))}, 0) != batch_key({"x": np.zeros((1, 3))}, 0)


def test_importing_needs_no_ml_library() -> None:
    code = (
        "import sys, tiffin.runner.batching, tiffin.runner.containers\n"
        "heavy = {'numpy', 'pandas', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "print(tiffin.runner.containers.count_rows([1, 2], 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
    assert containers.__name__ == "tiffin.runner.containers"


def test_dataframes_with_different_dtypes_never_share_a_batch():
    import pandas as pd

    numbers = pd.DataFrame({"a": [1.0, 2.0]})
    strings = pd.DataFrame({"a": ["x", "y"]})
    assert batch_key(numbers, 0) != batch_key(strings, 0)
    assert batch_key(numbers, 0) == batch_key(pd.DataFrame({"a": [3.0]}), 0)
    assert batch_key(pd.Series([1.0]), 0) != batch_key(pd.Series(["x"]), 0)


def test_tables_merge_as_one_block_and_only_with_the_same_names_and_dtype() -> None:
    from tiffin.runner.containers import Table

    a = Table(("x", "y"), np.array([[1.0, 2.0]]))
    b = Table(("x", "y"), np.array([[3.0, 4.0], [5.0, 6.0]]))
    merged = concat([a, b], 0)
    assert type(merged) is Table and merged.names == ("x", "y")
    np.testing.assert_array_equal(merged.values, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert count_rows(merged, 0) == 3
    back = split(merged, [1, 2], 0)
    assert [p.names for p in back] == [("x", "y")] * 2
    np.testing.assert_array_equal(back[1].values, b.values)
    assert batch_key(a, 0) == batch_key(b, 0)
    other_names = Table(("y", "x"), np.array([[1.0, 2.0]]))
    ints = Table(("x", "y"), np.array([[1, 2]]))
    assert len({batch_key(t, 0) for t in (a, other_names, ints)}) == 3
    with pytest.raises(InvalidArgument, match="cannot merge"):
        concat([a, other_names], 0)
    with pytest.raises(InvalidArgument, match="dimension 0 only"):
        count_rows(a, 1)
