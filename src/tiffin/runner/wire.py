"""The wire between API workers and runner processes: framed pickle-5 messages over a Unix
socket, with numpy (and other PEP 574) buffers sent out of band.

Every frame carries the id of the call it belongs to outside the pickle, so a frame that
arrives whole but cannot be unpickled (a class the receiver cannot import, say) fails that
call alone -- :func:`receive` raises :class:`~tiffin.exceptions.FrameError` naming it -- and
the stream stays in step for the next frame.

Messages: an API worker sends ``(kind, body)`` with kind :data:`CALL` (body ``(method, args,
kwargs, calls)``, ``calls`` being how many callers' calls it merges), :data:`STATS`,
:data:`DEVICES` (GPU memory in use) or :data:`PING`; the runner process answers ``(status,
value)`` with status :data:`OK` or :data:`ERROR` (value: the exception). Answers come in any
order. ``(CANCEL, None)`` under a call's id says its caller went away: a call still queued in
the runner process is dropped, one that started runs to its end, and neither is answered.

A frame is ``!QII`` (call id, header length, buffer count), one ``!Q`` length per buffer,
the pickle header, then each buffer's raw bytes. Large arrays are never copied into the
pickle stream: the sender writes their memory straight to the socket, the receiver reads
each into its own bytearray (so arrays arrive writable) and hands them to ``pickle.loads``.
Small writable buffers (under ``IN_BAND_BYTES``, such as one request's rows) travel inside
the pickle instead, as bytearrays, so they arrive writable too.

:class:`FrameWriter` is a connection's sending side. Small frames do not cost a system call
each: those queued during one turn of the event loop (the answers of one batch, the calls of
one burst of requests) are written together at the start of the next turn.

Pickle is only safe between processes that trust each other: the sockets live in a directory
only this user can open (mode 0700), made fresh by the server for its own children.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
from typing import Any

from tiffin.exceptions import FrameError, RunnerError

__all__ = [
    "CALL",
    "CANCEL",
    "DEVICES",
    "ERROR",
    "IN_BAND_BYTES",
    "OK",
    "PING",
    "STATS",
    "STREAM_LIMIT",
    "FrameWriter",
    "encode",
    "picklable_error",
    "receive",
]

CALL, STATS, PING, CANCEL, DEVICES = "call", "stats", "ping", "cancel", "devices"
OK, ERROR = "ok", "err"

_PREFIX = struct.Struct("!QII")
_LENGTH = struct.Struct("!Q")
MAX_HEADER = 1 << 31
#: the stream reader's buffer before it pauses the socket; asyncio's 64 KiB default makes a
#: large array arrive in hundreds of pause/resume rounds
STREAM_LIMIT = 16 << 20
_SLICE = 1 << 20
#: writable buffers smaller than this travel inside the pickle, where a one-row array costs
#: less than a buffer of its own (a length, a chunk, a read and a copy on each side)
IN_BAND_BYTES = 1 << 14


def encode(call_id: int, message: Any) -> list[bytes | memoryview]:
    """The chunks of one frame of call ``call_id``, ready for ``writer.writelines``."""
    raws: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < IN_BAND_BYTES and not raw.readonly:
            return True  # into the pickle, as a bytearray: it arrives writable all the same
        raws.append(raw)
        return False

    head = pickle.dumps(message, protocol=5, buffer_callback=out_of_band)
    if not raws:
        return [_PREFIX.pack(call_id, len(head), 0), head]
    lengths = struct.pack(f"!{len(raws)}Q", *(raw.nbytes for raw in raws))
    return [_PREFIX.pack(call_id, len(head), len(raws)) + lengths, head, *raws]


class FrameWriter:
    """Writes frames to one connection, each frame whole (calls are matched by id, not order).

    A frame of up to ``_SLICE`` bytes is queued and written with every other frame queued in
    the same turn of the event loop, in one ``writelines`` at the start of the next turn
    (or at once when the queue passes ``_SLICE`` bytes): a batch's 64 answers cost one system
    call, not 64. A larger frame goes out in slices with a drain between them, holding
    ``lock`` so that no other frame starts meanwhile (queued frames go before it).

    Slicing matters: asyncio's socket transport (before Python 3.12) keeps unsent bytes in
    one bytearray and deletes from its front after each send, so a large write buffered
    whole would be moved in memory once per send.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._queued: list[bytes | memoryview] = []
        self._queued_bytes = 0

    async def send(self, call_id: int, message: Any) -> None:
        """Send one frame; ``ConnectionError`` once the connection is lost, and a pickling
        error (before anything is written) for a message that cannot be pickled."""
        chunks = encode(call_id, message)
        size = sum(memoryview(chunk).nbytes for chunk in chunks)
        writer = self.writer
        if size <= _SLICE and not self.lock.locked():
            if not self._queued:
                self._loop.call_soon(self._flush)
            self._queued += chunks
            self._queued_bytes += size
            if self._queued_bytes > _SLICE:
                self._flush()
            await writer.drain()  # waits while the socket's buffer is full
            return
        async with self.lock:
            self._flush()
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                for start in range(0, len(view), _SLICE):
                    writer.write(view[start : start + _SLICE])
                    if writer.transport.get_write_buffer_size() > _SLICE:
                        await writer.drain()
            await writer.drain()

    def _flush(self) -> None:
        if self._queued:
            chunks, self._queued, self._queued_bytes = self._queued, [], 0
            if not self.writer.is_closing():
                self.writer.writelines(chunks)


async def receive(reader: asyncio.StreamReader) -> tuple[int, Any]:
    """The next ``(call_id, message)``; ``asyncio.IncompleteReadError`` when the peer closed
    the socket, :class:`~tiffin.exceptions.FrameError` when the frame arrived whole but its
    message cannot be unpickled here (the stream is still in step)."""
    call_id, head_length, count = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
    if head_length > MAX_HEADER:
        raise ConnectionError(f"frame header of {head_length} bytes; the stream is corrupt")
    if not count:
        head: Any = await reader.readexactly(head_length)
        buffers: list[bytearray] = []
    else:
        table = _LENGTH.size * count  # the buffers' lengths, then the header: one read
        data = await reader.readexactly(table + head_length)
        lengths = struct.unpack(f"!{count}Q", data[:table])
        buffers = [bytearray(await reader.readexactly(n)) if n else bytearray() for n in lengths]
        head = memoryview(data)[table:]
    try:
        return call_id, pickle.loads(head, buffers=buffers)
    except Exception as exc:
        raise FrameError(
            f"a message could not be unpickled in process {os.getpid()}: "
            f"{type(exc).__name__}: {exc}",
            call_id,
        ) from exc


def picklable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RunnerError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
        return exc
    except Exception:
        return RunnerError(f"{type(exc).__name__}: {exc}")
