"""Small Parquet bodies of a layout seen before, read without pyarrow.

pyarrow's reader costs about 10 µs per column of a file whatever its rows (a one-row file of
32 columns: ~400 µs, most of a request). A client sending a Parquet file per request sends one
layout each time: the same columns, writer, encodings and page sizes, with other values. So
after pyarrow has read a body (:func:`~tiffin.io.columnar.parquet_columns`), :func:`learn`
walks the file's Thrift structures itself and records a :class:`Layout`: where each value's
bytes lie, and which bytes may differ from one body to the next -- those value bytes and the
min/max statistics (which no reader uses). A later body of the same size whose every other
byte is equal is, byte for byte, the same structure with other values, so :func:`read` takes
the values at those positions (a mask, a compare and a gather: a few µs).

A layout is recorded only where every step is one this module reads exactly, else the body
stays pyarrow's: one row group; flat required or optional columns of int32, int64, float,
double, boolean or UTF-8 strings stored as what Arrow reads them as; uncompressed or Snappy
pages whose compressed block is one literal; no page checksums, page index, bloom filter or
encryption; a v1 data page per column, PLAIN values or dictionary indices (the dictionary's
entries then hold the values: each row's entry is found by its bytes). The recipe is checked
against pyarrow's own result for the body it was learned from before it is kept.

A layout is learned the second time its (size, footer size) is seen, at most four tries per
key, and a few dozen are kept (least recently used dropped): the walk costs about three of
pyarrow's reads (1.3 ms for 32 columns), so a client sending ever new layouts, each twice,
costs ~2.5x what pyarrow alone would, and the cache stays small.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["Layout", "learn", "read"]

#: layouts kept, and (size, footer size) keys remembered from a first sighting
_KEEP = 32
_SEEN = 256

# Parquet's physical types read here -> the numpy dtype Arrow gives for them (BOOLEAN and
# BYTE_ARRAY are read by their own rules)
_BOOLEAN, _INT32, _INT64, _FLOAT, _DOUBLE, _BYTE_ARRAY = 0, 1, 2, 4, 5, 6
_WIDTH = {_INT32: 4, _INT64: 8, _FLOAT: 4, _DOUBLE: 8}
_DTYPE = {_INT32: "<i4", _INT64: "<i8", _FLOAT: "<f4", _DOUBLE: "<f8"}


class _Unreadable(Exception):
    """A step this module does not read exactly: leave the body to pyarrow."""


# -- Thrift's compact protocol (the encoding of Parquet's footer and page headers) ---------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Unreadable("varint too long")


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _value(buf: bytes, pos: int, kind: int) -> tuple[Any, int]:
    """One value of Thrift compact type ``kind``; a binary is its (start, end) in ``buf``."""
    if kind in (1, 2):  # a struct field's boolean: the type is the value
        return kind == 1, pos
    if kind == 3:
        return buf[pos], pos + 1
    if kind in (4, 5, 6):
        n, pos = _varint(buf, pos)
        return _zigzag(n), pos
    if kind == 7:
        return buf[pos : pos + 8], pos + 8
    if kind == 8:
        n, pos = _varint(buf, pos)
        if pos + n > len(buf):
            raise _Unreadable("binary past the end")
        return (pos, pos + n), pos + n
    if kind in (9, 10):
        header = buf[pos]
        pos += 1
        size, item = header >> 4, header & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        items = []
        for _ in range(size):
            if item in (1, 2):  # a list's booleans are bytes
                items.append(buf[pos] == 1)
                pos += 1
            else:
                value, pos = _value(buf, pos, item)
                items.append(value)
        return items, pos
    if kind == 12:
        return _struct(buf, pos)
    raise _Unreadable(f"Thrift type {kind}")


def _struct(buf: bytes, pos: int) -> tuple[dict[int, Any], int]:
    fields: dict[int, Any] = {}
    last = 0
    while True:
        header = buf[pos]
        pos += 1
        if header == 0:
            return fields, pos
        delta, kind = header >> 4, header & 0x0F
        if delta:
            last += delta
        else:
            n, pos = _varint(buf, pos)
            last = _zigzag(n)
        fields[last], pos = _value(buf, pos, kind)


def _statistics(stats: dict[int, Any] | None) -> list[tuple[int, int]]:
    """The byte ranges of a Statistics struct's max, min, max_value and min_value."""
    return [stats[f] for f in (1, 2, 5, 6) if f in stats] if stats else []


