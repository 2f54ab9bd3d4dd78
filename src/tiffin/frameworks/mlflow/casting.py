"""Exact casts of request values to the types an MLflow signature declares.

A value becomes the declared type only when the type holds it exactly; anything else is an
:class:`~tiffin.exceptions.InvalidArgument` (HTTP 400) naming where it stands (``input[3][7]``
for a tensor, ``column 'age' row 3`` for a column) and the value:

* integers (int8 ... int64, uint8 ...; MLflow's integer, long): whole numbers in the type's
  range; true/false are 1/0 (as in MLflow). Refused: 3.5, 2**40 for int32, -1 for uint8,
  a string, null, NaN.
* floats (float16/32/64; MLflow's float, double): any number, rounded to the type (a JSON
  number is an approximation already); true/false are 1/0; null is NaN. Refused: a string,
  a finite number the type overflows to infinity (1e40 for float32).
* booleans: true, false, and the numbers 0 and 1. Refused: 2, 1.5, a string, null.
* strings: strings; null (or NaN) only in an optional column. Refused: a number, a boolean.
* datetimes: strings pandas reads as timezone-naive datetimes (``pd.to_datetime``, as
  MLflow's parser does), datetime64 columns; null only in an optional column (NaT).
  Refused: numbers, timezone-aware values.

numpy converts numbers in bulk and every check is vectorised; Python walks single values only
where numpy infers ``object`` (nulls, mixed types, integers beyond 64 bits), for strings, and
on the way to an error message.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from tiffin.exceptions import InvalidArgument

__all__ = ["Where", "at", "datetimes", "exact", "in_column", "strings", "to_array", "values"]

#: how an error names a position: ``where((3, 7))`` -> ``"input[3][7]"``
Where = Callable[[tuple[int, ...]], str]
_EXACT = 2.0**53  # floats below this magnitude hold every integer exactly
_MISSING = "is missing, and the column is required"


def at(what: str) -> Where:
    """Positions in a tensor: ``input[3][7]``."""
    return lambda idx: what + "".join(f"[{i}]" for i in idx)


def in_column(name: str) -> Where:
    """Positions in a column: ``column 'age' row 3``."""
    return lambda idx: f"column {name!r} row {idx[0]}" if idx else f"column {name!r}"


def _first(mask: Any) -> tuple[int, ...]:
    import numpy as np

    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _refuse(where: Where, idx: tuple[int, ...], value: Any, why: str) -> InvalidArgument:
    shown = "null" if value is None else repr(value)
    return InvalidArgument(f"{where(idx)}: {shown} {why}")


def _is_null(value: Any) -> bool:
    """None, NaN, pandas' NA or NaT."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):  # an array, or something that will not say
        return False


def _why(value: Any, label: str, kind: str) -> str:
    """Why ``value`` (one that failed) is not of a type of numpy kind ``kind``."""
    if isinstance(value, str):
        return f"is a string, not {label}"
    if _is_null(value):
        return f"is missing, and {label} cannot hold a missing value"
    if kind == "b":
        return f"is not a boolean ({label} takes true, false, 0 or 1)"
    if kind == "f":
        return f"is too large for {label}"
    if isinstance(value, float) and not value.is_integer() and value == value:
        return f"is not a whole number, so {label} cannot hold it"
    return f"is outside {label}'s range"


@cache
def _limits(dtype: Any) -> tuple[float, float, int, int]:
    """For an integer dtype: the float bounds [lo, hi) and the int bounds [min, max] of its
    values; for a float dtype: its largest finite value (twice) and zeros."""
    import numpy as np

    if dtype.kind == "f":
        top = float(np.finfo(dtype).max)
        return -top, top, 0, 0
    if dtype.kind == "b":
        return 0.0, 2.0, 0, 1
    info = np.iinfo(dtype)
    return float(info.min), float(info.max) + 1, int(info.min), int(info.max)


def to_array(value: Any, dtype: Any, where: Where, label: str | None = None) -> Any:
    """Nested JSON lists (or any array-like) as an array of ``dtype``, exactly."""
    import numpy as np

    try:
        array = np.array(value)
    except ValueError as exc:  # ragged lists
        raise InvalidArgument(f"{where(())}: nested lists of unequal lengths ({exc})") from exc
    return exact(array, dtype, where, label, source=lambda: value)


def exact(
    a: Any,
    dtype: Any,
    where: Where,
    label: str | None = None,
    source: Callable[[], Any] | None = None,
) -> Any:
    """Array ``a`` as ``dtype`` (a numeric or bool numpy dtype) if it holds every value
    exactly (see the module docstring); ``source()`` gives the Python values ``a`` was
    inferred from, to recover integers that numpy's float inference rounded."""
    import numpy as np

    kind, target = a.dtype.kind, dtype.kind
    if kind == "O":
        return values(a.ravel().tolist(), dtype, where, label, a.shape)
    if kind not in "biuf":
        raise _foreign(a, where, label or str(dtype), source)
    if target == "f":
        if kind == "b" or (
            a.dtype.itemsize <= dtype.itemsize if kind == "f" else dtype.itemsize >= 4
        ):  # no value can overflow
            return a.astype(dtype, copy=False)
        big = np.abs(a.astype(np.float64, copy=False)) > _limits(dtype)[1]
        if big.any():  # +-inf stays itself; a finite value must not become it
            bad = big & np.isfinite(a)
            if bad.any():
                idx = _first(bad)
                raise _refuse(where, idx, a[idx].item(), f"is too large for {label or dtype}")
        return a.astype(dtype)
    if target == "b":
        if kind == "b":
            return a
        bad = (a != 0) & (a != 1)
        if bad.any():
            idx = _first(bad)
            raise _refuse(where, idx, a[idx].item(), _why(a[idx].item(), label or "bool", "b"))
        return a.astype(dtype)
    if kind == "b" or np.can_cast(a.dtype, dtype):
        return a.astype(dtype, copy=False)
    lo, hi, low, high = _limits(dtype)
    if kind in "iu":
        if a.size and (int(a.min()) < low or int(a.max()) > high):
            return values(a.ravel().tolist(), dtype, where, label, a.shape)  # names the value
        return a.astype(dtype)
    ok = (a >= lo) & (a < hi) & (np.floor(a) == a)
    if not ok.all() or (source is not None and a.size and float(np.abs(a).max()) >= _EXACT):
        if source is not None:  # the values as sent: integers numpy rounded, or the culprit
            objects = np.array(source(), dtype=object)
            if objects.shape == a.shape:
                return values(objects.ravel().tolist(), dtype, where, label, a.shape)
        return values(a.ravel().tolist(), dtype, where, label, a.shape)
    return a.astype(dtype)


