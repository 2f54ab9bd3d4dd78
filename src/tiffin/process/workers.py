"""The processes of ``--workers N``: what an API worker and a runner process run.

Each child is started by the supervisor with the ``spawn`` method, rebuilds the service from a
:class:`ServiceSource` (a target, or a stored model for ``serve-model``), and stops by itself
if the supervisor dies.

* :func:`runner_main`: loads one runner and serves it on a Unix socket
  (:mod:`tiffin.runner.runner_server`) until the supervisor's stop signal. Given a GPU, it
  sets ``CUDA_VISIBLE_DEVICES`` to it before anything can touch CUDA: the process sees that
  one GPU as ``cuda:0``.
* :func:`api_worker_main`: the service's HTTP app on its own listening socket, each runner
  attached to its processes (:class:`~tiffin.runner.remote.RemoteRunner`) or, if embedded,
  loaded here before the socket listens.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tiffin.config import ServeSettings
from tiffin.device_settings import CUDA_VISIBLE_DEVICES, device_index
from tiffin.process.logs import configure_logging, flush_logs
from tiffin.process.targets import load_built, resolve_service
from tiffin.serving.service import Service

if TYPE_CHECKING:
    import asyncio

# The HTTP app (and with it prometheus-client) is imported inside the functions below: the
# supervisor imports this module before it sets the metrics directory, which prometheus-client
# reads once, when it is first imported.

__all__ = [
    "RUNNER_STOP",
    "ServiceSource",
    "api_worker_main",
    "runner_main",
    "worker_cpus",
]

logger = logging.getLogger("tiffin.supervisor")
RUNNER_STOP = signal.SIGUSR1  # how the supervisor stops a runner process


@dataclass(frozen=True)
class ServiceSource:
    """How a child process rebuilds the service: a ``module:attr`` target, a built tiffin's
    directory (resolved once, by the parent: every process serves the same version), or a
    model tag."""

    target: str | None = None
    model_tag: str | None = None
    batching: bool = True
    cwd: str = field(default_factory=os.getcwd)
    tiffin_path: str | None = None

    def load(self) -> Service:
        if self.tiffin_path is not None:
            return load_built(self.tiffin_path, chdir=True)
        if self.model_tag is not None:
            from tiffin.serving.model_service import build_service
            from tiffin.store.models import get as get_model

            return build_service(get_model(self.model_tag), batching=self.batching)
        assert self.target is not None
        return resolve_service(self.target, cwd=self.cwd)


def _exit_with_parent(stop_signal: int) -> None:
    """If the supervisor dies (even by SIGKILL), stop too instead of lingering as an orphan."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), stop_signal)

    threading.Thread(target=watch, name="tiffin-parent-watch", daemon=True).start()


