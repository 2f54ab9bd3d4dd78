"""``.npy`` bodies: the header read once, its shape measured against the decode limits, then
the array built from the bytes after it.

Rules:

* The header ``numpy.save`` writes (``{'descr': '<f8', 'fortran_order': False, 'shape': (1,
  32), }``, padded with spaces) of a number or boolean dtype is read with one regular
  expression: numpy's own reader parses it with ``ast.literal_eval`` (about 15 µs, and a
  request paid it twice: once to measure, once to load).
* Anything else -- another writer's spacing, a structured, string or object dtype, a body
  shorter than its header declares -- goes through :func:`~tiffin.io.limits.check_npy` and
  ``numpy.load(allow_pickle=False)`` as before, whose errors (``ValueError``, ``OSError``,
  ``EOFError``) each caller words.
* Either way the array is a writable copy, laid out as the header says, as ``numpy.load``
  gives it; bytes after the declared data are ignored, as ``numpy.load`` ignores them.
"""

from __future__ import annotations

import io
import re
from typing import Any

from tiffin.io.limits import check_array, check_npy

__all__ = ["read_npy"]

_MAGIC = b"\x93NUMPY"
#: numpy's own header of a plain dtype: (descr, fortran_order, shape)
_HEADER = re.compile(
    rb"\{'descr': '([<>|=][biufc]\d{1,2})', 'fortran_order': (False|True), "
    rb"'shape': \(((?:\d+, )*\d+,?|)\), \} *\n?\Z"
)
#: the dtypes of the descriptors met so far (a few dozen at most)
_DTYPES: dict[bytes, Any] = {}


def _header(body: bytes) -> tuple[Any, bool, tuple[int, ...], int] | None:
    """(dtype, Fortran order, shape, data offset) of numpy's usual header; None: not that."""
    if not body.startswith(_MAGIC) or len(body) < 10:
        return None
    major = body[6]
    if major == 1:
        start, size = 10, int.from_bytes(body[8:10], "little")
    elif major in (2, 3) and len(body) >= 12:
        start, size = 12, int.from_bytes(body[8:12], "little")
    else:
        return None
    found = _HEADER.match(body, start, start + size)
    if found is None:
        return None
    descr, fortran, shape = found.groups()
    dtype = _DTYPES.get(descr)
    if dtype is None:
        import numpy as np

        try:
            dtype = np.dtype(descr.decode("ascii"))
        except TypeError:
            return None
        if len(_DTYPES) < 64:
            _DTYPES[descr] = dtype
    dims = tuple(int(d) for d in shape.split(b",") if d.strip())
    return dtype, fortran == b"True", dims, start + size


def read_npy(body: bytes, what: str = "the .npy body") -> Any:
    """The array of an ``.npy`` body (see the module docstring);
    :class:`~tiffin.exceptions.DecodedTooLarge` where its header declares more elements than
    the decode limits allow."""
    import numpy as np

    header = _header(body)
    if header is not None:
        dtype, fortran, shape, offset = header
        check_array(shape, what)
        count = 1
        for dim in shape:
            count *= dim
        if len(body) - offset >= count * dtype.itemsize:
            flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset).copy()
            return flat.reshape(shape, order="F" if fortran else "C")
    check_npy(body, what)  # the shape its header declares, before numpy allocates it
    return np.load(io.BytesIO(body), allow_pickle=False)
