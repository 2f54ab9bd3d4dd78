"""Logging for server processes: text or JSON lines, written in batches.

:func:`configure_logging` installs one :class:`BufferedStreamHandler` on the root logger (on
stderr), with the text format or one JSON object per line. Lines are written at most every
0.2 s, when 256 wait, and at once for a warning or worse; :func:`flush_logs` writes what
waits (a process calls it before it exits).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

__all__ = [
    "BufferedStreamHandler",
    "JSONFormatter",
    "TextFormatter",
    "configure_logging",
    "flush_logs",
]


class TextFormatter(logging.Formatter):
    """logging's Formatter, formatting each second's date and time once, not once a line (a
    loaded server writes thousands of access lines a second)."""

    _second: tuple[int, str | None, str] = (-1, None, "")  # second, datefmt, its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second or cached[1] != datefmt:
            text = time.strftime(datefmt or self.default_time_format, self.converter(second))
            self._second = cached = (second, datefmt, text)
        if datefmt:
            return cached[2]
        return (self.default_msec_format or "%s,%03d") % (cached[2], record.msecs)


class JSONFormatter(TextFormatter):
    """One JSON object per line: time, level, logger, message (an access line's own fields
    are merged in), and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
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


class BufferedStreamHandler(logging.StreamHandler):
    """A stream handler that writes lines in batches: at most every ``interval`` seconds, when
    256 lines wait, and at once for a warning or worse, so that the access log does not cost
    a system call per request."""

    def __init__(self, stream: Any, interval: float = 0.2) -> None:
        super().__init__(stream)
        self.pending: list[str] = []
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

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.pending:
                lines, self.pending = self.pending, []
                try:
                    self.stream.write("\n".join(lines) + "\n")
                except Exception:  # a closed or broken stream: drop the lines, keep serving
                    return
            super().flush()

    def _flush_every(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = BufferedStreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("tiffin").setLevel(level.upper())
