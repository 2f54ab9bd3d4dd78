"""The access log's lines handed to the server's log handler unformatted: the same text as
their records, and records still made wherever a filter or another handler would see them."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tiffin.process.logs import (
    TEXT_FORMAT,
    BufferedStreamHandler,
    JSONFormatter,
    TextFormatter,
    configure_logging,
)
from tiffin.serving import access_log
from tiffin.serving.access_log import ERROR_ID_KEY, record_access

KIND = access_log._ACCESS_LINES
KNOWN = frozenset({"/invocations"})
TIMES = (1764150000.0, 1764150000.123, 1764150000.9995, 1764150001.5, 1764150061.999999)
FIELDS: list[dict[str, Any]] = [
    {"method": "POST", "path": "/invocations", "status": 200, "duration_ms": 0.312,
     "client": "127.0.0.1"},
    {"method": "POST", "path": "/caf\u00e9", "status": 500, "duration_ms": 12.5, "client": "",
     "error_id": "e-1"},
]  # fmt: skip


class _State:
    """What record_access reads of the server's state."""

    def __init__(self) -> None:
        self.settings = type("Settings", (), {"access_log": True})()
        self.observed: list[tuple[Any, ...]] = []
        self.metrics = self

    def observe_request(self, *args: Any) -> None:
        self.observed.append(args)


@pytest.fixture
def server_logging() -> Iterator[tuple[BufferedStreamHandler, io.StringIO]]:
    """The logging a server process sets up, writing to a buffer; the test's logging after."""
    root, ours = logging.getLogger(), logging.getLogger("tiffin")
    saved = (list(root.handlers), root.level, ours.level)
    configure_logging("info")
    [configured] = root.handlers
    assert isinstance(configured, BufferedStreamHandler)
    stream = io.StringIO()
    # the same handler, but with no timed flush while the test looks at what waits (the
    # configured one's thread is already asleep for its 0.2 s): the test flushes
    handler = BufferedStreamHandler(stream, interval=3600.0)
    handler.setFormatter(configured.formatter)
    root.removeHandler(configured)
    root.addHandler(handler)
    try:
        yield handler, stream
    finally:
        for added in list(root.handlers):
            root.removeHandler(added)
        for old in saved[0]:
            root.addHandler(old)
        root.setLevel(saved[1])
        ours.setLevel(saved[2])


def _alone(handler: BufferedStreamHandler) -> None:
    """pytest's own log capture handler is on the root logger while a test runs: off it."""
    root = logging.getLogger()
    for other in [h for h in root.handlers if h is not handler]:
        root.removeHandler(other)


def _scope(path: str = "/invocations", error_id: str | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"method": "POST", "path": path, "client": ("127.0.0.1", 5000)}
    if error_id is not None:
        scope[ERROR_ID_KEY] = error_id
    return scope


@pytest.mark.parametrize("formatter", [TextFormatter(TEXT_FORMAT), JSONFormatter()])
def test_a_pending_line_is_the_text_of_its_record(formatter: logging.Formatter) -> None:
    pending = [(KIND, created, fields) for created in TIMES for fields in FIELDS]
    made = formatter.pending_lines(pending)  # type: ignore[attr-defined]
    assert made == [
        formatter.format(KIND.record(created, fields)) for _, created, fields in pending
    ]
    assert made[0].endswith('"client":"127.0.0.1"}') and "tiffin.access" in made[0]


def test_other_formats_leave_it_to_the_record() -> None:
    assert TextFormatter("%(levelname)s %(message)s").pending_lines([]) is None
    assert TextFormatter(TEXT_FORMAT, datefmt="%H:%M").pending_lines([]) is None

    class Mine(JSONFormatter):
        pass

    assert Mine().pending_lines([]) is None


def test_the_server_handler_takes_the_line_unformatted_and_writes_it_in_order(
    server_logging: tuple[BufferedStreamHandler, io.StringIO],
) -> None:
    handler, stream = server_logging
    _alone(handler)
    state = _State()
    record_access(state, KNOWN, _scope(), 200, 0.0005)  # type: ignore[arg-type]
    logging.getLogger("tiffin.server").info("between")
    record_access(state, KNOWN, _scope("/nope", "e-9"), 500, 0.25)  # type: ignore[arg-type]
    first, between, last = handler.pending
    assert isinstance(first, tuple) and isinstance(between, str) and isinstance(last, tuple)
    assert state.observed == [("/invocations", "POST", 200, 0.0005), ("<other>", "POST", 500, 0.25)]
    handler.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and handler.pending == []
    assert lines[0].split(" ", 2)[2] == (
        'INFO tiffin.access: {"method":"POST","path":"/invocations","status":200,'
        '"duration_ms":0.5,"client":"127.0.0.1"}'
    )
    assert lines[1].endswith("INFO tiffin.server: between")
    assert lines[2].endswith(
        '"status":500,"duration_ms":250.0,"client":"127.0.0.1","error_id":"e-9"}'
    )
    assert lines[0] == handler.format(KIND.record(first[1], first[2]))


def test_256_waiting_lines_are_written_at_once(
    server_logging: tuple[BufferedStreamHandler, io.StringIO],
) -> None:
    handler, stream = server_logging
    _alone(handler)
    for _ in range(256):
        record_access(_State(), KNOWN, _scope(), 200, 0.001)  # type: ignore[arg-type]
    assert handler.pending == [] and len(stream.getvalue().splitlines()) == 256


def test_a_filter_a_second_handler_or_a_level_gets_the_record(
    server_logging: tuple[BufferedStreamHandler, io.StringIO],
) -> None:
    handler, stream = server_logging
    _alone(handler)
    seen: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return record.access["status"] != 404  # type: ignore[attr-defined]

    access_log.access_logger.addFilter(keep)
    try:
        record_access(_State(), KNOWN, _scope(), 404, 0.001)  # type: ignore[arg-type]
        record_access(_State(), KNOWN, _scope(), 200, 0.001)  # type: ignore[arg-type]
    finally:
        access_log.access_logger.removeFilter(keep)
    assert [r.access["status"] for r in seen] == [404, 200]  # type: ignore[attr-defined]
    assert [type(line) for line in handler.pending] == [str]  # the 404 filtered out

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        record_access(_State(), KNOWN, _scope(), 201, 0.001)  # type: ignore[arg-type]
    finally:
        logging.getLogger().removeHandler(capture)
    assert seen[-1].access["status"] == 201  # type: ignore[attr-defined]
    assert [type(line) for line in handler.pending] == [str, str]

    handler.setLevel(logging.WARNING)
    record_access(_State(), KNOWN, _scope(), 202, 0.001)  # type: ignore[arg-type]
    assert len(handler.pending) == 2
    handler.flush()
    statuses = [line.split('"status":')[1][:3] for line in stream.getvalue().splitlines()]
    assert statuses == ["200", "201"]


def test_a_line_that_fails_to_format_is_dropped_alone(
    server_logging: tuple[BufferedStreamHandler, io.StringIO],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler, stream = server_logging
    _alone(handler)
    failed: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", failed.append)
    state = _State()
    record_access(state, KNOWN, _scope(), 200, 0.001)  # type: ignore[arg-type]
    handler.pending.append((KIND, 1764150000.5, {"bad": object()}))  # orjson cannot write it
    record_access(state, KNOWN, _scope(), 201, 0.001)  # type: ignore[arg-type]
    handler.flush()
    lines = stream.getvalue().splitlines()
    assert [line.split('"status":')[1][:3] for line in lines] == ["200", "201"]
    assert len(failed) == 1 and failed[0].name == "tiffin.access"
