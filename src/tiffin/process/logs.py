"""Logging for server processes: text or JSON lines, written in batches.

:func:`configure_logging` installs one :class:`BufferedStreamHandler` on the root logger (on
stderr), with the text format or one JSON object per line. Lines are written at most every
0.2 s, when 256 wait, and at once for a warning or worse; :func:`flush_logs` writes what
waits (a process calls it before it exits).

The access log hands the handler its lines unformatted (:meth:`BufferedStreamHandler.pend`,
when nothing else would see their records: :mod:`tiffin.serving.access_log`); they are
formatted as the lines are written, to the same text ``format`` gives their records.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Any, Protocol

__all__ = [
    "BufferedStreamHandler",
    "JSONFormatter",
    "TextFormatter",
    "configure_logging",
    "flush_logs",
]


#: the text format :func:`configure_logging` gives
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LineKind(Protocol):
    """What lines handed to :meth:`BufferedStreamHandler.pend` are: their logger and level,
    the message of a line's fields, and the LogRecord of a line for any other formatter."""

    name: str
    levelname: str

    def message(self, fields: dict[str, Any]) -> str: ...

    def record(self, created: float, fields: dict[str, Any]) -> logging.LogRecord: ...


#: a line handed over unformatted: its kind, time (``time.time()``) and fields
Pending = tuple[LineKind, float, dict[str, Any]]


def _msecs(created: float) -> float:
    return (created - int(created)) * 1000 // 1  # as LogRecord.__init__ computes it


class TextFormatter(logging.Formatter):
    """logging's Formatter, formatting each second's date and time once, not once a line (a
    loaded server writes thousands of access lines a second)."""

    _second: tuple[int, str | None, str] = (-1, None, "")  # second, datefmt, its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._time(record.created, record.msecs, datefmt)

    def _time(self, created: float, msecs: float, datefmt: str | None) -> str:
        second = int(created)
        cached = self._second
        if cached[0] != second or cached[1] != datefmt:
            text = time.strftime(datefmt or self.default_time_format, self.converter(second))
            self._second = cached = (second, datefmt, text)
        if datefmt:
            return cached[2]
        return (self.default_msec_format or "%s,%03d") % (cached[2], msecs)

    def pending_lines(self, lines: list[Pending]) -> list[str] | None:
        """``format`` of each line's record, made without the records; None where this
        formatter's format is not :data:`TEXT_FORMAT` (``format`` must make them)."""
        if type(self) is not TextFormatter or self._fmt != TEXT_FORMAT or self.datefmt:
            return None
        clock = self._time
        return [
            f"{clock(created, _msecs(created), None)} {kind.levelname} {kind.name}: "
            f"{kind.message(fields)}"
            for kind, created, fields in lines
        ]


class JSONFormatter(TextFormatter):
    """One JSON object per line: time, level, logger, message (an access line's own fields
    are merged in), and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        entry: dict[str, Any] = {
            "time": self._stamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()

    def _stamp(self, created: float, msecs: float) -> str:
        return self._time(created, msecs, "%Y-%m-%dT%H:%M:%S") + f".{int(msecs):03d}"

    def pending_lines(self, lines: list[Pending]) -> list[str] | None:
        """``format`` of each line's record, made without the records (None: a subclass,
        whose ``format`` must make them)."""
        if type(self) is not JSONFormatter:
            return None
        import orjson

        stamp, dumps, texts = self._stamp, orjson.dumps, []
        for kind, created, fields in lines:
            entry = {"time": stamp(created, _msecs(created)),
                     "level": kind.levelname.lower(), "logger": kind.name}  # fmt: skip
            entry.update(fields)
            texts.append(dumps(entry, default=str).decode())
        return texts


class BufferedStreamHandler(logging.StreamHandler):
    """A stream handler that writes lines in batches: at most every ``interval`` seconds, when
    256 lines wait, and at once for a warning or worse, so that the access log does not cost
    a system call per request."""

    def __init__(self, stream: Any, interval: float = 0.2) -> None:
        super().__init__(stream)
        self.pending: list[str | Pending] = []
        self.interval = interval
        threading.Thread(target=self._flush_every, name="tiffin-log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.pending.append(line)  # handle() holds self.lock here
        if record.levelno >= logging.WARNING or len(self.pending) >= 256:
            self.flush()

    def pend(self, kind: LineKind, created: float, fields: dict[str, Any]) -> None:
        """An INFO line whose record no filter or other handler would see, formatted when
        it is written: what ``handle`` of its record does, without the record."""
        with self.lock:  # type: ignore[union-attr]
            pending = self.pending
            pending.append((kind, created, fields))
            if len(pending) >= 256:
                self.flush()

    def _texts(self, lines: list[Pending]) -> list[str | None]:
        """The text of each pending line (None: its formatting failed, said by handleError)."""
        quick = getattr(self.formatter, "pending_lines", None)
        with contextlib.suppress(Exception):
            texts = quick(lines) if quick is not None else None
            if texts is not None:
                return list(texts)
        return [self._one(line) for line in lines]

    def _one(self, line: Pending) -> str | None:
        kind, created, fields = line
        try:
            return self.format(kind.record(created, fields))
        except Exception:
            with contextlib.suppress(Exception):
                self.handleError(kind.record(created, fields))
            return None

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.pending:
                lines, self.pending = self.pending, []
                made = iter(self._texts([line for line in lines if type(line) is tuple]))
                texts = [line if type(line) is str else next(made) for line in lines]
                kept = [text for text in texts if text is not None]
                try:
                    if kept:
                        self.stream.write("\n".join(kept) + "\n")
                except Exception:  # a closed or broken stream: drop the lines, keep serving
                    return
            super().flush()

    def _flush_every(self) -> None:
        while True:
            time.sleep(self.interval)
            with contextlib.suppress(Exception):  # the thread must outlive any one flush
                self.flush()


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = BufferedStreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("tiffin").setLevel(level.upper())