# -- one column chunk ----------------------------------------------------------------------------


def _page_bytes(body: bytes, start: int, size: int, codec: int, plain_size: int) -> int:
    """Where a page's uncompressed bytes start in ``body`` (uncompressed, or one Snappy literal)."""
    if codec == 0:
        if size != plain_size:
            raise _Unreadable("page sizes differ")
        return start
    if codec != 1:
        raise _Unreadable("a codec other than Snappy")
    stated, pos = _varint(body, start)
    tag = body[pos]
    pos += 1
    if tag & 3:
        raise _Unreadable("a Snappy block that is not one literal")
    length = tag >> 2
    if length >= 60:  # the literal's length in the next 1-4 bytes
        extra = length - 59
        length = int.from_bytes(body[pos : pos + extra], "little")
        pos += extra
    if stated != plain_size or length + 1 != plain_size or pos + plain_size != start + size:
        raise _Unreadable("a Snappy block that is not one literal")
    return pos


def _plain(body: bytes, pos: int, end: int, ptype: int, count: int) -> list[tuple[int, int]]:
    """The (start, end) of each of ``count`` PLAIN values at ``pos``; booleans: (byte, bit)."""
    if ptype == _BOOLEAN:
        if pos + (count + 7) // 8 != end:
            raise _Unreadable("booleans of another size")
        return [(pos + i // 8, i % 8) for i in range(count)]
    if count * _WIDTH.get(ptype, 4) > end - pos:  # (each string has a 4-byte length)
        raise _Unreadable("more values than bytes")
    spans = []
    if ptype == _BYTE_ARRAY:
        for _ in range(count):
            n = int.from_bytes(body[pos : pos + 4], "little")
            spans.append((pos + 4, pos + 4 + n))
            pos += 4 + n
    else:
        width = _WIDTH[ptype]
        spans = [(pos + i * width, pos + (i + 1) * width) for i in range(count)]
        pos += count * width
    if pos != end:
        raise _Unreadable("values of another size")
    return spans


def _chunk(body: bytes, meta: dict[int, Any], optional: bool, rows: int) -> tuple[
    list[list[tuple[int, int]]], list[tuple[int, int]], int, int
]:  # fmt: skip
    """(where each row's value may lie -- its own bytes, or any of the dictionary's entries --,
    the byte ranges that may differ from body to body, where the chunk starts and ends) of one
    column chunk."""
    ptype, codec = meta[1], meta[4]
    if ptype not in (_BOOLEAN, _BYTE_ARRAY, *_WIDTH) or any(f in meta for f in (10, 14, 15)):
        raise _Unreadable("a column of another type, or with an index or bloom filter")
    variable = _statistics(meta.get(12))
    first = pos = meta.get(11) or meta[9]
    stop = pos + meta[7]
    dictionary: list[tuple[int, int]] | None = None
    values: list[tuple[int, int]] | None = None
    while pos < stop:
        header, pos = _struct(body, pos)
        if 4 in header or header.get(1) not in (0, 2):
            raise _Unreadable("a page checksum, or a page other than v1 data or dictionary")
        size = header[3]
        start = _page_bytes(body, pos, size, codec, header[2])
        end = start + header[2]
        pos += size
        if header[1] == 2:  # the dictionary: PLAIN entries
            page = header[7]
            if dictionary is not None or values is not None or page[2] not in (0, 2):
                raise _Unreadable("a second dictionary, or one of another encoding")
            if ptype == _BOOLEAN:
                raise _Unreadable("a dictionary of booleans")
            dictionary = _plain(body, start, end, ptype, page[1])
            variable += dictionary
            continue
        page = header[5]
        if values is not None or page[1] != rows:
            raise _Unreadable("more than one data page")
        variable += _statistics(page.get(5))
        if optional:  # definition levels: RLE, a 4-byte length first (compared, not read)
            if page.get(3) != 3:
                raise _Unreadable("definition levels of another encoding")
            start += 4 + int.from_bytes(body[start : start + 4], "little")
        if page[2] == 0:
            values = _plain(body, start, end, ptype, rows)
            if ptype == _BOOLEAN:
                variable.append((values[0][0], end))
            else:
                variable += values
        elif page[2] in (2, 8) and dictionary is not None:
            values = []  # indices: compared; the entries hold the values
        else:
            raise _Unreadable("a data page of another encoding")
    if pos != stop or values is None:
        raise _Unreadable("pages that do not fill the column chunk")
    if values:
        return [[v] for v in values], variable, first, stop
    assert dictionary is not None
    return [dictionary] * rows, variable, first, stop


# -- a file's layout -----------------------------------------------------------------------------


class Layout:
    """Where a layout's values lie, and the bytes every body of it holds (the others zeroed)."""

    __slots__ = ("columns", "dtype", "gather", "masked", "names", "rows", "variable")

    def __init__(self, body: bytes, names: list[str], result: Any, rows: int) -> None:
        import numpy as np

        if body[:4] != b"PAR1" or body[-4:] != b"PAR1":
            raise _Unreadable("not a Parquet file")
        footer = len(body) - 8 - int.from_bytes(body[-8:-4], "little")
        if footer < 4:
            raise _Unreadable("a footer longer than the file")
        meta, end = _struct(body, footer)
        schema, groups = meta[2], meta[4]
        leaves = schema[1:]
        if end != len(body) - 8 or any(f in meta for f in (8, 9)) or len(groups) != 1:
            raise _Unreadable("an encrypted file, or more than one row group")
        chunks = groups[0][1]
        if meta[3] != rows or not schema[0].get(5) == len(leaves) == len(chunks) == len(names):
            raise _Unreadable("a nested schema")
        table = result if type(result) is np.ndarray else None
        decoded = list(table.T) if table is not None else result
        variable: list[tuple[int, int]] = []
        edge = 4  # where the next column chunk may start
        self.columns: list[tuple[int, Any]] = []
        for leaf, chunk, column in zip(leaves, chunks, decoded, strict=True):
            if 5 in leaf or leaf.get(3) not in (0, 1) or any(f in chunk for f in range(4, 10)):
                raise _Unreadable("a nested or repeated column, a page index or encryption")
            if 1 in chunk or leaf.get(1) != chunk[3][1]:
                raise _Unreadable("a column chunk in another file")
            candidates, ranges, start, stop = _chunk(body, chunk[3], leaf.get(3) == 1, rows)
            if start < edge or stop > footer:
                raise _Unreadable("column chunks out of order, or overlapping the footer")
            edge = stop
            variable += ranges
            self.columns.append((leaf[1], _positions(body, leaf, candidates, column)))
        self.names, self.rows = names, rows
        self.dtype = table.dtype if table is not None else None
        self.gather = np.concatenate([p for _, p in self.columns]) if table is not None else None
        spans = [np.arange(a, b) for a, b in variable if a < b]
        self.variable = np.concatenate(spans) if spans else np.empty(0, dtype=np.intp)
        self.masked = np.frombuffer(body, dtype=np.uint8).copy()
        self.masked[self.variable] = 0
        if not _same(self.read(body), (names, result, rows)):
            raise _Unreadable("the recipe reads other values than pyarrow")

    def read(self, body: bytes) -> tuple[list[str], Any, int] | None:
        """(names, columns, rows) as :func:`~tiffin.io.columnar.parquet_columns` gives them, or
        None: ``body`` is not of this layout."""
        import numpy as np

        if len(body) != len(self.masked):
            return None
        data = np.frombuffer(body, dtype=np.uint8)
        work = data.copy()
        work[self.variable] = 0
        if not np.array_equal(work, self.masked):
            return None
        if self.gather is not None:  # one number type: one 2-D array, column-major
            table = data[self.gather].view(self.dtype).reshape(len(self.names), self.rows)
            return list(self.names), table.T, self.rows
        columns: list[Any] = []
        for ptype, where in self.columns:
            if ptype == _BYTE_ARRAY:
                try:
                    columns.append([body[a:b].decode("utf-8") for a, b in where])
                except UnicodeDecodeError:
                    return None  # pyarrow's to say
            elif ptype == _BOOLEAN:
                columns.append((data[where[0]] >> where[1]) & 1 == 1)
            else:
                columns.append(data[where].view(_DTYPE[ptype]))
        return list(self.names), columns, self.rows


def _positions(body: bytes, leaf: dict[int, Any], candidates: list[list[Any]], column: Any) -> Any:
    """Where each row's value of one column lies in ``body``: the candidate whose bytes are the
    value pyarrow read (exactly one), as the gather indices the column is read with."""
    import numpy as np

    ptype = leaf[1]
    if ptype == _BOOLEAN:
        if type(column) is not np.ndarray or column.dtype != np.bool_:
            raise _Unreadable("booleans Arrow reads as another type")
        where = [c[0] for c in candidates]
        for (byte, bit), value in zip(where, column.tolist(), strict=True):
            if bool(body[byte] >> bit & 1) != value:
                raise _Unreadable("a boolean read otherwise")
        return np.array([b for b, _ in where]), np.array([b for _, b in where], dtype=np.uint8)
    if ptype == _BYTE_ARRAY:
        if type(column) is not list:
            raise _Unreadable("bytes Arrow reads as another type than str")
        wanted = [value.encode("utf-8") for value in column]
    else:
        if type(column) is not np.ndarray or column.dtype != np.dtype(_DTYPE[ptype]):
            raise _Unreadable("numbers Arrow reads as another type")
        wanted = [column[i : i + 1].tobytes() for i in range(len(column))]
    spans = []
    for options, value in zip(candidates, wanted, strict=True):
        found = [span for span in options if body[span[0] : span[1]] == value]
        if len(found) != 1:
            raise _Unreadable("a value found in no dictionary entry, or in several")
        spans.append(found[0])
    if ptype == _BYTE_ARRAY:
        return spans
    return np.concatenate([np.arange(a, b) for a, b in spans])


def _same(got: tuple[list[str], Any, int] | None, want: tuple[list[str], Any, int]) -> bool:
    """Whether a layout's read is pyarrow's, bit for bit."""
    if got is None or got[0] != want[0] or got[2] != want[2] or type(got[1]) is not type(want[1]):
        return False
    if type(want[1]) is not list:  # one 2-D array
        return _bits(got[1]) == _bits(want[1])
    return len(got[1]) == len(want[1]) and all(
        a == b if type(b) is list else _bits(a) == _bits(b)
        for a, b in zip(got[1], want[1], strict=True)
    )


def _bits(array: Any) -> tuple[Any, ...]:
    """What makes two arrays the same, NaN included: type, dtype, shape and bytes."""
    if not hasattr(array, "tobytes"):
        return (type(array), array)
    return (type(array), array.dtype, array.shape, array.tobytes())


# -- the layouts kept ----------------------------------------------------------------------------

_layouts: OrderedDict[tuple[int, bytes], list[Layout]] = OrderedDict()
_attempts: OrderedDict[tuple[int, bytes], int] = OrderedDict()


def read(body: bytes) -> tuple[list[str], Any, int] | None:
    """``body``'s columns if it is of a layout learned before, else None."""
    key = (len(body), body[-8:-4])
    layouts = _layouts.get(key)
    if layouts:
        for layout in layouts:
            got = layout.read(body)
            if got is not None:
                return got
    return None


def learn(body: bytes, names: list[str], result: Any, rows: int) -> None:
    """Record ``body``'s layout, given what pyarrow read from it, if its key was seen before."""
    key = (len(body), body[-8:-4])
    tries = _attempts.get(key)
    _attempts[key] = 0 if tries is None else tries + 1
    _attempts.move_to_end(key)
    while len(_attempts) > _SEEN:
        _attempts.popitem(last=False)
    if tries is None or tries >= 4:
        return  # first sighting, or tried enough
    try:
        layout = Layout(body, names, result, rows)
    except Exception:  # anything the walk trips over (a footer of other types ...): pyarrow's
        return
    _layouts.setdefault(key, []).append(layout)
    _layouts.move_to_end(key)
    while len(_layouts) > _KEEP:
        _layouts.popitem(last=False)
