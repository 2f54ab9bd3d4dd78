"""Starting servers: find the Service a target names, and run it under uvicorn.

This is the one module that starts server processes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tiffin.config import ServeSettings
from tiffin.exceptions import InvalidArgument, NotFound, RunnerError
from tiffin.service import Service

logger = logging.getLogger("tiffin.serve")
_TARGET_ENV = "TIFFIN_SERVE_TARGET"
_SETTINGS_ENV = "TIFFIN_SETTINGS_JSON"


def _import_file(path: Path) -> Any:
    module_name = f"_tiffin_service_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


def resolve_service(target: str, cwd: str | os.PathLike[str] | None = None) -> Service:
    """The Service named by ``module:attr``, ``path/to/file.py:attr``, or a module holding one.

    An importable module is tried first; built tiffins are looked up only when none matches.
    """
    module_part, _, attr = target.partition(":")
    base = Path(cwd or os.getcwd())
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    if module_part.endswith(".py") or "/" in module_part:
        path = (base / module_part).resolve()
        if not path.is_file():
            raise NotFound(f"service file {path} does not exist")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and module_part.startswith(exc.name):
                raise NotFound(
                    f"cannot find service {target!r}: no module named {module_part!r} "
                    f"(looked in {base} and on sys.path); use module:attr or path/to/file.py:attr"
                ) from exc
            raise
    if attr:
        service = getattr(module, attr, None)
        if service is None:
            raise NotFound(f"module {module_part!r} has no attribute {attr!r}")
    else:
        found = [v for v in vars(module).values() if isinstance(v, Service)]
        if len(found) != 1:
            raise InvalidArgument(
                f"module {module_part!r} holds {len(found)} tiffin.Service objects; "
                "name one with module:attr"
            )
        service = found[0]
    if not isinstance(service, Service):
        raise InvalidArgument(f"{target!r} is a {type(service).__name__}, not a tiffin.Service")
    return service


class _Formatter(logging.Formatter):
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


class JSONFormatter(_Formatter):
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
    256 lines wait, and at once for a warning or worse. One write per request (the access
    log) cost a system call each, a tenth of a loaded server's event loop."""

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
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("tiffin").setLevel(level.upper())


def _uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    from tiffin._http import BatchedWritesProtocol

    return {
        "http": BatchedWritesProtocol,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # tiffin's own middleware writes a structured access log
        "lifespan": "on",
        "timeout_graceful_shutdown": 30,
        "log_config": None,
    }


@contextlib.contextmanager
def exit_zero_after_graceful_stop() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to whatever
    handler was there before it. Make that a no-op, so a clean stop exits with status 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: None)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_app(app: Any, settings: ServeSettings, *, reload_target: str | None = None) -> None:
    """Serve ``app`` with uvicorn until interrupted (SIGINT/SIGTERM shut down gracefully).

    If the app's runners fail to load, the server stops and this raises the error.
    """
    import uvicorn

    configure_logging(settings.log_level, settings.log_format)
    options = _uvicorn_options(settings)
    if reload_target is not None:
        os.environ[_TARGET_ENV] = reload_target
        os.environ[_SETTINGS_ENV] = settings.model_dump_json()
        module_part = reload_target.partition(":")[0]
        reload_dirs = [os.getcwd()]
        if module_part.endswith(".py") or "/" in module_part:
            reload_dirs.append(str(Path(module_part).resolve().parent))
        uvicorn.run(
            "tiffin.serve:_reload_factory",
            factory=True,
            reload=True,
            reload_dirs=sorted(set(reload_dirs)),
            **options,
        )
        return
    server = uvicorn.Server(uvicorn.Config(app, **options))
    state = getattr(getattr(app, "state", None), "tiffin", None)
    if state is not None:

        def stop(exc: BaseException) -> None:
            server.should_exit = True

        state.on_fatal = stop
    with exit_zero_after_graceful_stop():
        server.run()
    if state is not None and state.load_error is not None:
        raise RunnerError(
            f"the service failed to start: {type(state.load_error).__name__}: "
            f"{state.load_error}"
        ) from state.load_error
    if not server.started:
        raise InvalidArgument(
            f"the server did not start on {settings.host}:{settings.port}; see the log above "
            "(is the port in use?)"
        )


def _reload_factory() -> Any:
    """Used by ``--reload``: uvicorn re-imports the service in a fresh process."""
    from tiffin.server import build_app

    settings = ServeSettings.model_validate_json(os.environ[_SETTINGS_ENV])
    configure_logging(settings.log_level, settings.log_format)
    return build_app(resolve_service(os.environ[_TARGET_ENV]), settings)


def serve(target: str, settings: ServeSettings, *, reload: bool = False) -> None:
    from tiffin.server import build_app

    service = resolve_service(target)
    app = build_app(service, settings)
    run_app(app, settings, reload_target=target if reload else None)