def _foreign(a: Any, where: Where, label: str, source: Callable[[], Any] | None) -> Exception:
    """The error for an array of strings (or dates, ...) where numbers are declared."""
    import numpy as np

    if a.dtype.kind not in "US":
        return InvalidArgument(f"{where(())}: values of type {a.dtype} cannot become {label}")
    found = np.array(source(), dtype=object) if source is not None else a
    if found.shape != a.shape:
        found = a
    hits = np.frompyfunc(lambda v: isinstance(v, str), 1, 1)(found).astype(bool)
    idx = _first(hits) if hits.size else ()
    value = str(found[idx]) if hits.size else ""
    return _refuse(where, idx, value, f"is a string, not {label}")


def values(
    items: list[Any],
    dtype: Any,
    where: Where,
    label: str | None = None,
    shape: tuple[int, ...] | None = None,
) -> Any:
    """Python values, one at a time, as an array of ``dtype`` (and ``shape``): the rules of
    :func:`exact` for what numpy infers as ``object`` and for a few values, where numpy's
    per-call cost would outweigh the loop."""
    import numpy as np

    target = dtype.kind
    lo, hi, low, high = _limits(dtype)
    out: list[Any] = []
    for i, v in enumerate(items):
        ok = False
        if isinstance(v, str):
            pass
        elif isinstance(v, bool | np.bool_):
            ok, v = True, bool(v)
        elif isinstance(v, int | np.integer):
            v = int(v)
            if target == "f":
                ok = -hi <= v <= hi
            else:
                ok = v in (0, 1) if target == "b" else low <= v <= high
        elif isinstance(v, float | np.floating):
            v = float(v)
            if target == "f":
                ok = v != v or v in (float("inf"), float("-inf")) or -hi <= v <= hi
            elif target == "b":
                ok = v in (0.0, 1.0)
            else:
                ok = v.is_integer() and lo <= v < hi
                v = int(v) if ok else v
        elif _is_null(v):
            ok, v = target == "f", float("nan")
        if not ok:
            idx = tuple(int(j) for j in np.unravel_index(i, shape)) if shape else (i,)
            value = items[i]
            why = (
                _why(value, label or str(dtype), target)
                if isinstance(value, str | int | float) or _is_null(value)
                else f"is a {type(value).__name__}, not {label or dtype}"
            )
            raise _refuse(where, idx, value, why)
        out.append(v)
    array = np.array(out, dtype=dtype)
    return array.reshape(shape) if shape is not None else array


@cache
def _string_dtype() -> Any:
    """The dtype pandas gives a column of strings (``str`` from pandas 3, else object)."""
    import pandas as pd

    return pd.Series(["a"]).dtype


def strings(values: Any, where: Where, optional: bool) -> Any:
    """A list (or array, or object column) of strings as the column pandas would build from
    them; null (None or NaN) only when ``optional``."""
    import numpy as np

    items = values.tolist() if hasattr(values, "tolist") else list(values)
    nulls = 0
    for i, v in enumerate(items):
        if isinstance(v, str):
            continue
        if optional and _is_null(v):
            nulls += 1
            continue
        raise _refuse(where, (i,), v, _MISSING if _is_null(v) else "is not a string")
    if nulls == len(items) or _string_dtype() is np.dtype(object):
        return np.array(items, dtype=object)

    dtype = _string_dtype()
    return dtype.construct_array_type()._from_sequence(items, dtype=dtype)


def datetimes(values: Any, where: Where, optional: bool) -> Any:
    """Strings (or a datetime64 column) as a timezone-naive ``datetime64[ns]`` array."""
    import numpy as np
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if series.dtype == object:
        series = series.infer_objects()  # datetime objects become datetime64
    if series.dtype.kind != "M":
        for i, v in enumerate(series.tolist()):
            if not (isinstance(v, str) or (optional and _is_null(v))):
                why = _MISSING if _is_null(v) else "is not a date-time string"
                raise _refuse(where, (i,), v, why)
        try:
            series = pd.to_datetime(series)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidArgument(f"{where(())}: not a date-time: {exc}") from exc
    if getattr(series.dtype, "tz", None) is not None:
        raise InvalidArgument(f"{where(())}: date-times must be timezone-naive")
    if not optional and series.isna().any():
        idx = (int(np.argmax(series.isna().to_numpy())),)
        raise _refuse(where, idx, None, _MISSING)
    return series.to_numpy().astype("datetime64[ns]")
