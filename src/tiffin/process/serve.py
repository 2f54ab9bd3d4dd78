"""Serving one process: a Service's ASGI app under uvicorn, until interrupted.

``--workers N`` is :mod:`tiffin.process.supervisor`'s; ``--reload`` re-imports the target in
a fresh process on every change (uvicorn's reloader).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tiffin.config import ServeSettings
from tiffin.exceptions import InvalidArgument, RunnerError
from tiffin.process.logs import configure_logging, flush_logs
from tiffin.process.targets import Target, load_built, resolve_service
from tiffin.process.uvicorn_glue import exit_zero_after_graceful_stop, uvicorn_options
from tiffin.serving.app import build_app
from tiffin.serving.errors import failure_line

__all__ = ["run_app", "serve"]

_TARGET_ENV = "TIFFIN_SERVE_TARGET"
_SETTINGS_ENV = "TIFFIN_SETTINGS_JSON"


def run_app(app: Any, settings: ServeSettings, *, reload_target: str | None = None) -> None:
    """Serve ``app`` with uvicorn until interrupted (SIGINT/SIGTERM shut down gracefully).

    If the app's runners (or start-up hooks) fail, the server stops and this raises the
    error in one line (the log has the user's frames: :func:`~tiffin.serving.errors.
    describe_failure`).
    """
    import uvicorn

    configure_logging(settings.log_level, settings.log_format)
    options = uvicorn_options(settings)
    if reload_target is not None:
        os.environ[_TARGET_ENV] = reload_target
        os.environ[_SETTINGS_ENV] = settings.model_dump_json()
        module_part = reload_target.partition(":")[0]
        reload_dirs = [os.getcwd()]
        if module_part.endswith(".py") or "/" in module_part:
            reload_dirs.append(str(Path(module_part).resolve().parent))
        uvicorn.run(
            "tiffin.process.serve:_reload_factory",
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
    try:
        with exit_zero_after_graceful_stop():
            server.run()
    finally:
        flush_logs()  # what the last fraction of a second logged (the handler batches lines)
    if state is not None and state.load_error is not None:
        raise RunnerError(
            f"the service failed to start: {failure_line(state.load_error)}"
        ) from state.load_error
    if not server.started:
        raise InvalidArgument(
            f"the server did not start on {settings.host}:{settings.port}; see the log above "
            "(is the port in use?)"
        )


def _reload_factory() -> Any:
    """Used by ``--reload``: uvicorn re-imports the service in a fresh process."""
    settings = ServeSettings.model_validate_json(os.environ[_SETTINGS_ENV])
    configure_logging(settings.log_level, settings.log_format)
    return build_app(resolve_service(os.environ[_TARGET_ENV]), settings)


def serve(target: str | Target, settings: ServeSettings, *, reload: bool = False) -> None:
    """Serve a service target, or a resolved :class:`~tiffin.process.targets.Target` (a built
    tiffin serves from its own ``src/``, which becomes the working directory)."""
    if isinstance(target, Target) and target.tiffin is not None:
        if reload:
            raise InvalidArgument("--reload watches source files; a built tiffin never changes")
        service = load_built(target.tiffin.path, chdir=True)
        run_app(build_app(service, settings), settings)
        return
    name = target.service if isinstance(target, Target) else target
    assert name is not None
    service = resolve_service(name)
    app = build_app(service, settings)
    run_app(app, settings, reload_target=name if reload else None)