def runner_main(
    source: ServiceSource,
    runner_name: str,
    socket_path: str,
    settings_json: str,
    ready: Any,
    gpu: str | None = None,
) -> None:
    """A runner process: load one runner, serve it on ``socket_path`` until SIGTERM."""
    import asyncio

    if gpu is not None:  # before the service (and torch with it) is imported
        os.environ[CUDA_VISIBLE_DEVICES] = gpu

    from tiffin.runner.runner_server import serve_runner

    # the parent decides when runners stop (after the API workers have drained)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _exit_with_parent(RUNNER_STOP)
    settings = ServeSettings.model_validate_json(settings_json)
    configure_logging(settings.log_level, settings.log_format)
    service = source.load()
    service.apply_settings(settings)
    runner = next(r for r in service.runners if r.name == runner_name)
    if gpu is not None and device_index(runner.device) is not None:
        runner.set_placement(device="cuda:0")  # cuda:N is the one GPU this process sees
    started = time.perf_counter()
    try:
        runner.init_local()
    except Exception as exc:  # the user's frames, not multiprocessing's whole traceback
        from tiffin.serving.errors import describe_failure

        logger.error("runner %r failed to load: %s", runner.name, describe_failure(exc))
        logger.debug("runner %r: the whole traceback", runner.name, exc_info=exc)
        flush_logs()
        sys.exit(1)
    # as the API process does once loaded (tiffin.server): the ~10^5 objects of the frameworks
    # and the model live as long as the process, and a full collection walking them stalled
    # every call in this process for ~100 ms (the p99 of serve --workers under load)
    gc.freeze()
    logger.info(
        "runner %r loaded on %s in %.2fs (pid %d)",
        runner.name,
        getattr(runner.backend, "device", "cpu"),
        time.perf_counter() - started,
        os.getpid(),
    )
    try:
        # the event loop uvicorn's "auto" picks for the API workers: uvloop when it is installed
        with asyncio.Runner(loop_factory=_loop_factory()) as loop_runner:
            loop_runner.run(serve_runner(runner, socket_path, ready.set, stop_signal=RUNNER_STOP))
    finally:
        runner.destroy()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def worker_cpus(pin: bool | None, workers: int, runner_processes: int = 0) -> list[int] | None:
    """The CPU each API worker is pinned to, by index; None to leave them to the scheduler.

    ``pin`` None (the default) pins only when the API workers are the only busy processes
    (every runner embedded) and there is one per CPU this process may use (its affinity: a
    container's cpuset, ``taskset``, or the whole machine): the workers then have those CPUs
    to themselves, and pinned they stop trading places and caches. Beside runner processes,
    pinned workers could not make room for them; with fewer workers than CPUs, or a CPU quota
    instead of a cpuset, the scheduler knows better. ``True`` pins worker i to the i-th
    allowed CPU (round robin); ``False`` never.
    """
    if pin is False or not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if pin is None and (runner_processes or len(allowed) != workers):
        return None
    return [allowed[index % len(allowed)] for index in range(workers)]


def api_worker_main(
    source: ServiceSource,
    settings_json: str,
    runner_sockets: dict[str, list[str]],
    cpu: int | None,
    listener: socket.socket,
) -> None:
    """An API worker: the service's HTTP app with every runner attached to its processes."""
    import asyncio

    import uvicorn

    from tiffin.process.uvicorn_glue import exit_zero_after_graceful_stop, uvicorn_options
    from tiffin.runner.remote import RemoteRunner
    from tiffin.serving.app import build_app

    _exit_with_parent(signal.SIGTERM)
    if cpu is not None:  # before any thread starts: they all inherit it
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    settings = ServeSettings.model_validate_json(settings_json)
    configure_logging(settings.log_level, settings.log_format)
    service = source.load()
    remotes = []
    for runner in service.runners:
        if runner.name not in runner_sockets:
            continue  # embedded: this worker loads it when the app starts
        remote = RemoteRunner(runner.name, runner_sockets[runner.name])
        runner.attach_remote(remote)
        remotes.append(remote)

    async def start_remotes() -> None:
        for remote in remotes:
            await remote.start()
        deadline = time.monotonic() + 30  # runner processes are up: connecting takes ms
        while not all(r.connected for r in remotes) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def stop_remotes() -> None:
        for remote in remotes:
            await remote.aclose()

    service.startup_hooks.insert(0, start_remotes)
    service.shutdown_hooks.append(stop_remotes)
    # embedded runners load here; meanwhile this worker's socket does not listen, so the
    # kernel gives its connections to the workers that serve (tiffin.listeners)
    app = build_app(service, settings, load_before_serving=True)
    options = uvicorn_options(settings)
    options.pop("host"), options.pop("port")
    server = uvicorn.Server(uvicorn.Config(app, **options))
    state = app.state.tiffin

    def stop(exc: BaseException) -> None:  # loading failed: exit, the supervisor restarts us
        server.should_exit = True

    state.on_fatal = stop
    try:
        with exit_zero_after_graceful_stop():
            server.run(sockets=[listener])
    finally:
        flush_logs()  # a child process ends with os._exit: no atexit flush after this
    if state.load_error is not None:
        sys.exit(3)
