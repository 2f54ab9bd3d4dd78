"""Merge the payloads of many calls into one batch, and split a batch's result back.

Supported payloads, with the dimension the batch runs along (``dim``):

* ``numpy.ndarray`` and ``torch.Tensor``: any dimension, negative ones included; merging
  copies once (``concatenate``/``cat``), splitting returns views.
* ``pandas.DataFrame`` and ``pandas.Series``: dimension 0 (rows). Each caller's rows keep the
  index they had; a result is split by position, so a model that returns the frame it was given
  (or one indexed like it) hands every caller back its own index.
* ``list``: dimension 0; one item is one row.
* ``dict`` of any of the above: every value runs along ``dim``; all values agree on the row count.
* ``tuple`` of any of the above (a model with several outputs): split element by element.
* :class:`Table`: named columns of one dtype as one 2-D array, dimension 0; merged like an
  array, and only with tables of the same names and dtype.

Nothing here imports numpy, pandas or torch: a payload of one of their types can only exist
once its library is imported, so the type checks look the library up in ``sys.modules``.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, repeat
from typing import Any

from tiffin.exceptions import InvalidArgument

__all__ = ["Table", "batch_key", "concat", "count_rows", "split"]


@dataclass(frozen=True, slots=True)
class Table:
    """A table whose columns share one dtype: ``values`` (a 2-D numpy array, rows x columns)
    and the columns' ``names``. What a server hands a runnable that makes a DataFrame per batch
    (one block: cheaper to merge, split and frame than a dict of columns)."""

    names: tuple[str, ...]
    values: Any

_SUPPORTED = (
    "numpy.ndarray, pandas.DataFrame, pandas.Series, list, torch.Tensor, "
    "and dicts or tuples of these"
)


#: the kind of each payload type met so far (a type's kind never changes): one lookup a call
_KINDS: dict[type, str] = {}


def _kind(payload: Any) -> str:
    """The container kind of ``payload``; InvalidArgument for anything unsupported."""
    kind = _KINDS.get(type(payload))
    if kind is None:
        kind = _KINDS[type(payload)] = _kind_of(payload)
    return kind


def _kind_of(payload: Any) -> str:
    if isinstance(payload, list):
        return "list"
    if isinstance(payload, tuple):
        return "tuple"
    if isinstance(payload, dict):
        return "dict"
    if type(payload) is Table:
        return "table"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(payload, np.ndarray):
        return "ndarray"
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(payload, pd.DataFrame):
            return "dataframe"
        if isinstance(payload, pd.Series):
            return "series"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(payload, torch.Tensor):
        return "tensor"
    raise InvalidArgument(
        f"cannot batch a payload of type {type(payload).__module__}.{type(payload).__qualname__}; "
        f"a batchable method takes {_SUPPORTED}"
    )


def _only_rows(kind: str, dim: int) -> None:
    if dim != 0:
        raise InvalidArgument(
            f"a {kind} payload batches along dimension 0 only, not batch_dim={dim}"
        )


def _axis(shape: Sequence[int], dim: int, kind: str) -> int:
    """``dim`` as a non-negative axis of an array of ``shape``."""
    ndim = len(shape)
    if not -ndim <= dim < ndim:
        raise InvalidArgument(
            f"batch_dim={dim} is out of range for a {kind} payload of shape {tuple(shape)}"
        )
    return dim % ndim


def count_rows(payload: Any, dim: int) -> int:
    """How many rows ``payload`` holds along ``dim``."""
    kind = _kind(payload)
    if kind in ("ndarray", "tensor"):
        shape = tuple(payload.shape)
        return int(shape[_axis(shape, dim, kind)])
    if kind in ("dataframe", "series", "list"):
        _only_rows(kind, dim)
        return len(payload)
    if kind == "table":
        _only_rows(kind, dim)
        return len(payload.values)
    values = list(payload.values()) if kind == "dict" else list(payload)
    if not values:
        raise InvalidArgument(f"cannot batch an empty {kind}")
    if _all_lists(values):  # columns of a table, the usual dict: no walk per value
        _only_rows("list", dim)
        sizes = set(map(len, values))
    else:
        sizes = {count_rows(value, dim) for value in values}
    if len(sizes) != 1:
        raise InvalidArgument(
            f"the parts of a {kind} payload hold different row counts {sorted(sizes)} "
            f"along batch_dim={dim}; every part must hold the same rows"
        )
    return sizes.pop()


def batch_key(payload: Any, dim: int) -> Hashable:
    """What must match for two payloads to be merged: kind and every dimension but ``dim``.

    The dispatcher batches only calls whose payloads share a batch key, so one caller sending
    an odd shape never breaks the batch of the others.
    """
    kind = _kind(payload)
    if kind == "ndarray":
        shape = tuple(payload.shape)
        axis = _axis(shape, dim, kind)
        return (kind, shape[:axis] + shape[axis + 1 :], payload.dtype.str)
    if kind == "tensor":
        shape = tuple(payload.shape)
        axis = _axis(shape, dim, kind)
        return (kind, shape[:axis] + shape[axis + 1 :], str(payload.dtype), str(payload.device))
    if kind == "dataframe":
        _only_rows(kind, dim)
        # dtypes too: a column of strings must not join (and fail) a batch of numbers
        return (kind, tuple(payload.columns), tuple(str(t) for t in payload.dtypes))
    if kind == "series":
        _only_rows(kind, dim)
        return (kind, str(payload.dtype))
    if kind == "list":
        _only_rows(kind, dim)
        return (kind,)
    if kind == "table":
        _only_rows(kind, dim)
        return (kind, payload.names, payload.values.shape[1:], payload.values.dtype.str)
    if kind == "dict":
        if _all_lists(payload.values()):  # (the key the walk below gives it, in one step)
            _only_rows("list", dim)
            return (kind, tuple(zip(payload, repeat(_LIST_KEY))))
        return (kind, tuple((key, batch_key(value, dim)) for key, value in payload.items()))
    return (kind, type(payload), tuple(batch_key(value, dim) for value in payload))


_LIST_KEY = ("list",)


_LISTS = {list}


def _all_lists(values: Iterable[Any]) -> bool:
    return set(map(type, values)) == _LISTS


def _mismatch(kind: str, exc: Exception | None = None) -> InvalidArgument:
    detail = f": {exc}" if exc is not None else ""
    return InvalidArgument(
        f"cannot merge these {kind} payloads into one batch; they differ in type, shape, "
        f"columns or keys{detail}"
    )


def concat(payloads: list[Any], dim: int) -> Any:
    """Merge ``payloads`` (all of one kind and shape) along ``dim`` into one payload.

    A single payload is returned as it is, without a copy.
    """
    if not payloads:
        raise InvalidArgument("cannot merge an empty list of payloads")
    first = payloads[0]
    kind = _kind(first)
    if any(_kind(payload) != kind for payload in payloads[1:]):
        kinds = sorted({type(payload).__name__ for payload in payloads})
        raise InvalidArgument(f"cannot merge payloads of different types {kinds} into one batch")
    if kind in ("dataframe", "series", "list", "table"):
        _only_rows(kind, dim)
    if len(payloads) == 1:
        return first
    if kind == "list":
        merged: list[Any] = []
        for payload in payloads:
            merged.extend(payload)
        return merged
    if kind in ("ndarray", "table"):
        import numpy as np

        if kind == "table" and any(payload.names != first.names for payload in payloads):
            raise _mismatch(kind)
        arrays = [p.values for p in payloads] if kind == "table" else payloads
        try:
            block = np.concatenate(arrays, axis=dim)
        except (ValueError, TypeError, IndexError) as exc:
            raise _mismatch(kind, exc) from exc
        return Table(first.names, block) if kind == "table" else block
    if kind == "tensor":
        import torch

        try:
            return torch.cat(payloads, dim=dim)
        except (RuntimeError, IndexError, TypeError) as exc:
            raise _mismatch(kind, exc) from exc
    if kind in ("dataframe", "series"):
        import pandas as pd

        if kind == "dataframe" and any(
            not payload.columns.equals(first.columns) for payload in payloads[1:]
        ):
            raise _mismatch(kind)
        return pd.concat(payloads, axis=0)
    if kind == "dict":
        keys = list(first)
        if any(list(payload) != keys for payload in payloads[1:]):
            raise _mismatch(kind)
        if all(_all_lists(payload.values()) for payload in payloads):
            _only_rows("list", dim)
            return {key: list(chain.from_iterable(p[key] for p in payloads)) for key in keys}
        return {key: concat([payload[key] for payload in payloads], dim) for key in keys}
    # tuple
    width = len(first)
    if any(len(payload) != width for payload in payloads[1:]):
        raise _mismatch(kind)
    parts = [concat([payload[i] for payload in payloads], dim) for i in range(width)]
    return _rebuild_tuple(first, parts)


def _rebuild_tuple(like: tuple[Any, ...], parts: list[Any]) -> tuple[Any, ...]:
    make = getattr(type(like), "_make", None)  # a namedtuple keeps its type
    return make(parts) if make is not None else tuple(parts)


def split(result: Any, sizes: list[int], dim: int) -> list[Any]:
    """Cut ``result`` along ``dim`` into consecutive pieces of ``sizes`` rows, in order.

    The inverse of :func:`concat`: ``split(concat(ps, d), [count_rows(p, d) for p in ps], d)``
    gives payloads equal to ``ps``. Array and tensor pieces are views of ``result``.
    """
    kind = _kind(result)
    total = count_rows(result, dim)
    if total != sum(sizes) or any(size < 0 for size in sizes):
        raise InvalidArgument(
            f"cannot split a result of {total} rows along batch_dim={dim} into pieces of "
            f"{sum(sizes)} rows; a batchable method must return one output row per input row"
        )
    if len(sizes) == 1:
        return [result]
    bounds = list(accumulate(sizes))
    starts = [0, *bounds[:-1]]
    if kind == "ndarray":
        import numpy as np

        return list(np.split(result, bounds[:-1], axis=dim))
    if kind == "tensor":
        return list(result.split(sizes, dim=dim))
    if kind in ("dataframe", "series"):
        return [result.iloc[start:stop] for start, stop in zip(starts, bounds, strict=True)]
    if kind == "list":
        return [result[start:stop] for start, stop in zip(starts, bounds, strict=True)]
    if kind == "table":
        pieces = zip(starts, bounds, strict=True)
        return [Table(result.names, result.values[start:stop]) for start, stop in pieces]
    if kind == "dict":
        columns = {key: split(value, sizes, dim) for key, value in result.items()}
        return [{key: pieces[i] for key, pieces in columns.items()} for i in range(len(sizes))]
    # tuple
    elements = [split(value, sizes, dim) for value in result]
    return [_rebuild_tuple(result, [pieces[i] for pieces in elements]) for i in range(len(sizes))]
