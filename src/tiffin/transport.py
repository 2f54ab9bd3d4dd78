"""The wire between API workers and runner processes: framed pickle-5 messages over a Unix
socket, with numpy (and other PEP 574) buffers sent out of band.

A frame is ``!II`` (header length, buffer count), one ``!Q`` length per buffer, the pickle
header, then each buffer's raw bytes. Large arrays are never copied into the pickle stream:
the sender writes their memory straight to the socket, the receiver reads each into its own
bytearray (so arrays arrive writable) and hands them to ``pickle.loads(..., buffers=...)``.

Pickle is only safe between processes that trust each other: the sockets live in a directory
only this user can open (mode 0700), made fresh by the server for its own children.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

_PREFIX = struct.Struct("!II")
_LENGTH = struct.Struct("!Q")
MAX_HEADER = 1 << 31
#: the stream reader's buffer before it pauses the socket; asyncio's 64 KiB default makes a
#: large array arrive in hundreds of pause/resume rounds
STREAM_LIMIT = 16 << 20
_SLICE = 1 << 20


def encode(message: Any) -> list[bytes | memoryview]:
    """The chunks of one frame, ready for ``writer.writelines``."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    prefix = _PREFIX.pack(len(head), len(raws)) + b"".join(_LENGTH.pack(r.nbytes) for r in raws)
    return [prefix, head, *raws]


async def send(writer: asyncio.StreamWriter, message: Any, lock: asyncio.Lock) -> None:
    """Write one frame. ``lock`` (one per connection) keeps frames whole: a large buffer goes
    out in slices with a drain between them, and no other frame may start meanwhile.

    Slicing matters: asyncio's socket transport (before Python 3.12) keeps unsent bytes in
    one bytearray and deletes from its front after each send, so a 16 MiB write buffered
    whole is moved in memory once per send -- quadratic, tens of milliseconds.
    """
    chunks = encode(message)
    async with lock:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            for start in range(0, len(view), _SLICE):
                writer.write(view[start : start + _SLICE])
                if writer.transport.get_write_buffer_size() > _SLICE:
                    await writer.drain()
        await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Any:
    """The next message; ``asyncio.IncompleteReadError`` when the peer closed the socket."""
    head_length, count = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
    if head_length > MAX_HEADER:
        raise ConnectionError(f"frame header of {head_length} bytes; the stream is corrupt")
    lengths = [
        _LENGTH.unpack(chunk)[0]
        for chunk in _chunks(await reader.readexactly(_LENGTH.size * count), _LENGTH.size)
    ]
    head = await reader.readexactly(head_length)
    buffers = [bytearray(await reader.readexactly(n)) if n else bytearray() for n in lengths]
    return pickle.loads(head, buffers=buffers)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def picklable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RunnerError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
        return exc
    except Exception:
        from tiffin.exceptions import RunnerError

        return RunnerError(f"{type(exc).__name__}: {exc}")
